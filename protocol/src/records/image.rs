//! What comes in: the channel images (`channel_level`) and the experiment metadata that
//! says what makes each level complete (`experiment_metadata`).

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::RecordError;
use super::aggregates::Provenance;
use super::fields::{channel, experiment_id, plate_number, site, well};
use super::value_format::{from_value, to_value};
use crate::keys::{self, ChannelKey, ExperimentId, WellId};
use crate::value::Value;

/// The reference system's `channel_level` record: one channel image of one site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelImage {
    pub key: ChannelKey,
    /// Shared: every image of a plate carries the same one.
    pub cell_type: Arc<str>,
    pub plate_barcode: Arc<str>,
    /// Where the pixels are (object-store URI): Wellspring never moves pixels.
    pub location: String,
}

/// `channel_level` as it is read and written.
#[derive(Serialize, Deserialize)]
struct ImageFields<'a> {
    #[serde(with = "experiment_id")]
    experiment_id: ExperimentId,
    cell_type: &'a str,
    #[serde(with = "plate_number")]
    plate_number: u32,
    plate_barcode: &'a str,
    #[serde(with = "well")]
    well: WellId,
    #[serde(with = "site")]
    site: u16,
    #[serde(with = "channel")]
    channel: u8,
    location: &'a str,
}

impl ImageFields<'_> {
    fn into_image(self, provenance: Provenance) -> ChannelImage {
        ChannelImage {
            key: ChannelKey {
                experiment: self.experiment_id,
                plate: self.plate_number,
                well: self.well,
                site: self.site,
                channel: self.channel,
            },
            cell_type: provenance.cell_type,
            plate_barcode: provenance.plate_barcode,
            location: self.location.to_owned(),
        }
    }
}

impl ChannelImage {
    pub const SCHEMA: &'static str = "channel_level";

    pub fn from_value(value: &Value) -> Result<Self, RecordError> {
        let fields: ImageFields = from_value(value)?;
        let provenance = Provenance {
            cell_type: Arc::from(fields.cell_type),
            plate_barcode: Arc::from(fields.plate_barcode),
        };
        Ok(fields.into_image(provenance))
    }

    /// Like [`ChannelImage::from_value`], but shares the provenance strings with the
    /// previous image when they are equal (they nearly always are within a plate), so a
    /// decoder allocates them once per plate, not once per image.
    pub fn from_value_sharing(
        value: &Value,
        previous: &mut Option<Provenance>,
    ) -> Result<Self, RecordError> {
        let fields: ImageFields = from_value(value)?;
        let shared = match previous {
            Some(p)
                if *p.cell_type == *fields.cell_type
                    && *p.plate_barcode == *fields.plate_barcode =>
            {
                p.clone()
            }
            _ => {
                let fresh = Provenance {
                    cell_type: Arc::from(fields.cell_type),
                    plate_barcode: Arc::from(fields.plate_barcode),
                };
                *previous = Some(fresh.clone());
                fresh
            }
        };
        Ok(fields.into_image(shared))
    }

    pub fn to_value(&self) -> Value {
        to_value(&ImageFields {
            experiment_id: self.key.experiment.clone(),
            cell_type: &self.cell_type,
            plate_number: self.key.plate,
            plate_barcode: &self.plate_barcode,
            well: self.key.well,
            site: self.key.site,
            channel: self.key.channel,
            location: &self.location,
        })
    }
}

/// The layout of one plate: which wells are in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlateLayout {
    pub plate: u32,
    pub barcode: Option<String>,
    /// Sorted, unique.
    pub wells: Vec<WellId>,
}

impl PlateLayout {
    pub fn has_well(&self, well: WellId) -> bool {
        self.wells.binary_search(&well).is_ok()
    }
}

/// Experiment metadata (`experiment_metadata`): what makes each level complete.
///
/// `wells` entries are well names (`B02`) or inclusive rectangles (`B02:O23`, the 308
/// interior wells of a 384-well plate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExperimentLayout {
    pub experiment: ExperimentId,
    pub channels_per_site: u8,
    pub sites_per_well: u16,
    /// Sorted by plate number, unique.
    pub plates: Vec<PlateLayout>,
}

