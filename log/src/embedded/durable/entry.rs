//! What a frame's payload holds: one change to the log (postcard-encoded), applied in
//! order on restore. A journal frame is one acknowledged operation (a producer's batch, a
//! consumer's commit with its outputs and offsets together, a new topic), so a torn tail
//! loses whole operations only: never half a commit.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::super::coordinator::GroupState;
use super::super::storage::{Stored, Topics};
use crate::{Cleanup, LogError, Offset, TopicPartition, TopicSpec};

#[derive(Debug, Serialize, Deserialize)]
pub(in crate::embedded) enum Entry {
    /// A topic was created.
    Topic {
        name: String,
        partitions: u32,
        compact: bool,
    },
    /// Records appended and, for a consumer's commit, the group's new offsets: applied
    /// together or not at all.
    Batch {
        records: Vec<RecordEntry>,
        commit: Option<GroupCommit>,
    },
    /// A partition's high watermark (snapshots: its newest records may be gone).
    NextOffset {
        topic: String,
        partition: u32,
        next_offset: Offset,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub(in crate::embedded) struct RecordEntry {
    topic: String,
    partition: u32,
    offset: Offset,
    key: Option<Bytes>,
    value: Option<Bytes>,
    headers: Vec<(String, Bytes)>,
    timestamp_ms: i64,
}

#[derive(Debug, Serialize, Deserialize)]
pub(in crate::embedded) struct GroupCommit {
    group: String,
    offsets: Vec<(String, u32, Offset)>,
}

impl Entry {
    pub fn topic(spec: &TopicSpec) -> Self {
        Entry::Topic {
            name: spec.name.clone(),
            partitions: spec.partitions,
            compact: spec.cleanup == Cleanup::Compact,
        }
    }

    pub fn batch<'a>(
        records: impl IntoIterator<Item = (&'a TopicPartition, &'a Stored)>,
        commit: Option<(&str, &[(TopicPartition, Offset)])>,
    ) -> Self {
        Entry::Batch {
            records: records
                .into_iter()
                .map(|(tp, r)| RecordEntry {
                    topic: tp.topic.to_string(),
                    partition: tp.partition,
                    offset: r.offset,
                    key: r.key.clone(),
                    value: r.value.clone(),
                    headers: r.headers.to_vec(),
                    timestamp_ms: r.timestamp_ms,
                })
                .collect(),
            commit: commit.map(|(group, offsets)| GroupCommit {
                group: group.to_owned(),
                offsets: offsets
                    .iter()
                    .map(|(tp, o)| (tp.topic.to_string(), tp.partition, *o))
                    .collect(),
            }),
        }
    }

    pub fn encode(&self) -> Result<Vec<u8>, LogError> {
        postcard::to_stdvec(self)
            .map_err(|e| LogError::Other(format!("cannot encode a log entry: {e}")))
    }

    pub fn decode(payload: &[u8]) -> Result<Self, String> {
        postcard::from_bytes(payload).map_err(|e| format!("an entry that does not decode ({e})"))
    }

    /// Applies this change to a log being restored.
    pub fn apply(
        self,
        topics: &mut Topics,
        groups: &mut BTreeMap<String, GroupState>,
    ) -> Result<(), LogError> {
        match self {
            Entry::Topic {
                name,
                partitions,
                compact,
            } => {
                if topics.get(&name).is_none() {
                    let cleanup = if compact {
                        Cleanup::Compact
                    } else {
                        Cleanup::Delete
                    };
                    topics.create(&TopicSpec::new(name, partitions, cleanup));
                }
            }
            Entry::Batch { records, commit } => {
                for r in records {
                    let tp = TopicPartition::new(r.topic, r.partition);
                    let stored = Stored {
                        offset: r.offset,
                        key: r.key,
                        value: r.value,
                        headers: Arc::new(r.headers),
                        timestamp_ms: r.timestamp_ms,
                    };
                    topics.restore(&tp, stored)?;
                }
                if let Some(commit) = commit {
                    let offsets = commit
                        .offsets
                        .into_iter()
                        .map(|(topic, partition, o)| (TopicPartition::new(topic, partition), o))
                        .collect();
                    groups.entry(commit.group).or_default().commit(offsets);
                }
            }
            Entry::NextOffset {
                topic,
                partition,
                next_offset,
            } => topics.restore_next_offset(&TopicPartition::new(topic, partition), next_offset)?,
        }
        Ok(())
    }
}
