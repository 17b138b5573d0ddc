//! Re-runs and backfills: `POST /api/reruns`, `POST /api/backfills`, `wellspring rerun`
//! and `wellspring backfill`. Both read what the log retains ([`source`]) and send
//! records into one DAG node's input, where its stage does the work as it would live.
//!
//! A re-run claims the next **generation** of its DAG in the ledger (the compacted topic
//! `{prefix}reruns`, one partition) before it sends anything, and records what it sent
//! after; its records carry the scope ([`RerunScope`]), so the outputs are new records of
//! that generation. A backfill makes first-run outputs (ids as live), so running it again,
//! or over records the node also got live, repeats ids consumers drop.
//!
//! One worker thread per node serves them one after another (the log's consumers are not
//! `Send`); each streams its progress to the caller.

pub mod source;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use wellspring_actors::dag::Names;
use wellspring_log::{Cleanup, Log, ProducerRecord, TopicPartition, TopicSpec};
use wellspring_protocol::rerun::{
    BackfillRequest, ReplayAnswer, ReplayProgress, ReplayRecord, RerunRequest, RerunScope, Subset,
    headers,
};
use wellspring_protocol::{Dag, MessageId};

use self::source::{Encoding, Source};
use crate::log_io::{LogIo, LogIoError, log_error};

/// Records sent per batch (and between progress reports).
const BATCH: usize = 5_000;

/// Why a re-run or a backfill was not done (or done only in part: the ledger says what
/// went out).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Log(#[from] LogIoError),
    /// The request names something the node does not run, or asks for nothing.
    #[error("{0}")]
    Invalid(String),
    /// The records it needs are not retained (or never were).
    #[error("{0}")]
    InputsGone(String),
    #[error("the node's re-run worker has stopped (is the node shutting down?)")]
    Stopped,
    #[error("cannot start the re-run worker: {0}")]
    Start(std::io::Error),
}

/// One call for the worker.
#[derive(Debug, Clone)]
pub enum Job {
    Rerun(RerunRequest),
    Backfill(BackfillRequest),
}

impl Job {
    fn dag(&self) -> &str {
        match self {
            Job::Rerun(r) => &r.dag,
            Job::Backfill(b) => &b.dag,
        }
    }

    fn node(&self) -> &str {
        match self {
            Job::Rerun(r) => &r.node,
            Job::Backfill(b) => &b.node,
        }
    }
}

/// Where progress goes while a job runs.
pub type Progress = mpsc::UnboundedSender<ReplayProgress>;

type Reply = oneshot::Sender<Result<ReplayAnswer, ReplayError>>;

/// The handle the API calls; cheap to clone. The worker stops when every handle is gone.
#[derive(Clone, Debug)]
pub struct Replayer {
    dags: Arc<Vec<Dag>>,
    prefix: String,
    requests: mpsc::Sender<(Job, Progress, Reply)>,
}

struct Worker {
    io: LogIo,
    dags: Arc<Vec<Dag>>,
    prefix: String,
    node_id: String,
}

/// The ledger's topic.
pub fn ledger_topic(prefix: &str) -> TopicSpec {
    TopicSpec::new(format!("{prefix}reruns"), 1, Cleanup::Compact)
}

impl Replayer {
    /// Starts the worker for `dags` on `log` (internal topics named with `prefix`).
    pub fn start(
        log: Arc<dyn Log>,
        dags: Vec<Dag>,
        prefix: &str,
        node_id: &str,
    ) -> Result<Replayer, ReplayError> {
        let (requests, mut incoming) = mpsc::channel::<(Job, Progress, Reply)>(16);
        let dags = Arc::new(dags);
        let worker = Worker {
            io: LogIo {
                log,
                client: format!("wellspring-rerun-{node_id}"),
            },
            dags: dags.clone(),
            prefix: prefix.to_owned(),
            node_id: node_id.to_owned(),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ReplayError::Start)?;
        std::thread::Builder::new()
            .name("rerun".into())
            .spawn(move || {
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, async move {
                    while let Some((job, progress, reply)) = incoming.recv().await {
                        let _ = reply.send(worker.run(&job, &progress).await);
                    }
                });
            })
            .map_err(ReplayError::Start)?;
        Ok(Replayer {
            dags,
            prefix: prefix.to_owned(),
            requests,
        })
    }

    /// Whether `job` can be served at all (before anything is read): what the API
    /// answers with an error status rather than in the progress stream.
    pub fn check(&self, job: &Job) -> Result<(), ReplayError> {
        check(&self.dags, &self.prefix, job).map(|_| ())
    }

    /// Runs `job`, reporting progress to `progress`.
    pub async fn run(&self, job: Job, progress: Progress) -> Result<ReplayAnswer, ReplayError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send((job, progress, reply))
            .await
            .map_err(|_| ReplayError::Stopped)?;
        answer.await.map_err(|_| ReplayError::Stopped)?
    }
}

