//! Synthetic experiments as a lab would send them: one message per channel image,
//! plates out of order, images of neighbouring wells interleaved (uploads run in
//! parallel), some images sent twice, the experiment's metadata arriving after its first
//! images, and optionally a few malformed records.

use std::time::Duration;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use wellspring_log::{LogError, Producer, ProducerRecord};
use wellspring_protocol::{ChannelImage, ExperimentLayout, synthetic};

/// What to generate.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    pub experiment: String,
    pub plates: u32,
    pub wells: usize,
    pub sites: u16,
    pub channels: u8,
    pub cell_type: String,
    /// Fraction of images sent a second time.
    pub duplicates: f64,
    /// Images sent before the experiment's metadata.
    pub metadata_after: usize,
    /// Malformed records mixed in (they must end up as dead letters).
    pub bad_records: usize,
    pub seed: u64,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        Self {
            experiment: "EXP-DEMO".into(),
            plates: 2,
            wells: 308,
            sites: 4,
            channels: 6,
            cell_type: "HUVEC".into(),
            duplicates: 0.02,
            metadata_after: 200,
            bad_records: 0,
            seed: 1,
        }
    }
}

/// One message to publish.
#[derive(Debug, Clone)]
pub enum Message {
    Metadata(ExperimentLayout),
    Image(ChannelImage),
    /// A malformed `images_channel` record (raw JSON text).
    Bad(String),
}

pub struct Workload {
    pub layout: ExperimentLayout,
    pub messages: Vec<Message>,
}

impl Workload {
    pub fn build(config: &WorkloadConfig) -> Result<Workload, String> {
        let layout = synthetic::layout(
            &config.experiment,
            config.plates,
            config.wells,
            config.sites,
            config.channels,
        )
        .map_err(|e| format!("experiment id: {e}"))?;
        Ok(Self::for_layout(layout, config))
    }

    /// The messages of any layout (plates need not share their wells, nor be numbered
    /// from 1); `config` gives the cell type, duplicates, lateness, bad records and seed.
    pub fn for_layout(layout: ExperimentLayout, config: &WorkloadConfig) -> Workload {
        let mut rng = StdRng::seed_from_u64(config.seed);
        let mut plates: Vec<Vec<ChannelImage>> = Vec::new();
        for image in synthetic::images(&layout, &config.cell_type) {
            match plates.last_mut() {
                Some(plate) if plate[0].key.plate == image.key.plate => plate.push(image),
                _ => plates.push(vec![image]),
            }
        }
        // Plates are imaged in any order.
        plates.shuffle(&mut rng);
        let mut images: Vec<ChannelImage> = Vec::with_capacity(layout.image_count() as usize);
        for mut plate in plates {
            // Parallel uploads interleave the images of neighbouring wells.
            let window =
                (usize::from(layout.sites_per_well) * usize::from(layout.channels_per_site) * 2)
                    .max(2);
            for chunk in plate.chunks_mut(window) {
                chunk.shuffle(&mut rng);
            }
            images.extend(plate);
        }
        // Some images are sent again, a little later or much later.
        let repeats = (images.len() as f64 * config.duplicates) as usize;
        for _ in 0..repeats {
            let original = rng.random_range(0..images.len());
            let later = rng.random_range(original..=images.len());
            let copy = images[original].clone();
            images.insert(later, copy);
        }
        let mut messages: Vec<Message> = images.into_iter().map(Message::Image).collect();
        let at = config.metadata_after.min(messages.len());
        messages.insert(at, Message::Metadata(layout.clone()));
        let bad_examples = [
            r#"{"experiment_id": "EXP-BAD", "cell_type": "HUVEC", "plate_number": 1, "plate_barcode": "X", "well": "Z99", "site": 1, "channel": 1, "location": "s3://x"}"#,
            r#"{"experiment_id": "EXP-BAD", "plate_number": "one", "well": "B02"}"#,
            r#"{"experiment_id": 7, "cell_type": "HUVEC", "plate_number": 1, "plate_barcode": "X", "well": "B02", "site": 1, "channel": 1, "location": "s3://x"}"#,
            "this is not json",
        ];
        for i in 0..config.bad_records {
            let at = rng.random_range(0..=messages.len());
            messages.insert(
                at,
                Message::Bad(bad_examples[i % bad_examples.len()].to_owned()),
            );
        }
        Workload { layout, messages }
    }

