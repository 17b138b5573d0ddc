//! The DAGs a cluster runs, recorded where every node reads them, and the check a node
//! makes against them before it starts its own.
//!
//! The record is the compacted topic `{prefix}dags` (one partition, on the embedded log
//! and on Kafka alike): one record per DAG and version, keyed `DAG/VERSION`, whose value
//! is JSON (any Kafka tool shows it) holding the spec as its author wrote it. A node
//! reads the topic to its end before it starts its DAGs; each DAG must then be either a
//! version already recorded with the very same spec (a restart, or a node of the other
//! version during a roll), or an upgrade of the newest recorded version that
//! [`upgrade::compare`] allows. Once its DAGs run, the node records each of them.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use wellspring_log::{Cleanup, Log, LogError, ProducerRecord, TopicPartition, TopicSpec};
use wellspring_protocol::spec::upgrade::{self, ChangeClass, UpgradeError, UpgradeReport};
use wellspring_protocol::spec::{FunctionCatalog, NodeKind, SpecFormat};
use wellspring_protocol::{Dag, SpecErrors};

use crate::stage::error::StartError;
use crate::stage::restore::restore;

/// The format of a recorded DAG's value; a node meeting a higher one stops rather than
/// guess at it.
pub const RECORD_FORMAT: u32 = 1;

/// The topic of the recorded DAGs under `prefix`.
pub fn topic(prefix: &str) -> String {
    format!("{prefix}dags")
}

/// One DAG version as a node recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RecordedDag {
    pub record_format: u32,
    pub dag: String,
    pub version: u32,
    /// `json` or `yaml`: how to read `spec`.
    pub format: String,
    /// The spec's text, as the node read it from its file.
    pub spec: String,
    /// The node that recorded it first, and when (ms since the epoch).
    pub node: String,
    pub recorded_ms: i64,
}

impl RecordedDag {
    pub fn of(dag: &Dag, node: &str, recorded_ms: i64) -> Self {
        Self {
            record_format: RECORD_FORMAT,
            dag: dag.name.clone(),
            version: dag.version,
            format: match dag.source.format {
                SpecFormat::Json => "json",
                SpecFormat::Yaml => "yaml",
            }
            .to_owned(),
            spec: dag.source.text.clone(),
            node: node.to_owned(),
            recorded_ms,
        }
    }

    fn key(&self) -> String {
        format!("{}/{}", self.dag, self.version)
    }

    /// Reads a record's value; a record of a newer format is an error naming both.
    pub fn decode(value: &[u8]) -> Result<Self, RecordError> {
        let json: serde_json::Value =
            serde_json::from_slice(value).map_err(|e| RecordError::Unreadable(e.to_string()))?;
        let found = json
            .get("record-format")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| RecordError::Unreadable("it has no record-format".into()))?;
        if found > u64::from(RECORD_FORMAT) {
            return Err(RecordError::NewerFormat {
                found,
                supported: RECORD_FORMAT,
            });
        }
        serde_json::from_value(json).map_err(|e| RecordError::Unreadable(e.to_string()))
    }

    /// The recorded spec, loaded again with this node's functions.
    pub fn load(&self, catalog: &dyn FunctionCatalog) -> Result<Dag, RecordError> {
        let format = if self.format == "json" {
            SpecFormat::Json
        } else {
            SpecFormat::Yaml
        };
        Dag::load(&self.spec, format, catalog).map_err(|errors| RecordError::RecordedSpec {
            dag: self.dag.clone(),
            version: self.version,
            errors,
        })
    }
}

/// Why the recorded DAGs could not be read or written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RecordError {
    #[error("reading the running DAGs: {0}")]
    Read(#[source] Box<StartError>),
    #[error("the record of the running DAGs on {topic}: {source}")]
    Write {
        topic: String,
        #[source]
        source: LogError,
    },
    #[error("a recorded DAG is unreadable: {0}")]
    Unreadable(String),
    #[error(
        "a recorded DAG has record format {found}, and this node reads format {supported}: it was recorded by a newer Wellspring; upgrade this node's binary"
    )]
    NewerFormat { found: u64, supported: u32 },
    #[error(
        "the running spec of DAG {dag} version {version} does not load on this node (does it lack a function the other nodes have?): {errors}"
    )]
    RecordedSpec {
        dag: String,
        version: u32,
        errors: SpecErrors,
    },
    #[error(transparent)]
    Upgrade(#[from] UpgradeError),
}

