//! The four levels of the imaging hierarchy.

use wellspring_protocol::records::{ChannelRef, PlateSummary, Provenance, SiteImages, WellSummary};
use wellspring_protocol::{
    ChannelImage, ExperimentId, ExperimentLayout, ExperimentRecord, PlateKey, PlateRecord, SiteKey,
    SiteRecord, WellId, WellKey, WellRecord,
};

use super::{Level, Locations};

fn well_in_layout(layout: &ExperimentLayout, plate: u32, well: WellId) -> Result<(), String> {
    let plate_layout = layout.plate(plate).ok_or_else(|| {
        format!(
            "plate {plate} is not in the layout of experiment {}",
            layout.experiment
        )
    })?;
    if plate_layout.has_well(well) {
        Ok(())
    } else {
        Err(format!(
            "well {well} of plate {plate} is not in the layout of experiment {}",
            layout.experiment
        ))
    }
}

/// Channel images → sites.
pub struct SiteLevel;

impl Level for SiteLevel {
    const NAME: &'static str = "site";
    const CHILD: &'static str = "channel";
    type Key = SiteKey;
    type Input = ChannelImage;
    type Child = String;
    type Children = Locations;
    type Output = SiteRecord;

    fn key(input: &ChannelImage) -> SiteKey {
        input.key.site_key()
    }

    fn split(input: ChannelImage) -> (u32, String, Provenance) {
        (
            u32::from(input.key.channel),
            input.location,
            Provenance {
                cell_type: input.cell_type,
                plate_barcode: input.plate_barcode,
            },
        )
    }

    fn experiment(key: &SiteKey) -> &ExperimentId {
        &key.experiment
    }

    fn expected(layout: &ExperimentLayout, key: &SiteKey) -> Result<usize, String> {
        well_in_layout(layout, key.plate, key.well)?;
        if key.site > layout.sites_per_well {
            return Err(format!(
                "site {} of well {} of plate {} is beyond the {} sites per well of experiment {}",
                key.site, key.well, key.plate, layout.sites_per_well, layout.experiment
            ));
        }
        Ok(usize::from(layout.channels_per_site))
    }

    fn is_expected(layout: &ExperimentLayout, _: &SiteKey, child: u32) -> bool {
        (1..=u32::from(layout.channels_per_site)).contains(&child)
    }

    fn expected_children(layout: &ExperimentLayout, _: &SiteKey) -> Vec<u32> {
        (1..=u32::from(layout.channels_per_site)).collect()
    }

    fn build(key: &SiteKey, provenance: Provenance, children: Vec<(u32, String)>) -> SiteRecord {
        SiteRecord {
            key: key.clone(),
            provenance,
            channels: children
                .into_iter()
                .map(|(channel, location)| ChannelRef {
                    channel: channel as u8,
                    location,
                })
                .collect(),
        }
    }

    fn describe(key: &SiteKey, child: u32) -> String {
        format!(
            "channel {child} of site {} of well {} of plate {}",
            key.site, key.well, key.plate
        )
    }
}

/// Sites → wells.
pub struct WellLevel;

impl Level for WellLevel {
    const NAME: &'static str = "well";
    const CHILD: &'static str = "site";
    type Key = WellKey;
    type Input = SiteRecord;
    type Child = Vec<ChannelRef>;
    type Children = Vec<(u32, Self::Child)>;
    type Output = WellRecord;

    fn key(input: &SiteRecord) -> WellKey {
        input.key.well_key()
    }

    fn split(input: SiteRecord) -> (u32, Self::Child, Provenance) {
        (u32::from(input.key.site), input.channels, input.provenance)
    }

    fn experiment(key: &WellKey) -> &ExperimentId {
        &key.experiment
    }

    fn expected(layout: &ExperimentLayout, key: &WellKey) -> Result<usize, String> {
        well_in_layout(layout, key.plate, key.well)?;
        Ok(usize::from(layout.sites_per_well))
    }

    fn is_expected(layout: &ExperimentLayout, _: &WellKey, child: u32) -> bool {
        (1..=u32::from(layout.sites_per_well)).contains(&child)
    }

    fn expected_children(layout: &ExperimentLayout, _: &WellKey) -> Vec<u32> {
        (1..=u32::from(layout.sites_per_well)).collect()
    }

    fn build(
        key: &WellKey,
        provenance: Provenance,
        children: Vec<(u32, Self::Child)>,
    ) -> WellRecord {
        WellRecord {
            key: key.clone(),
            provenance,
            sites: children
                .into_iter()
                .map(|(site, channels)| SiteImages {
                    site: site as u16,
                    channels,
                })
                .collect(),
        }
    }