    /// Leaves `n` distinct images out (every copy of each), spread over the experiment;
    /// returns their keys. Their sites, wells, plates and the experiment never complete:
    /// the groupings report them incomplete after their timeouts.
    pub fn leave_out(&mut self, n: usize) -> Vec<String> {
        let mut distinct: Vec<String> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for message in &self.messages {
            if let Message::Image(image) = message
                && seen.insert(image.key.to_string())
            {
                distinct.push(image.key.to_string());
            }
        }
        distinct.sort();
        let n = n.min(distinct.len());
        if n == 0 {
            return Vec::new();
        }
        let step = distinct.len() / n;
        let left_out: std::collections::HashSet<String> =
            (0..n).map(|i| distinct[i * step].clone()).collect();
        self.messages.retain(|m| match m {
            Message::Image(image) => !left_out.contains(&image.key.to_string()),
            _ => true,
        });
        let mut keys: Vec<String> = left_out.into_iter().collect();
        keys.sort();
        keys
    }

    pub fn image_count(&self) -> usize {
        self.messages
            .iter()
            .filter(|m| matches!(m, Message::Image(_)))
            .count()
    }
}

/// The log record of a message.
pub fn record(message: &Message, images_topic: &str, metadata_topic: &str) -> ProducerRecord {
    match message {
        Message::Metadata(layout) => ProducerRecord::new(
            metadata_topic,
            Some(Bytes::from(layout.experiment.to_string())),
            Some(Bytes::from(layout.to_value().to_json_string())),
        ),
        Message::Image(image) => ProducerRecord::new(
            images_topic,
            Some(Bytes::from(image.key.to_string())),
            Some(Bytes::from(image.to_value().to_json_string())),
        ),
        Message::Bad(text) => ProducerRecord::new(
            images_topic,
            Some(Bytes::from_static(b"bad-record")),
            Some(Bytes::from(text.clone())),
        ),
    }
}

/// Batches [`publish`] has sent and not yet seen delivered: waiting for each batch before
/// sending the next would cost a round trip (and the producer's linger) per batch.
const IN_FLIGHT: usize = 16;

/// Publishes messages in batches, at most `rate` per second when given; calls
/// `published` after each batch is delivered, in order, with the messages it contained.
pub async fn publish(
    producer: &dyn Producer,
    messages: &[Message],
    images_topic: &str,
    metadata_topic: &str,
    rate: Option<f64>,
    mut published: impl FnMut(&[Message]),
) -> Result<(), LogError> {
    use futures::{StreamExt as _, TryStreamExt as _};
    let start = tokio::time::Instant::now();
    let rate = rate.filter(|r| *r > 0.0);
    // At a rate, a batch every 10 ms: a steady stream rather than bursts.
    let size = rate.map_or(256, |r| ((r / 100.0) as usize).clamp(1, 256));
    let mut deliveries = futures::stream::iter(messages.chunks(size).enumerate())
        .map(|(i, batch)| async move {
            if let Some(rate) = rate {
                let due = start + Duration::from_secs_f64((i * size) as f64 / rate);
                tokio::time::sleep_until(due).await;
            }
            let records = batch
                .iter()
                .map(|m| record(m, images_topic, metadata_topic))
                .collect();
            producer.send(records).await.map(|_| batch)
        })
        .buffered(IN_FLIGHT);
    while let Some(batch) = deliveries.try_next().await? {
        published(batch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_workload_is_realistic() {
        let config = WorkloadConfig {
            bad_records: 3,
            ..WorkloadConfig::default()
        };
        let workload = Workload::build(&config).unwrap();
        assert_eq!(workload.layout.image_count(), 14_784);
        let images = workload.image_count();
        assert!(images > 14_784, "duplicates included: {images}");
        let metadata_at = workload
            .messages
            .iter()
            .position(|m| matches!(m, Message::Metadata(_)))
            .unwrap();
        assert!(
            metadata_at >= 190,
            "metadata arrives after the first images"
        );
        assert_eq!(
            workload
                .messages
                .iter()
                .filter(|m| matches!(m, Message::Bad(_)))
                .count(),
            3
        );
        // Same seed, same workload.
        let again = Workload::build(&config).unwrap();
        assert_eq!(
            format!("{:?}", again.messages.len()),
            format!("{:?}", workload.messages.len())
        );
    }
}