/// `dag` as its spec is written (without a node's `--set` and `--partitions`): what is
/// recorded and compared.
fn as_written(dag: &Dag, catalog: &dyn FunctionCatalog) -> Result<Dag, RecordError> {
    Dag::load(&dag.source.text, dag.source.format, catalog).map_err(|errors| {
        RecordError::RecordedSpec {
            dag: dag.name.clone(),
            version: dag.version,
            errors,
        }
    })
}

/// What a node may do with one of its DAGs, given what is recorded.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    /// No node recorded this DAG: this one is the first.
    First,
    /// This very spec is recorded (a restart, or a node joining a roll); `newest` is the
    /// newest version recorded.
    Known { newest: u32 },
    /// An upgrade from the newest recorded version (allowed or not: see the report).
    Upgrade(UpgradeReport),
}

impl Admission {
    /// The report when the spec is refused against what the cluster runs.
    pub fn refused(&self) -> Option<&UpgradeReport> {
        match self {
            Admission::Upgrade(report) if !report.allowed() => Some(report),
            _ => None,
        }
    }
}

/// Every recorded version of every DAG.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecordedDags {
    by_dag: BTreeMap<String, BTreeMap<u32, RecordedDag>>,
}

impl RecordedDags {
    /// Reads the record to its end, creating its topic when missing (compacted, as the
    /// record needs: a topic a broker made by itself would not be).
    pub async fn read(log: &dyn Log, prefix: &str, client: &str) -> Result<Self, RecordError> {
        let topic = topic(prefix);
        ensure_topic(log, &topic).await?;
        let mut recorded = Self::default();
        let mut failure = None;
        restore(
            log,
            &TopicPartition::new(topic, 0),
            client.to_owned(),
            |record| {
                let Some(value) = record.value.as_deref() else {
                    return;
                };
                match RecordedDag::decode(value) {
                    Ok(dag) => recorded.insert(dag),
                    Err(e) => {
                        failure.get_or_insert(e);
                    }
                }
            },
        )
        .await
        .map_err(|e| RecordError::Read(Box::new(e)))?;
        match failure {
            Some(e) => Err(e),
            None => Ok(recorded),
        }
    }

    pub fn insert(&mut self, dag: RecordedDag) {
        self.by_dag
            .entry(dag.dag.clone())
            .or_default()
            .insert(dag.version, dag);
    }

    /// The newest recorded version of `dag`.
    pub fn newest(&self, dag: &str) -> Option<&RecordedDag> {
        self.by_dag.get(dag)?.values().next_back()
    }

    pub fn version(&self, dag: &str, version: u32) -> Option<&RecordedDag> {
        self.by_dag.get(dag)?.get(&version)
    }

    /// Checks `dag` against what is recorded for it (the `upgrade-check` rules). Both
    /// sides are the specs as written: a node's own `--set` and `--partitions` are not
    /// part of the record (a partition count that differs from the topics' is refused
    /// by the log when the stages start).
    pub fn admit(
        &self,
        dag: &Dag,
        catalog: &dyn FunctionCatalog,
    ) -> Result<Admission, RecordError> {
        let Some(newest) = self.newest(&dag.name) else {
            return Ok(Admission::First);
        };
        let written = as_written(dag, catalog)?;
        let dag = &written;
        // The same version: it must be the same spec, else nodes of two specs would run
        // under one version (the comparison reports that as refused).
        if let Some(same) = self.version(&dag.name, dag.version) {
            let report = upgrade::compare(&same.load(catalog)?, dag)?;
            return Ok(if report.changes.is_empty() {
                Admission::Known {
                    newest: newest.version,
                }
            } else {
                Admission::Upgrade(report)
            });
        }
        Ok(Admission::Upgrade(upgrade::compare(
            &newest.load(catalog)?,
            dag,
        )?))
    }