    fn describe(key: &WellKey, child: u32) -> String {
        format!("site {child} of well {} of plate {}", key.well, key.plate)
    }
}

/// Wells → plates. Children are wells by their dense index.
pub struct PlateLevel;

impl Level for PlateLevel {
    const NAME: &'static str = "plate";
    const CHILD: &'static str = "well";
    type Key = PlateKey;
    type Input = WellRecord;
    /// Sites and images of the well.
    type Child = (u16, u64);
    type Children = Vec<(u32, Self::Child)>;
    type Output = PlateRecord;

    fn key(input: &WellRecord) -> PlateKey {
        input.key.plate_key()
    }

    fn split(input: WellRecord) -> (u32, Self::Child, Provenance) {
        let images = input.image_count();
        (
            u32::from(input.key.well.index()),
            (input.sites.len() as u16, images),
            input.provenance,
        )
    }

    fn experiment(key: &PlateKey) -> &ExperimentId {
        &key.experiment
    }

    fn expected(layout: &ExperimentLayout, key: &PlateKey) -> Result<usize, String> {
        layout
            .plate(key.plate)
            .map(|p| p.wells.len())
            .ok_or_else(|| {
                format!(
                    "plate {} is not in the layout of experiment {}",
                    key.plate, layout.experiment
                )
            })
    }

    fn is_expected(layout: &ExperimentLayout, key: &PlateKey, child: u32) -> bool {
        let well = u16::try_from(child).ok().and_then(WellId::from_index);
        match (layout.plate(key.plate), well) {
            (Some(plate), Some(well)) => plate.has_well(well),
            _ => false,
        }
    }

    fn expected_children(layout: &ExperimentLayout, key: &PlateKey) -> Vec<u32> {
        layout
            .plate(key.plate)
            .map(|p| p.wells.iter().map(|w| u32::from(w.index())).collect())
            .unwrap_or_default()
    }

    fn build(
        key: &PlateKey,
        provenance: Provenance,
        children: Vec<(u32, Self::Child)>,
    ) -> PlateRecord {
        PlateRecord {
            key: key.clone(),
            provenance,
            wells: children
                .into_iter()
                .filter_map(|(index, (sites, images))| {
                    let well = u16::try_from(index).ok().and_then(WellId::from_index)?;
                    Some(WellSummary {
                        well,
                        sites,
                        images,
                    })
                })
                .collect(),
        }
    }

    fn describe(key: &PlateKey, child: u32) -> String {
        match u16::try_from(child).ok().and_then(WellId::from_index) {
            Some(well) => format!("well {well} of plate {}", key.plate),
            None => format!("well #{child} of plate {}", key.plate),
        }
    }
}

/// Plates → experiments.
pub struct ExperimentLevel;

impl Level for ExperimentLevel {
    const NAME: &'static str = "experiment";
    const CHILD: &'static str = "plate";
    type Key = ExperimentId;
    type Input = PlateRecord;
    /// Barcode, wells and images of the plate.
    type Child = (String, u32, u64);
    type Children = Vec<(u32, Self::Child)>;
    type Output = ExperimentRecord;

    fn key(input: &PlateRecord) -> ExperimentId {
        input.key.experiment.clone()
    }

    fn split(input: PlateRecord) -> (u32, Self::Child, Provenance) {
        let images = input.images();
        (
            input.key.plate,
            (
                input.provenance.plate_barcode.to_string(),
                input.wells.len() as u32,
                images,
            ),
            Provenance {
                cell_type: input.provenance.cell_type,
                plate_barcode: std::sync::Arc::from(""),
            },
        )
    }

    fn experiment(key: &ExperimentId) -> &ExperimentId {
        key
    }

    fn expected(layout: &ExperimentLayout, _: &ExperimentId) -> Result<usize, String> {
        Ok(layout.plates.len())
    }

    fn is_expected(layout: &ExperimentLayout, _: &ExperimentId, child: u32) -> bool {
        layout.plate(child).is_some()
    }

    fn expected_children(layout: &ExperimentLayout, _: &ExperimentId) -> Vec<u32> {
        layout.plates.iter().map(|p| p.plate).collect()
    }

    fn build(
        key: &ExperimentId,
        provenance: Provenance,
        children: Vec<(u32, Self::Child)>,
    ) -> ExperimentRecord {
        ExperimentRecord {
            experiment: key.clone(),
            cell_type: provenance.cell_type.to_string(),
            plates: children
                .into_iter()
                .map(|(plate, (barcode, wells, images))| PlateSummary {
                    plate,
                    barcode,
                    wells,
                    images,
                })
                .collect(),
        }
    }

    fn describe(_: &ExperimentId, child: u32) -> String {
        format!("plate {child}")
    }
}
