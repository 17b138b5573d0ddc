//! Dead-letter redrive: `POST /api/dead-letters/redrive` and `wellspring dead-letters
//! redrive`. Each selected dead letter goes back into the stage where it failed (the
//! input of its DAG node: [`target`]), once ([`ledger`]), keeping its key and so the id
//! of the output it makes.
//!
//! A redrive reads the DAGs' dead-letter topics and the ledger whole from the log (not
//! the status view, which keeps only the newest 10,000 dead letters and no records), on
//! a thread of its own: the log's consumers are not `Send`, and one worker per node
//! serves the redrives one after another, so two calls to one node cannot send the same
//! dead letter twice.

pub mod ledger;
pub mod target;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use wellspring_log::{Log, LogRecord, Offset, ProducerRecord, TopicPartition};
use wellspring_protocol::redrive::{
    LedgerEntry, LedgerState, RedriveAnswer, RedriveItem, RedriveRequest, headers,
};
use wellspring_protocol::status::DeadLetterEntry;
use wellspring_protocol::{Dag, Origin, Value};

use self::ledger::{Decision, Ledger, Outcome};
use self::target::{Kept, Target};
use crate::log_io::{LogIo, LogIoError, log_error};
use crate::status::shape::KeyPath;

/// Why a redrive could not be done (nothing, or only what the answer of an earlier
/// call said, was sent).
#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    #[error(transparent)]
    Log(#[from] LogIoError),
    #[error("the node's redrive worker has stopped (is the node shutting down?)")]
    Stopped,
    #[error("cannot start the redrive worker: {0}")]
    Start(std::io::Error),
}

type Reply = oneshot::Sender<Result<RedriveAnswer, RedriveError>>;

/// The handle the API calls; cheap to clone. The worker stops when every handle is gone.
#[derive(Clone, Debug)]
pub struct Redriver {
    requests: mpsc::Sender<(RedriveRequest, Reply)>,
}

/// What the worker redrives with.
struct Worker {
    io: LogIo,
    dags: Vec<Dag>,
    prefix: String,
}

impl Redriver {
    /// Starts the worker for `dags` on `log` (internal topics named with `prefix`).
    pub fn start(
        log: Arc<dyn Log>,
        dags: Vec<Dag>,
        prefix: &str,
        node_id: &str,
    ) -> Result<Redriver, RedriveError> {
        let (requests, mut incoming) = mpsc::channel::<(RedriveRequest, Reply)>(16);
        let worker = Worker {
            io: LogIo {
                log,
                client: format!("wellspring-redrive-{node_id}"),
            },
            dags,
            prefix: prefix.to_owned(),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(RedriveError::Start)?;
        std::thread::Builder::new()
            .name("redrive".into())
            .spawn(move || {
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, async move {
                    while let Some((request, reply)) = incoming.recv().await {
                        let _ = reply.send(worker.redrive(&request).await);
                    }
                });
            })
            .map_err(RedriveError::Start)?;
        Ok(Redriver { requests })
    }

    /// Redrives what `request` selects (or says what it would, with `dry_run`).
    pub async fn redrive(&self, request: RedriveRequest) -> Result<RedriveAnswer, RedriveError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send((request, reply))
            .await
            .map_err(|_| RedriveError::Stopped)?;
        answer.await.map_err(|_| RedriveError::Stopped)?
    }
}

/// A dead letter read from its topic: as listed, and what it kept.
struct Stored {
    entry: DeadLetterEntry,
    record: Value,
    origin: Option<Origin>,
}

impl Stored {
    fn kept(&self) -> Kept<'_> {
        Kept {
            dag: &self.entry.dag,
            node: &self.entry.node,
            key: self.entry.key.as_deref(),
            record: &self.record,
            origin: self.origin.as_ref(),
        }
    }

    fn item(
        &self,
        target: Option<&Target>,
        redriven_before: u32,
        why: Option<String>,
    ) -> RedriveItem {
        let e = &self.entry;
        RedriveItem {
            id: e.id.clone(),
            dag: e.dag.clone(),
            node: e.node.clone(),
            key: e.key.clone(),
            experiment: e.experiment.clone(),
            plate: e.plate,
            well: e.well.clone(),
            site: e.site,
            topic: target.map(|t| t.topic.clone()),
            partition: target.map(|t| t.partition),
            redriven_before,
            why,
        }
    }
}

