//! Synthetic experiments: realistic layouts and their channel images, for the demo, the
//! tests, the benchmarks and the simulator.

use std::sync::Arc;

use crate::keys::{ChannelKey, ExperimentId, KeyError, WellId};
use crate::records::{ChannelImage, ExperimentLayout, PlateLayout};

/// Wells in use on a standard plate: the interior of a 384-well plate (rows B-O, columns
/// 2-23: 308 wells), or more of a 1536-well plate for bigger layouts.
pub fn standard_wells(count: usize) -> Vec<WellId> {
    let interior: Vec<WellId> = (1..15u8)
        .flat_map(|row| (2..=23u8).filter_map(move |col| WellId::new(row, col)))
        .collect();
    if count <= interior.len() {
        return interior.into_iter().take(count).collect();
    }
    (0..WellId::MAX_ROWS)
        .flat_map(|row| (1..=WellId::MAX_COLUMNS).filter_map(move |col| WellId::new(row, col)))
        .take(count)
        .collect()
}

/// A layout of `plates` plates (numbered from 1) of `wells` wells, `sites` sites per
/// well and `channels` channels per site.
pub fn layout(
    experiment: &str,
    plates: u32,
    wells: usize,
    sites: u16,
    channels: u8,
) -> Result<ExperimentLayout, KeyError> {
    let experiment = ExperimentId::new(experiment)?;
    let wells = standard_wells(wells);
    Ok(ExperimentLayout {
        plates: (1..=plates)
            .map(|plate| PlateLayout {
                plate,
                barcode: Some(barcode(&experiment, plate)),
                wells: wells.clone(),
            })
            .collect(),
        experiment,
        channels_per_site: channels,
        sites_per_well: sites,
    })
}

fn barcode(experiment: &ExperimentId, plate: u32) -> String {
    format!("{experiment}-P{plate:04}")
}

/// Every channel image of the layout, plate by plate, in imaging order.
pub fn images(layout: &ExperimentLayout, cell_type: &str) -> Vec<ChannelImage> {
    let mut out = Vec::with_capacity(layout.image_count() as usize);
    // Shared: every image of a plate carries the same ones (decoded images each have
    // their own copies; an aggregator keeps one of each).
    let cell_type: Arc<str> = Arc::from(cell_type);
    for plate in &layout.plates {
        let plate_barcode: Arc<str> = Arc::from(
            plate
                .barcode
                .clone()
                .unwrap_or_else(|| barcode(&layout.experiment, plate.plate)),
        );
        for &well in &plate.wells {
            for site in 1..=layout.sites_per_well {
                for channel in 1..=layout.channels_per_site {
                    let key = ChannelKey {
                        experiment: layout.experiment.clone(),
                        plate: plate.plate,
                        well,
                        site,
                        channel,
                    };
                    out.push(ChannelImage {
                        location: format!(
                            "s3://wellspring-demo/{}/plate-{}/{well}/site-{site}/ch{channel}.tiff",
                            layout.experiment, plate.plate
                        ),
                        key,
                        cell_type: cell_type.clone(),
                        plate_barcode: plate_barcode.clone(),
                    });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_plate() {
        let layout = layout("EXP-1", 2, 308, 4, 6).unwrap();
        assert_eq!(layout.image_count(), 14_784);
        assert_eq!(images(&layout, "HUVEC").len(), 14_784);
        let wells = standard_wells(308);
        assert_eq!(wells.first().unwrap().to_string(), "B02");
        assert_eq!(wells.last().unwrap().to_string(), "O23");
        assert_eq!(standard_wells(1536).len(), 1536);
    }
}
