//! The embedded log's topics: each partition a vector of records in offset order, kept
//! in memory. Appends are all-or-nothing per batch; compacted topics drop superseded
//! values as they grow.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;

use crate::{
    Cleanup, Headers, LogError, LogRecord, Offset, ProducerRecord, TopicPartition, TopicSpec,
    partition_for_key,
};

/// Compact a partition when it holds at least this many records.
const MIN_COMPACT_AT: usize = 1024;

/// Every topic, by name.
#[derive(Default)]
pub(super) struct Topics {
    logs: BTreeMap<String, TopicLog>,
    /// Where the next record without a key nor a partition goes.
    round_robin: u32,
}

pub(super) struct TopicLog {
    pub spec: TopicSpec,
    partitions: Vec<PartitionLog>,
}

pub(super) struct PartitionLog {
    /// Sorted by offset; compaction leaves gaps.
    records: Vec<Stored>,
    /// The offset the next record gets (the high watermark).
    pub next_offset: Offset,
    /// Compact when the partition holds this many records (compacted topics only).
    compact_at: usize,
}

#[derive(Clone)]
struct Stored {
    offset: Offset,
    key: Option<Bytes>,
    value: Option<Bytes>,
    headers: Headers,
    timestamp_ms: i64,
}

impl Topics {
    pub fn get(&self, name: &str) -> Option<&TopicLog> {
        self.logs.get(name)
    }

    pub fn topic(&self, name: &str) -> Result<&TopicLog, LogError> {
        self.logs
            .get(name)
            .ok_or_else(|| LogError::UnknownTopic(name.to_owned()))
    }

    pub fn partition(&self, tp: &TopicPartition) -> Result<&PartitionLog, LogError> {
        self.topic(&tp.topic)?
            .partitions
            .get(tp.partition as usize)
            .ok_or_else(|| LogError::UnknownPartition {
                topic: tp.topic.to_string(),
                partition: tp.partition,
            })
    }

    /// Every topic and its partition count, by name.
    pub fn counts(&self) -> impl Iterator<Item = (&String, u32)> {
        self.logs
            .iter()
            .map(|(name, t)| (name, t.partition_count()))
    }

    /// Creates an empty topic (the caller checked that none of the name exists).
    pub fn create(&mut self, spec: &TopicSpec) {
        self.logs.insert(
            spec.name.clone(),
            TopicLog {
                spec: spec.clone(),
                partitions: (0..spec.partitions).map(|_| PartitionLog::new()).collect(),
            },
        );
    }

    /// Appends records in order; returns where each went.
    pub fn append(
        &mut self,
        records: Vec<ProducerRecord>,
        now_ms: i64,
    ) -> Result<Vec<(TopicPartition, Offset)>, LogError> {
        // Check everything first so a batch is all-or-nothing.
        let mut placed = Vec::with_capacity(records.len());
        for record in &records {
            let topic = self.topic(&record.topic)?;
            let n = topic.partition_count();
            let partition = match (record.partition, &record.key) {
                (Some(p), _) if p < n => p,
                (Some(p), _) => {
                    return Err(LogError::UnknownPartition {
                        topic: record.topic.to_string(),
                        partition: p,
                    });
                }
                (None, Some(key)) => partition_for_key(key, n),
                (None, None) => {
                    self.round_robin = self.round_robin.wrapping_add(1);
                    self.round_robin % n
                }
            };
            placed.push(partition);
        }
        let mut out = Vec::with_capacity(records.len());
        for (record, partition) in records.into_iter().zip(placed) {
            let Some(topic) = self.logs.get_mut(&*record.topic) else {
                return Err(LogError::UnknownTopic(record.topic.to_string()));
            };
            let compact = topic.spec.cleanup == Cleanup::Compact;
            let log = &mut topic.partitions[partition as usize];
            let offset = log.next_offset;
            log.next_offset += 1;
            log.records.push(Stored {
                offset,
                key: record.key,
                value: record.value,
                headers: record.headers,
                timestamp_ms: now_ms,
            });
            if compact && log.records.len() >= log.compact_at {
                log.compact();
            }
            out.push((TopicPartition::new(record.topic, partition), offset));
        }
        Ok(out)
    }
}

impl TopicLog {
    pub fn partition_count(&self) -> u32 {
        self.partitions.len() as u32
    }
}

impl PartitionLog {
    fn new() -> Self {
        Self {
            records: Vec::new(),
            next_offset: 0,
            compact_at: MIN_COMPACT_AT,
        }
    }

    /// Up to `max` records of partition `tp` (this one) from offset `from`.
    pub fn read(&self, tp: &TopicPartition, from: Offset, max: usize) -> Vec<LogRecord> {
        let start = self.records.partition_point(|r| r.offset < from);
        self.records[start..]
            .iter()
            .take(max)
            .map(|r| LogRecord {
                topic: tp.topic.clone(),
                partition: tp.partition,
                offset: r.offset,
                key: r.key.clone(),
                value: r.value.clone(),
                headers: r.headers.clone(),
                timestamp_ms: r.timestamp_ms,
            })
            .collect()
    }

    /// Keeps the latest record of each key (tombstones included, so a reader that saw an
    /// older value still learns of the delete) and every record without a key.
    fn compact(&mut self) {
        let mut latest: HashMap<&Bytes, Offset> = HashMap::new();
        for r in &self.records {
            if let Some(k) = &r.key {
                latest.insert(k, r.offset);
            }
        }
        let keep: Vec<bool> = self
            .records
            .iter()
            .map(|r| {
                r.key
                    .as_ref()
                    .is_none_or(|k| latest.get(k) == Some(&r.offset))
            })
            .collect();
        let mut i = 0;
        self.records.retain(|_| {
            i += 1;
            keep[i - 1]
        });
        self.compact_at = (self.records.len() * 2).max(MIN_COMPACT_AT);
    }
}
