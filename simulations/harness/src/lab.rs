//! The lab of a simulated run: experiments with realistic and odd layouts, their images
//! out of order with duplicates, late metadata and a few malformed records, several
//! experiments interleaved as parallel acquisitions send them.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use wellspring_protocol::records::PlateLayout;
use wellspring_protocol::{ExperimentLayout, synthetic};

use wellspring_lab::workload::{Message, Workload, WorkloadConfig};

/// What a run publishes.
pub struct Lab {
    pub layouts: Vec<ExperimentLayout>,
    /// In publishing order.
    pub messages: Vec<Message>,
}

impl Lab {
    /// `plates` plates shared among one to three experiments, shaped by `seed`.
    pub fn build(seed: u64, plates: u32) -> Result<Lab, String> {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x1ab5);
        let plates = plates.max(1);
        let experiments = rng.random_range(1..=plates.min(3));
        let mut counts = vec![1u32; experiments as usize];
        for _ in experiments..plates {
            let i = rng.random_range(0..counts.len());
            counts[i] += 1;
        }
        let mut streams = Vec::new();
        let mut layouts = Vec::new();
        for (i, count) in counts.into_iter().enumerate() {
            let layout = layout(&mut rng, &format!("EXP-{seed}-{}", i + 1), count)?;
            let images = layout.image_count() as usize;
            let config = WorkloadConfig {
                experiment: layout.experiment.to_string(),
                duplicates: [0.0, 0.02, 0.1][rng.random_range(0..3)],
                // Anywhere: before the first image, in the middle, after the last.
                metadata_after: rng.random_range(0..=images),
                bad_records: rng.random_range(0..=2),
                seed: rng.random(),
                ..WorkloadConfig::default()
            };
            let workload = Workload::for_layout(layout, &config);
            layouts.push(workload.layout);
            streams.push(workload.messages);
        }
        Ok(Lab {
            layouts,
            messages: interleave(&mut rng, streams),
        })
    }

    pub fn images(&self) -> usize {
        self.messages
            .iter()
            .filter(|m| matches!(m, Message::Image(_)))
            .count()
    }

    pub fn bad_records(&self) -> usize {
        self.messages
            .iter()
            .filter(|m| matches!(m, Message::Bad(_)))
            .count()
    }
}

/// A layout: mostly the usual shapes at a small scale, sometimes odd ones (one well of
/// one site of one channel, plates numbered with gaps, plates with different wells).
fn layout(rng: &mut StdRng, experiment: &str, plates: u32) -> Result<ExperimentLayout, String> {
    let odd = rng.random_bool(0.3);
    let (wells, sites, channels) = if odd {
        (
            [1, 2, 5][rng.random_range(0..3)],
            [1, 3][rng.random_range(0..2)],
            [1, 2, 6][rng.random_range(0..3)],
        )
    } else {
        ([6, 12, 16][rng.random_range(0..3)], 4, 6)
    };
    let mut layout = synthetic::layout(experiment, plates, wells, sites, channels)
        .map_err(|e| format!("experiment {experiment}: {e}"))?;
    if odd {
        // Plate numbers with gaps, and plates that skip some wells.
        let mut number = 0;
        let mut renumbered: Vec<PlateLayout> = Vec::new();
        for mut plate in layout.plates {
            number += rng.random_range(1..=4);
            plate.plate = number;
            if plate.wells.len() > 1 && rng.random_bool(0.5) {
                let keep = rng.random_range(1..plate.wells.len());
                plate.wells.truncate(keep);
            }
            renumbered.push(plate);
        }
        layout.plates = renumbered;
    }
    Ok(layout)
}

/// Merges the experiments' streams, each kept in its own order, in random turns.
fn interleave(rng: &mut StdRng, streams: Vec<Vec<Message>>) -> Vec<Message> {
    let total = streams.iter().map(Vec::len).sum();
    let mut cursors: Vec<std::vec::IntoIter<Message>> =
        streams.into_iter().map(Vec::into_iter).collect();
    let mut out = Vec::with_capacity(total);
    let mut order: Vec<usize> = Vec::new();
    while out.len() < total {
        order.clear();
        order.extend((0..cursors.len()).filter(|i| cursors[*i].len() > 0));
        order.shuffle(rng);
        // A burst from one acquisition at a time.
        let Some(&pick) = order.first() else { break };
        for _ in 0..rng.random_range(1..=50) {
            match cursors[pick].next() {
                Some(message) => out.push(message),
                None => break,
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_lab_is_reproducible_and_holds_every_plate() {
        for seed in 0..20 {
            let lab = Lab::build(seed, 3).unwrap();
            let plates: usize = lab.layouts.iter().map(|l| l.plates.len()).sum();
            assert_eq!(plates, 3);
            let expected: u64 = lab.layouts.iter().map(|l| l.image_count()).sum();
            assert!(lab.images() as u64 >= expected, "duplicates only add");
            let metadata = lab
                .messages
                .iter()
                .filter(|m| matches!(m, Message::Metadata(_)))
                .count();
            assert_eq!(metadata, lab.layouts.len());
            let again = Lab::build(seed, 3).unwrap();
            assert_eq!(
                format!("{:?}", again.messages),
                format!("{:?}", lab.messages)
            );
        }
    }
}