/// A dead letter as read from the topic, its place in the hierarchy filled from its key.
fn stored(record: &LogRecord) -> Option<Stored> {
    let json: serde_json::Value = serde_json::from_slice(record.value.as_deref()?).ok()?;
    let mut entry = crate::status::reader::dead_letter(&json, record);
    if let Some(path) = entry.key.as_deref().and_then(KeyPath::parse)
        && path.plate.is_some()
    {
        entry.experiment = Some(path.experiment.to_owned());
        entry.plate = path.plate;
        entry.well = path.well.map(|w| w.to_string());
        entry.site = path.site;
    }
    let origin = match (
        &entry.source_topic,
        entry.source_partition,
        entry.source_offset,
    ) {
        (Some(topic), Some(partition), Some(offset)) => Some(Origin {
            topic: topic.clone(),
            partition,
            offset,
        }),
        _ => None,
    };
    let kept = json.get("record").map(Value::from).unwrap_or(Value::Null);
    Some(Stored {
        entry,
        record: kept,
        origin,
    })
}

impl Worker {
    async fn read_ledger(&self, topic: &str) -> Result<Ledger, RedriveError> {
        let mut ledger = Ledger::default();
        self.io
            .read(&TopicPartition::new(topic, 0), 0, |r| {
                ledger.apply(r.key.as_deref(), r.value.as_deref())
            })
            .await?;
        Ok(ledger)
    }

    /// Every dead letter of the DAGs' dead-letter topics, oldest first per partition.
    async fn dead_letters(&self) -> Result<Vec<Stored>, RedriveError> {
        let topics: BTreeSet<&str> = self
            .dags
            .iter()
            .map(|d| d.settings.dead_letter_topic.as_str())
            .collect();
        let mut out = Vec::new();
        for topic in topics {
            // None: nothing was ever dead-lettered there.
            let Some(partitions) = self.io.partitions(topic).await? else {
                continue;
            };
            for p in 0..partitions {
                self.io
                    .read(&TopicPartition::new(topic, p), 0, |r| {
                        out.extend(stored(r));
                    })
                    .await?;
            }
        }
        out.sort_by_key(|s| s.entry.timestamp_ms);
        Ok(out)
    }

    /// Where the record of an unsure redrive landed, if it did.
    async fn find_sent(&self, entry: &LedgerEntry) -> Result<Option<Offset>, RedriveError> {
        let mut found = None;
        let partition = TopicPartition::new(entry.topic.as_str(), entry.partition);
        self.io
            .read(&partition, entry.from_offset, |r| {
                let marked = r
                    .header(headers::REDRIVE_OF)
                    .is_some_and(|v| v.as_ref() == entry.dead_letter.as_bytes());
                if marked && found.is_none() {
                    found = Some(r.offset);
                }
            })
            .await?;
        Ok(found)
    }

    async fn send(
        &self,
        records: Vec<ProducerRecord>,
        what: &'static str,
        topic: &str,
    ) -> Result<Vec<(TopicPartition, Offset)>, RedriveError> {
        Ok(self.io.send(records, what, topic).await?)
    }

