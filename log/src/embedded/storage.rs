//! The embedded log's topics: each partition a queue of records in offset order, kept
//! in memory (and, for a durable log, journaled by `durable`). Appends are
//! all-or-nothing per batch; compacted topics drop superseded values as they grow, and
//! topics of cleanup `Delete` drop their oldest records past the [`Retention`] when the
//! durable log takes a snapshot (never one a consumer group has yet to read).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rustc_hash::FxHashMap;

use crate::{
    Cleanup, Headers, LogError, LogRecord, Offset, ProducerRecord, TopicPartition, TopicSpec,
    partition_for_key,
};

/// Compact a partition when it holds at least this many records.
const MIN_COMPACT_AT: usize = 1024;

/// How long records of `Delete` topics are kept: the oldest go once they are older than
/// `max_age`, or once their partition holds more than `max_bytes`, when the durable log
/// takes a snapshot or opens; never one a consumer group has yet to read (at or past
/// the lowest offset a group committed). None of either keeps everything (the in-memory
/// default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    pub max_age: Option<Duration>,
    /// Per partition: keys, values and headers, plus a small overhead per record.
    pub max_bytes: Option<u64>,
}

/// What a record costs a partition beyond its key, value and headers.
const RECORD_OVERHEAD: u64 = 32;

/// Every topic, by name.
#[derive(Default)]
pub(super) struct Topics {
    logs: BTreeMap<String, TopicLog>,
    /// Where the next record without a key nor a partition goes.
    round_robin: u32,
    pub retention: Retention,
}

pub(super) struct TopicLog {
    pub spec: TopicSpec,
    partitions: Vec<PartitionLog>,
}

pub(super) struct PartitionLog {
    /// Sorted by offset; compaction and retention leave gaps.
    records: VecDeque<Stored>,
    /// What the records cost (see [`Retention::max_bytes`]).
    bytes: u64,
    /// The offset the next record gets (the high watermark).
    pub next_offset: Offset,
    /// Compact when the partition holds this many records (compacted topics only).
    compact_at: usize,
}

/// One record as a partition keeps it (and as the journal writes it).
#[derive(Clone)]
pub(super) struct Stored {
    pub offset: Offset,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Arc<Headers>,
    pub timestamp_ms: i64,
}

impl Stored {
    fn cost(&self) -> u64 {
        let len = |b: &Option<Bytes>| b.as_ref().map_or(0, |b| b.len() as u64);
        let headers: u64 = self
            .headers
            .iter()
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum();
        len(&self.key) + len(&self.value) + headers + RECORD_OVERHEAD
    }
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

    /// Every topic, by name.
    pub fn iter(&self) -> impl Iterator<Item = &TopicLog> {
        self.logs.values()
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

    /// Appends records in order; returns where each went. With `journal`, also what was
    /// stored, for the durable log to write.
    pub fn append(
        &mut self,
        records: Vec<ProducerRecord>,
        now_ms: i64,
        mut journal: Option<&mut Vec<(TopicPartition, Stored)>>,
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
            let cleanup = topic.spec.cleanup;
            let log = &mut topic.partitions[partition as usize];
            let offset = log.next_offset;
            let stored = Stored {
                offset,
                key: record.key,
                value: record.value,
                headers: Arc::new(record.headers),
                timestamp_ms: now_ms,
            };
            let tp = TopicPartition::new(record.topic, partition);
            if let Some(journal) = journal.as_mut() {
                journal.push((tp.clone(), stored.clone()));
            }
            log.push(stored);
            if cleanup == Cleanup::Compact && log.records.len() >= log.compact_at {
                log.compact();
            }
            out.push((tp, offset));
        }
        Ok(out)
    }

    /// Puts back a record read from disk (offsets come in order, gaps allowed).
    pub fn restore(&mut self, tp: &TopicPartition, stored: Stored) -> Result<(), LogError> {
        let log = self.partition_mut(tp)?;
        if stored.offset < log.next_offset {
            return Err(LogError::Other(format!(
                "{tp}: offset {} restored after {} (records out of order on disk)",
                stored.offset, log.next_offset
            )));
        }
        log.push(stored);
        Ok(())
    }

    /// Sets where the next record of a partition goes (a snapshot of a partition whose
    /// last records are gone keeps its high watermark).
    pub fn restore_next_offset(
        &mut self,
        tp: &TopicPartition,
        next: Offset,
    ) -> Result<(), LogError> {
        let log = self.partition_mut(tp)?;
        log.next_offset = log.next_offset.max(next);
        Ok(())
    }