    /// The nodes `dag` adds on streams that ran before it (backfilled against the
    /// version before it), while a roll to it may be going on: until `window` after a
    /// node first recorded this version (at once, when none has yet). A node that starts
    /// later finds the roll long done and the nodes fed live.
    pub fn rolling_backfills(
        &self,
        dag: &Dag,
        catalog: &dyn FunctionCatalog,
        now_ms: i64,
        window_ms: i64,
    ) -> Result<Vec<String>, RecordError> {
        if self
            .version(&dag.name, dag.version)
            .is_some_and(|this| now_ms - this.recorded_ms > window_ms)
        {
            return Ok(Vec::new());
        }
        let Some(previous) = self
            .by_dag
            .get(&dag.name)
            .and_then(|versions| versions.range(..dag.version).next_back())
            .map(|(_, recorded)| recorded)
        else {
            return Ok(Vec::new());
        };
        let written = as_written(dag, catalog)?;
        let report = upgrade::compare(&previous.load(catalog)?, &written)?;
        Ok(report
            .of_class(ChangeClass::Backfilled)
            .filter_map(|change| change.location.strip_prefix("graph."))
            .filter(|node| {
                matches!(
                    written.node(node).map(|n| &n.kind),
                    Some(
                        NodeKind::ExternalTask { .. }
                            | NodeKind::StreamOperation(_)
                            | NodeKind::Publish { .. }
                    )
                )
            })
            .map(str::to_owned)
            .collect())
    }

    /// Records `dags` as run by `node` (a version already recorded is left as it is).
    pub async fn record(
        &self,
        log: &dyn Log,
        prefix: &str,
        dags: &[Dag],
        node: &str,
        now_ms: i64,
    ) -> Result<(), RecordError> {
        let topic = topic(prefix);
        let failed = |source| RecordError::Write {
            topic: topic.clone(),
            source,
        };
        let records: Vec<ProducerRecord> = dags
            .iter()
            .filter(|dag| self.version(&dag.name, dag.version).is_none())
            .map(|dag| {
                let recorded = RecordedDag::of(dag, node, now_ms);
                let value = serde_json::to_vec(&recorded).unwrap_or_default();
                ProducerRecord::new(
                    topic.as_str(),
                    Some(Bytes::from(recorded.key())),
                    Some(Bytes::from(value)),
                )
                .to_partition(0)
            })
            .collect();
        if records.is_empty() {
            return Ok(());
        }
        ensure_topic(log, &topic).await?;
        let producer = log.producer().map_err(failed)?;
        producer.send(records).await.map_err(failed)?;
        Ok(())
    }
}