/// The DAG `job` names, or why it cannot be served.
fn check<'a>(dags: &'a [Dag], prefix: &str, job: &Job) -> Result<&'a Dag, ReplayError> {
    let dag = dags.iter().find(|d| d.name == job.dag()).ok_or_else(|| {
        let names: Vec<&str> = dags.iter().map(|d| d.name.as_str()).collect();
        ReplayError::Invalid(format!(
            "this node runs no DAG {:?} (it runs: {})",
            job.dag(),
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        ))
    })?;
    match job {
        Job::Rerun(request) => {
            source::computing_node(dag, job.node()).map_err(ReplayError::Invalid)?;
            if let Some(problem) = request.subset.problem() {
                return Err(ReplayError::Invalid(problem));
            }
        }
        Job::Backfill(request) => {
            let node = source::backfilled_node(dag, job.node()).map_err(ReplayError::Invalid)?;
            if let Some(problem) = request.problem() {
                return Err(ReplayError::Invalid(problem.into()));
            }
            source::backfill_sources(dag, prefix, node).map_err(ReplayError::InputsGone)?;
        }
    }
    Ok(dag)
}

/// Counts what a job read and sent, and reports it.
struct Tally<'a> {
    progress: &'a Progress,
    read: u64,
    total: u64,
    sent: u64,
    selected: u64,
    experiments: BTreeMap<String, u64>,
}

impl<'a> Tally<'a> {
    fn new(progress: &'a Progress, total: u64) -> Self {
        Tally {
            progress,
            read: 0,
            total,
            sent: 0,
            selected: 0,
            experiments: BTreeMap::new(),
        }
    }

    fn read_one(&mut self) {
        self.read += 1;
        if self.read.is_multiple_of(BATCH as u64) {
            let _ = self.progress.send(ReplayProgress::Reading {
                read: self.read,
                total: self.total.max(self.read),
            });
        }
    }

    fn selected(&mut self, experiment: Option<&str>) {
        self.selected += 1;
        if let Some(experiment) = experiment {
            *self.experiments.entry(experiment.to_owned()).or_default() += 1;
        }
    }
}

impl Worker {
    async fn run(&self, job: &Job, progress: &Progress) -> Result<ReplayAnswer, ReplayError> {
        let dag = check(&self.dags, &self.prefix, job)?;
        let ledger_spec = ledger_topic(&self.prefix);
        self.io
            .log
            .ensure_topic(&ledger_spec)
            .await
            .map_err(log_error("creating", &ledger_spec.name))?;
        match job {
            Job::Rerun(request) => self.rerun(dag, request, &ledger_spec.name, progress).await,
            Job::Backfill(request) => {
                self.backfill(dag, request, &ledger_spec.name, progress)
                    .await
            }
        }
    }

    /// The ledger's records: `(key, entry)` in order.
    async fn ledger(&self, topic: &str) -> Result<Vec<(String, ReplayRecord)>, ReplayError> {
        let mut entries = Vec::new();
        self.io
            .read(&TopicPartition::new(topic, 0), 0, |record| {
                let key = record
                    .key
                    .as_deref()
                    .map(|k| String::from_utf8_lossy(k).into_owned());
                let entry = record
                    .value
                    .as_deref()
                    .and_then(|v| serde_json::from_slice::<ReplayRecord>(v).ok());
                if let (Some(key), Some(entry)) = (key, entry) {
                    entries.push((key, entry));
                }
            })
            .await?;
        Ok(entries)
    }

    async fn record(
        &self,
        topic: &str,
        key: &str,
        entry: &ReplayRecord,
    ) -> Result<(), ReplayError> {
        let record = ProducerRecord {
            topic: Arc::from(topic),
            partition: Some(0),
            key: Some(Bytes::copy_from_slice(key.as_bytes())),
            value: serde_json::to_vec(entry).ok().map(Bytes::from),
            headers: Vec::new(),
        };
        self.io
            .send(vec![record], "recording a re-run in", topic)
            .await?;
        Ok(())
    }

    /// Sends `records`, reporting progress.
    async fn send(
        &self,
        records: Vec<ProducerRecord>,
        tally: &mut Tally<'_>,
    ) -> Result<(), ReplayError> {
        for chunk in records.chunks(BATCH) {
            self.io
                .send(chunk.to_vec(), "sending into", &chunk[0].topic)
                .await?;
            tally.sent += chunk.len() as u64;
            let _ = tally.progress.send(ReplayProgress::Sending {
                sent: tally.sent,
                total: tally.selected,
            });
        }
        Ok(())
    }