    /// Compacts, and applies retention, everywhere (before a snapshot, after a restore).
    /// Retention never drops a record at or past `unread(partition)`: the lowest offset a
    /// consumer group committed there, so that no record a group has yet to process is
    /// lost to retention.
    pub fn clean_up_all(
        &mut self,
        now_ms: i64,
        unread: impl Fn(&TopicPartition) -> Option<Offset>,
    ) {
        let retention = self.retention;
        for (name, topic) in &mut self.logs {
            let cleanup = topic.spec.cleanup;
            for (p, log) in topic.partitions.iter_mut().enumerate() {
                let floor = unread(&TopicPartition::new(name.as_str(), p as u32));
                log.clean_up(cleanup, retention, now_ms, floor);
            }
        }
    }

    fn partition_mut(&mut self, tp: &TopicPartition) -> Result<&mut PartitionLog, LogError> {
        self.logs
            .get_mut(&*tp.topic)
            .ok_or_else(|| LogError::UnknownTopic(tp.topic.to_string()))?
            .partitions
            .get_mut(tp.partition as usize)
            .ok_or_else(|| LogError::UnknownPartition {
                topic: tp.topic.to_string(),
                partition: tp.partition,
            })
    }
}

impl TopicLog {
    pub fn partition_count(&self) -> u32 {
        self.partitions.len() as u32
    }

    /// The partitions, in order.
    pub fn partitions(&self) -> &[PartitionLog] {
        &self.partitions
    }
}

impl PartitionLog {
    fn new() -> Self {
        Self {
            records: VecDeque::new(),
            bytes: 0,
            next_offset: 0,
            compact_at: MIN_COMPACT_AT,
        }
    }

    /// Every record kept, in offset order.
    pub fn stored(&self) -> impl Iterator<Item = &Stored> {
        self.records.iter()
    }

    fn push(&mut self, stored: Stored) {
        self.next_offset = stored.offset + 1;
        self.bytes += stored.cost();
        self.records.push_back(stored);
    }

    /// Compacts (a compacted topic) or drops what retention no longer keeps (a `Delete`
    /// topic), below `floor` if given. The newest record always stays, so that the
    /// partition's high watermark is never in doubt.
    fn clean_up(
        &mut self,
        cleanup: Cleanup,
        retention: Retention,
        now_ms: i64,
        floor: Option<Offset>,
    ) {
        match cleanup {
            Cleanup::Compact => self.compact(),
            Cleanup::Delete => {
                let oldest_kept = retention
                    .max_age
                    .map(|age| now_ms.saturating_sub(age.as_millis() as i64));
                while self.records.len() > 1 {
                    let Some(first) = self.records.front() else {
                        break;
                    };
                    if floor.is_some_and(|floor| first.offset >= floor) {
                        break;
                    }
                    let too_old = oldest_kept.is_some_and(|t| first.timestamp_ms < t);
                    let too_big = retention.max_bytes.is_some_and(|max| self.bytes > max);
                    if !(too_old || too_big) {
                        break;
                    }
                    let cost = first.cost();
                    self.records.pop_front();
                    self.bytes -= cost;
                }
            }
        }
    }

    /// Up to `max` records of partition `tp` (this one) from offset `from`.
    /// Up to `max` records from `from`; with `keys_only`, without values and headers.
    pub fn read(
        &self,
        tp: &TopicPartition,
        from: Offset,
        max: usize,
        keys_only: bool,
    ) -> Vec<LogRecord> {
        // Most reads of an idle log find nothing: they cost a comparison, no allocation.
        if max == 0 || self.records.back().is_none_or(|r| r.offset < from) {
            return Vec::new();
        }
        let start = self.records.partition_point(|r| r.offset < from);
        let no_headers = Arc::new(Headers::default());
        self.records
            .range(start..)
            .take(max)
            .map(|r| LogRecord {
                topic: tp.topic.clone(),
                partition: tp.partition,
                offset: r.offset,
                key: r.key.clone(),
                value: if keys_only { None } else { r.value.clone() },
                headers: if keys_only {
                    no_headers.clone()
                } else {
                    r.headers.clone()
                },
                timestamp_ms: r.timestamp_ms,
            })
            .collect()
    }

    /// Keeps the latest record of each key (tombstones included, so a reader that saw an
    /// older value still learns of the delete) and every record without a key.
    fn compact(&mut self) {
        // Fx, not SipHash: SipHash was half of a compaction of the task topic.
        let mut latest: FxHashMap<&Bytes, Offset> =
            FxHashMap::with_capacity_and_hasher(self.records.len(), Default::default());
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
        self.bytes = self.records.iter().map(Stored::cost).sum();
        self.compact_at = (self.records.len() * 2).max(MIN_COMPACT_AT);
    }
}