/// One partition, compacted: the latest record of each DAG version is kept for ever.
async fn ensure_topic(log: &dyn Log, topic: &str) -> Result<(), RecordError> {
    log.ensure_topic(&TopicSpec::new(topic, 1, Cleanup::Compact))
        .await
        .map_err(|source| RecordError::Write {
            topic: topic.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FunctionRegistry;
    use wellspring_log::EmbeddedLog;

    const SPEC: &str = include_str!("../../examples/reference-dag.yaml");

    fn dag(text: &str) -> Dag {
        Dag::load(text, SpecFormat::Yaml, &FunctionRegistry::with_builtins())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn a_recorded_dag_admits_itself_and_judges_the_next_version() {
        let log = EmbeddedLog::new();
        let registry = FunctionRegistry::with_builtins();
        let v1 = dag(SPEC);
        let nothing = RecordedDags::read(&log, "t.", "test").await.unwrap();
        assert_eq!(nothing.admit(&v1, &registry).unwrap(), Admission::First);
        nothing
            .record(&log, "t.", std::slice::from_ref(&v1), "node-a", 7)
            .await
            .unwrap();

        let recorded = RecordedDags::read(&log, "t.", "test").await.unwrap();
        let entry = recorded.newest("microscopy-reference").unwrap();
        assert_eq!(
            (entry.version, entry.node.as_str(), entry.recorded_ms),
            (1, "node-a", 7)
        );
        assert_eq!(
            recorded.admit(&v1, &registry).unwrap(),
            Admission::Known { newest: 1 }
        );
        let v2 = dag(&SPEC.replacen("version: 1 ", "version: 2 ", 1).replacen(
            "timeout: 10s",
            "timeout: 20s",
            1,
        ));
        let allowed = recorded.admit(&v2, &registry).unwrap();
        assert!(
            matches!(&allowed, Admission::Upgrade(r) if r.allowed()),
            "{allowed:?}"
        );
        // Same version, another spec: refused.
        let same_version = dag(&SPEC.replacen("timeout: 10s", "timeout: 20s", 1));
        let refused = recorded.admit(&same_version, &registry).unwrap();
        assert_eq!(
            refused
                .refused()
                .map(|r| r.refused().next().map(|c| c.location.clone())),
            Some(Some("version".to_owned()))
        );

        // A node that rolled to version 2 records it; a node of version 1 may still run.
        recorded
            .record(&log, "t.", std::slice::from_ref(&v2), "node-b", 9)
            .await
            .unwrap();
        let recorded = RecordedDags::read(&log, "t.", "test").await.unwrap();
        assert_eq!(recorded.newest("microscopy-reference").unwrap().version, 2);
        assert_eq!(
            recorded.admit(&v1, &registry).unwrap(),
            Admission::Known { newest: 2 }
        );
    }

    #[test]
    fn the_nodes_an_upgrade_adds_are_backfilled_while_the_roll_may_go_on() {
        let registry = FunctionRegistry::with_builtins();
        let v1 = dag(SPEC);
        let v2 = dag(&SPEC.replacen("version: 1 ", "version: 2 ", 1).replace(
            "  images-site-output:",
            "  site-qc: {type: external-task, stream: images-site, task-name: extract-site-features}\n  site-qc-output: {type: publish, stream: site-qc, topic-name: site_features}\n  images-site-output:",
        ));
        let mut recorded = RecordedDags::default();
        recorded.insert(RecordedDag::of(&v1, "a", 0));
        let hour = 3_600_000;
        // The first node of version 2: the task is added on a stream that ran; its
        // publish node is fed by it alone.
        assert_eq!(
            recorded
                .rolling_backfills(&v2, &registry, 10, hour)
                .unwrap(),
            vec!["site-qc".to_owned()]
        );
        recorded.insert(RecordedDag::of(&v2, "a", 1_000));
        assert_eq!(
            recorded
                .rolling_backfills(&v2, &registry, 1_000 + hour, hour)
                .unwrap(),
            vec!["site-qc".to_owned()],
            "within the window of version 2's first record"
        );
        assert!(
            recorded
                .rolling_backfills(&v2, &registry, 1_001 + hour, hour)
                .unwrap()
                .is_empty(),
            "the roll is long done"
        );
        assert!(
            recorded
                .rolling_backfills(&v1, &registry, 10, hour)
                .unwrap()
                .is_empty(),
            "version 1 added nothing"
        );
    }

    #[test]
    fn a_record_of_a_newer_format_is_refused_with_both_versions() {
        let mut record = serde_json::to_value(RecordedDag::of(&dag(SPEC), "n", 0)).unwrap();
        record["record-format"] = serde_json::json!(RECORD_FORMAT + 1);
        let error = RecordedDag::decode(&serde_json::to_vec(&record).unwrap()).unwrap_err();
        assert_eq!(
            error,
            RecordError::NewerFormat {
                found: u64::from(RECORD_FORMAT) + 1,
                supported: RECORD_FORMAT
            }
        );
        assert!(
            error
                .to_string()
                .contains("record format 2, and this node reads format 1")
        );
    }
}