/// `experiment_metadata` as it is read and written: the counts are checked (and the
/// wells expanded) once read, where the message can say what is wrong with the layout.
#[derive(Serialize, Deserialize)]
struct LayoutFields {
    #[serde(with = "experiment_id")]
    experiment_id: ExperimentId,
    channels_per_site: i64,
    sites_per_well: i64,
    plates: Vec<PlateLayoutFields>,
}

/// `plate_layout`.
#[derive(Serialize, Deserialize)]
struct PlateLayoutFields {
    #[serde(with = "plate_number")]
    plate_number: u32,
    /// Written as `null` when there is none.
    plate_barcode: Option<String>,
    /// Names and ranges when read; names when written.
    wells: Vec<String>,
}

impl ExperimentLayout {
    pub const SCHEMA: &'static str = "experiment_metadata";

    pub fn plate(&self, plate: u32) -> Option<&PlateLayout> {
        self.plates
            .binary_search_by_key(&plate, |p| p.plate)
            .ok()
            .map(|i| &self.plates[i])
    }

    /// Number of channel images in the whole experiment.
    pub fn image_count(&self) -> u64 {
        let wells: u64 = self.plates.iter().map(|p| p.wells.len() as u64).sum();
        wells * u64::from(self.sites_per_well) * u64::from(self.channels_per_site)
    }

    pub fn from_value(value: &Value) -> Result<Self, RecordError> {
        let fields: LayoutFields = from_value(value)?;
        let channels = fields.channels_per_site;
        let channels_per_site = u8::try_from(channels)
            .ok()
            .filter(|c| (1..=keys::MAX_CHANNEL as u8).contains(c))
            .ok_or_else(|| {
                RecordError::Layout(format!(
                    "channels_per_site {channels} is out of range (1 to {})",
                    keys::MAX_CHANNEL
                ))
            })?;
        let sites = fields.sites_per_well;
        let sites_per_well = keys::site_number(sites).map_err(|_| {
            RecordError::Layout(format!(
                "sites_per_well {sites} is out of range (1 to {})",
                keys::MAX_SITE
            ))
        })?;
        let mut plates = Vec::new();
        for plate in fields.plates {
            let mut wells = BTreeSet::new();
            for entry in &plate.wells {
                expand_wells(entry, &mut wells)?;
            }
            if wells.is_empty() {
                return Err(RecordError::Layout(format!(
                    "plate {} has no wells",
                    plate.plate_number
                )));
            }
            plates.push(PlateLayout {
                plate: plate.plate_number,
                barcode: plate.plate_barcode,
                wells: wells.into_iter().collect(),
            });
        }
        if plates.is_empty() {
            return Err(RecordError::Layout("the experiment has no plates".into()));
        }
        plates.sort_by_key(|p| p.plate);
        if let Some(w) = plates.windows(2).find(|w| w[0].plate == w[1].plate) {
            return Err(RecordError::Layout(format!(
                "plate {} is listed twice",
                w[0].plate
            )));
        }
        Ok(Self {
            experiment: fields.experiment_id,
            channels_per_site,
            sites_per_well,
            plates,
        })
    }

    pub fn to_value(&self) -> Value {
        to_value(&LayoutFields {
            experiment_id: self.experiment.clone(),
            channels_per_site: self.channels_per_site.into(),
            sites_per_well: self.sites_per_well.into(),
            plates: self
                .plates
                .iter()
                .map(|p| PlateLayoutFields {
                    plate_number: p.plate,
                    plate_barcode: p.barcode.clone(),
                    wells: p.wells.iter().map(WellId::to_string).collect(),
                })
                .collect(),
        })
    }
}

fn expand_wells(text: &str, wells: &mut BTreeSet<WellId>) -> Result<(), RecordError> {
    let parse = |w: &str| {
        WellId::parse(w).map_err(|e| RecordError::Invalid {
            field: "wells",
            reason: e.to_string(),
        })
    };
    match text.split_once(':') {
        None => {
            wells.insert(parse(text)?);
        }
        Some((from, to)) => {
            let (from, to) = (parse(from)?, parse(to)?);
            if from.row() > to.row() || from.column() > to.column() {
                return Err(RecordError::Layout(format!(
                    "well range {text} runs backwards (write top-left:bottom-right)"
                )));
            }
            for row in from.row()..=to.row() {
                for column in from.column()..=to.column() {
                    wells.extend(WellId::new(row, column));
                }
            }
        }
    }
    Ok(())
}