    async fn rerun(
        &self,
        dag: &Dag,
        request: &RerunRequest,
        ledger: &str,
        progress: &Progress,
    ) -> Result<ReplayAnswer, ReplayError> {
        let names = Names {
            prefix: &self.prefix,
            dag: &dag.name,
        };
        let topic = names.input(&request.node);
        let partitions = self.io.partitions(&topic).await?.ok_or_else(|| {
            ReplayError::InputsGone(format!(
                "{topic} does not exist: node {} never ran on this cluster, so it has nothing to redo",
                request.node
            ))
        })?;
        let prefix = format!("rerun/{}/", dag.name);
        let generation = 1 + self
            .ledger(ledger)
            .await?
            .iter()
            .filter(|(key, _)| key.starts_with(&prefix))
            .map(|(_, entry)| entry.generation)
            .max()
            .unwrap_or(0);
        let scope = RerunScope {
            generation,
            subset: request.subset.clone(),
            downstream: request.downstream,
        };
        let key = format!("{prefix}{generation}");
        let mut entry = ReplayRecord {
            dag: dag.name.clone(),
            node: request.node.clone(),
            generation,
            subset: Some(request.subset.clone()),
            downstream: request.downstream,
            sent: 0,
            by: self.node_id.clone(),
            at_ms: wellspring_log::Clock::now_ms(&wellspring_log::SystemClock),
        };
        let mut tally = Tally::new(progress, self.io.total(&topic, partitions).await?);
        let mut claimed = false;
        let mut seen = HashSet::new();
        for partition in 0..partitions {
            let mut selected = Vec::new();
            self.io
                .read(
                    &TopicPartition::new(topic.as_str(), partition),
                    0,
                    |record| {
                        tally.read_one();
                        let Some(mut envelope) =
                            source::envelope_of(dag, &Encoding::Envelope, record)
                        else {
                            return;
                        };
                        if !request.subset.holds_record(&envelope.payload)
                            || !seen.insert(envelope.id)
                        {
                            return;
                        }
                        tally.selected(Some(&request.subset.experiment));
                        scope.mark(&mut envelope);
                        let mut out = source::resend(record, &envelope);
                        out.headers.push((
                            headers::GENERATION.to_owned(),
                            Bytes::from(generation.to_string()),
                        ));
                        selected.push(out);
                    },
                )
                .await?;
            if request.dry_run || selected.is_empty() {
                continue;
            }
            // The generation is claimed before its first record goes out: a re-run cut
            // short is seen in the ledger, and the next one takes the next generation.
            if !claimed {
                self.record(ledger, &key, &entry).await?;
                claimed = true;
            }
            self.send(selected, &mut tally).await?;
        }
        if tally.selected == 0 {
            return Err(ReplayError::InputsGone(format!(
                "nothing of {} among the {} records retained on {topic}: either node {} never had any, or they are older than the log keeps them (on disk `--retention`, 7 days by default; on Kafka the broker's retention). Publish the images again to redo it",
                request.subset.describe(),
                tally.read,
                request.node
            )));
        }
        if claimed {
            entry.sent = tally.sent;
            self.record(ledger, &key, &entry).await?;
        }
        Ok(answer(
            dag,
            &request.node,
            generation,
            request.dry_run,
            topic.clone(),
            topic,
            tally,
        ))
    }