    async fn redrive(&self, request: &RedriveRequest) -> Result<RedriveAnswer, RedriveError> {
        let ledger_spec = ledger::topic(&self.prefix);
        let ledger_topic = ledger_spec.name.clone();
        self.io
            .log
            .ensure_topic(&ledger_spec)
            .await
            .map_err(log_error("creating", &ledger_topic))?;
        let ledger = self.read_ledger(&ledger_topic).await?;
        let letters = self.dead_letters().await?;

        let wanted: BTreeSet<&str> = request.ids.iter().map(String::as_str).collect();
        let mut seen = BTreeSet::new();
        let mut answer = RedriveAnswer {
            dry_run: request.dry_run,
            redriven: Vec::new(),
            skipped: Vec::new(),
            unknown_ids: Vec::new(),
        };
        let mut to_send: Vec<(&Stored, Target, u32)> = Vec::new();
        for letter in &letters {
            if !wanted.is_empty() && !wanted.contains(letter.entry.id.as_str()) {
                continue;
            }
            seen.insert(letter.entry.id.as_str());
            if !request.filter.matches(&letter.entry) {
                continue;
            }
            let Some(dag) = self.dags.iter().find(|d| d.name == letter.entry.dag) else {
                answer.skipped.push(letter.item(
                    None,
                    0,
                    Some(format!("DAG {} is not run by this node", letter.entry.dag)),
                ));
                continue;
            };
            let target = match target::target(dag, &self.prefix, &letter.kept()) {
                Ok(target) => target,
                Err(why) => {
                    answer.skipped.push(letter.item(None, 0, Some(why)));
                    continue;
                }
            };
            let outcome = match ledger::decide(ledger.get(&letter.entry.id), request.again) {
                Decision::Known(outcome) => outcome,
                Decision::Unsure { entry } => {
                    let found = self.find_sent(&entry).await?;
                    let (settled, outcome) = ledger::settle(&entry, found, request.again);
                    if let Some(sent) = settled
                        && !request.dry_run
                    {
                        let record = ledger::record(&ledger_topic, &sent);
                        self.send(vec![record], "recording a redrive in", &ledger_topic)
                            .await?;
                    }
                    outcome
                }
            };
            match outcome {
                Outcome::Send { count } => to_send.push((letter, target, count)),
                Outcome::AlreadySent { count } => answer.skipped.push(letter.item(
                    Some(&target),
                    count,
                    Some(format!(
                        "redriven before ({count} time{}); ask again to redrive it once more",
                        if count == 1 { "" } else { "s" }
                    )),
                )),
            }
        }
        answer.unknown_ids = wanted
            .iter()
            .filter(|id| !seen.contains(*id))
            .map(|id| (*id).to_owned())
            .collect();
        if !request.dry_run {
            self.send_back(&ledger_topic, &to_send).await?;
        }
        answer.redriven = to_send
            .iter()
            .map(|(s, t, count)| s.item(Some(t), count - 1, None))
            .collect();
        Ok(answer)
    }

    /// Sends each dead letter into its target, in three durable steps: the ledger's
    /// `sending` entries (with where each target partition ends now: the record lands at
    /// or after it), the records, the `sent` entries.
    async fn send_back(
        &self,
        ledger_topic: &str,
        to_send: &[(&Stored, Target, u32)],
    ) -> Result<(), RedriveError> {
        if to_send.is_empty() {
            return Ok(());
        }
        let mut ends: HashMap<(&str, u32), Offset> = HashMap::new();
        for (_, target, _) in to_send {
            let key = (target.topic.as_str(), target.partition);
            if let std::collections::hash_map::Entry::Vacant(vacant) = ends.entry(key) {
                let tp = TopicPartition::new(target.topic.as_str(), target.partition);
                let end = self
                    .io
                    .log
                    .end_offset(&tp)
                    .await
                    .map_err(log_error("reading the end of", &target.topic))?;
                vacant.insert(end);
            }
        }
        let now = wellspring_log::Clock::now_ms(&wellspring_log::SystemClock);
        let sending: Vec<LedgerEntry> = to_send
            .iter()
            .map(|(letter, target, count)| LedgerEntry {
                dead_letter: letter.entry.id.clone(),
                state: LedgerState::Sending,
                topic: target.topic.clone(),
                partition: target.partition,
                from_offset: ends[&(target.topic.as_str(), target.partition)],
                offset: None,
                count: *count,
                at_ms: now,
            })
            .collect();
        let entries = |list: &[LedgerEntry]| -> Vec<ProducerRecord> {
            list.iter()
                .map(|e| ledger::record(ledger_topic, e))
                .collect()
        };
        self.send(entries(&sending), "recording redrives in", ledger_topic)
            .await?;
        let records = to_send
            .iter()
            .map(|(letter, target, _)| target::record(target, &letter.kept(), &letter.entry.id))
            .collect();
        let offsets = self
            .send(records, "redriving into", "the stages' inputs")
            .await?;
        let sent: Vec<LedgerEntry> = sending
            .into_iter()
            .zip(&offsets)
            .map(|(entry, (_, offset))| LedgerEntry {
                state: LedgerState::Sent,
                offset: Some(*offset),
                ..entry
            })
            .collect();
        self.send(entries(&sent), "recording redrives in", ledger_topic)
            .await?;
        Ok(())
    }
}