    async fn backfill(
        &self,
        dag: &Dag,
        request: &BackfillRequest,
        ledger: &str,
        progress: &Progress,
    ) -> Result<ReplayAnswer, ReplayError> {
        let node = source::backfilled_node(dag, &request.node).map_err(ReplayError::Invalid)?;
        let sources =
            source::backfill_sources(dag, &self.prefix, node).map_err(ReplayError::InputsGone)?;
        let router = source::router_into(dag, &self.prefix, node).map_err(ReplayError::Invalid)?;
        let names = Names {
            prefix: &self.prefix,
            dag: &dag.name,
        };
        let target = match &node.kind {
            wellspring_protocol::spec::NodeKind::Publish { topic, .. } => topic.clone(),
            _ => names.input(&node.name),
        };
        let at_ms = wellspring_log::Clock::now_ms(&wellspring_log::SystemClock);
        let key = format!("backfill/{}/{}/{at_ms}", dag.name, node.name);
        let subset = request.experiment.as_ref().map(|experiment| Subset {
            experiment: experiment.clone(),
            plate: None,
            wells: Vec::new(),
        });
        let mut tally = Tally::new(progress, 0);
        let finished = if request.open {
            self.finished_experiments(dag).await?
        } else {
            BTreeSet::new()
        };
        let mut read_from = Vec::new();
        let mut seen: HashSet<MessageId> = HashSet::new();
        for Source { topic, encoding } in &sources {
            let Some(partitions) = self.io.partitions(topic).await? else {
                continue;
            };
            read_from.push(topic.clone());
            tally.total += self.io.total(topic, partitions).await?;
            for partition in 0..partitions {
                let mut selected = Vec::new();
                self.io
                    .read(
                        &TopicPartition::new(topic.as_str(), partition),
                        0,
                        |record| {
                            tally.read_one();
                            if request
                                .since
                                .is_some_and(|since| record.timestamp_ms < since)
                            {
                                return;
                            }
                            let Some(mut envelope) = source::envelope_of(dag, encoding, record)
                            else {
                                return;
                            };
                            let experiment = envelope
                                .payload
                                .get("experiment_id")
                                .and_then(|v| v.as_str())
                                .map(str::to_owned);
                            if subset
                                .as_ref()
                                .is_some_and(|s| !s.holds_record(&envelope.payload))
                                || experiment.as_ref().is_some_and(|e| finished.contains(e))
                                || !seen.insert(envelope.id)
                            {
                                return;
                            }
                            envelope
                                .headers
                                .push((headers::BACKFILL.to_owned(), key.clone()));
                            // A record the live path would dead-letter (no group key) is left
                            // out: the stream's own dead letter said so then.
                            let before = selected.len();
                            if router.route(&envelope, &mut selected).is_ok()
                                && selected.len() > before
                            {
                                tally.selected(experiment.as_deref());
                            }
                        },
                    )
                    .await?;
                if !request.dry_run {
                    self.send(selected, &mut tally).await?;
                }
            }
        }
        if tally.selected == 0 && request.open {
            // Nothing open to catch up on: not a failure.
            return Ok(answer(
                dag,
                &node.name,
                0,
                request.dry_run,
                read_from.join(", "),
                target,
                tally,
            ));
        }
        if tally.selected == 0 {
            let what = match (&request.experiment, request.since) {
                (Some(e), _) => format!("experiment {e}"),
                (None, Some(since)) => format!(
                    "anything appended since {}",
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH
                            + std::time::Duration::from_millis(since.max(0) as u64)
                    )
                ),
                (None, None) => "anything".to_owned(),
            };
            return Err(ReplayError::InputsGone(format!(
                "nothing of {what} among the {} records retained on {}: they are older than the log keeps them (on disk `--retention`, 7 days by default; on Kafka the broker's retention), or there never were any",
                tally.read,
                if read_from.is_empty() {
                    "the stream's topics (none exists yet)".to_owned()
                } else {
                    read_from.join(", ")
                }
            )));
        }
        if !request.dry_run {
            let entry = ReplayRecord {
                dag: dag.name.clone(),
                node: node.name.clone(),
                generation: 0,
                subset,
                downstream: false,
                sent: tally.sent,
                by: self.node_id.clone(),
                at_ms,
            };
            self.record(ledger, &key, &entry).await?;
        }
        Ok(answer(
            dag,
            &node.name,
            0,
            request.dry_run,
            read_from.join(", "),
            target,
            tally,
        ))
    }
}

impl Worker {
    /// The experiments the DAG has an experiment record of (finished).
    async fn finished_experiments(&self, dag: &Dag) -> Result<BTreeSet<String>, ReplayError> {
        let mut finished = BTreeSet::new();
        for Source { topic, encoding } in source::finished_experiment_sources(dag, &self.prefix) {
            let Some(partitions) = self.io.partitions(&topic).await? else {
                continue;
            };
            for partition in 0..partitions {
                self.io
                    .read(
                        &TopicPartition::new(topic.as_str(), partition),
                        0,
                        |record| {
                            if let Some(envelope) = source::envelope_of(dag, &encoding, record) {
                                finished.insert(envelope.key);
                            }
                        },
                    )
                    .await?;
            }
        }
        Ok(finished)
    }
}

fn answer(
    dag: &Dag,
    node: &str,
    generation: u32,
    dry_run: bool,
    source: String,
    topic: String,
    tally: Tally<'_>,
) -> ReplayAnswer {
    ReplayAnswer {
        dag: dag.name.clone(),
        node: node.to_owned(),
        generation,
        dry_run,
        source,
        read: tally.read,
        sent: tally.selected,
        topic,
        experiments: tally.experiments.into_iter().collect(),
    }
}
