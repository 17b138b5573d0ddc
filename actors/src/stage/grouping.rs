//! Grouping shards: a stream-operation function over one partition of its input topic.
//!
//! Before it processes, a shard restores its function's state from its partition of the
//! changelog topic (only that partition). With every batch it writes the state that
//! changed back to the changelog, in the same commit as the outputs and the input
//! offsets, so after a crash the restored state matches the committed input exactly.
//! A re-run's records are grouped apart, by a function of their generation's
//! ([`Generations`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use async_trait::async_trait;
use bytes::Bytes;
use opentelemetry::trace::{SpanContext, SpanKind};
use tokio::sync::Notify;
use tokio::time::Instant;
use wellspring_log::{Clock, Log, LogRecord, ProducerRecord, TopicPartition};
use wellspring_protocol::rerun::RerunScope;
use wellspring_protocol::{Envelope, ExperimentId, MessageId, Origin, TraceContext, Value};

use super::generations::Generations;
use super::restore::restore_from;
use super::shard::{Halt, RecordProcessor, RetryLater, SyncShard};
use super::standby::Standbys;
use super::{ShardFactory, ShardRequest, StartError};
use crate::functions::{
    FunctionContext, FunctionDef, FunctionError, FunctionOutput, FunctionParams, StreamFunction,
};
use crate::metadata::{LayoutArrived, MetadataTable, Snapshot};
use crate::metrics::{Counter, Gauge};
use crate::routing::{
    Downstream, IncompleteWriter, NewerRecord, Undecodable, decode_envelope, origin_of,
};
use crate::telemetry;

/// Starts grouping shards of one stream-operation node.
pub struct GroupingFactory {
    pub dag: Arc<str>,
    pub node: Arc<str>,
    pub function: FunctionDef,
    pub params: FunctionParams,
    pub changelog_topic: Arc<str>,
    pub log: Arc<dyn Log>,
    pub table: MetadataTable,
    pub clock: Arc<dyn Clock>,
    pub downstream: Downstream,
    pub incomplete: IncompleteWriter,
    pub records_in: Counter,
    pub duplicates: Counter,
    pub panics: Counter,
    pub open: Gauge,
    pub mailbox: usize,
    /// Warm copies of the shards this node does not own (`--standby-replicas`).
    pub standbys: Option<Standbys>,
}

#[async_trait(?Send)]
impl ShardFactory for GroupingFactory {
    async fn start(
        &self,
        partition: &TopicPartition,
        waker: Arc<Notify>,
    ) -> Result<Recipient<ShardRequest>, StartError> {
        let started = Instant::now();
        // From a warm copy and the entries written since, or from the whole changelog.
        let warm = self
            .standbys
            .as_ref()
            .and_then(|standbys| standbys.take(partition.partition));
        let from_standby = warm.is_some();
        let (mut functions, from) = warm.unwrap_or_else(|| {
            (
                Generations::new(self.function.create.clone(), self.params),
                0,
            )
        });
        let changelog = TopicPartition::new(self.changelog_topic.clone(), partition.partition);
        let mut newer = None;
        let restored = restore_from(
            self.log.as_ref(),
            &changelog,
            from,
            format!("restore-{}-{}", self.node, partition.partition),
            |record| {
                let key =
                    String::from_utf8_lossy(record.key.as_deref().unwrap_or_default()).into_owned();
                if let Err(e) = functions.restore(&key, record.value.as_deref()) {
                    // A newer node's state is not this node's to skip: skipped, the
                    // aggregate would be lost or emitted twice.
                    match e.wire().and_then(|w| NewerRecord::of(record, w)) {
                        Some(found) => {
                            newer.get_or_insert(found);
                        }
                        None => {
                            tracing::warn!(changelog = %changelog, offset = record.offset, "skipping an unreadable changelog entry: {e}")
                        }
                    }
                }
            },
        )
        .await?;
        if let Some(newer) = newer {
            return Err(StartError::Newer(newer));
        }
        let mut processor = GroupingProcessor {
            dag: self.dag.clone(),
            node: self.node.clone(),
            changelog,
            functions,
            retry: None,
            table: self.table.clone(),
            clock: self.clock.clone(),
            downstream: self.downstream.clone(),
            incomplete: self.incomplete.clone(),
            records_in: self.records_in.clone(),
            duplicates: self.duplicates.clone(),
            open: self.open.clone(),
            open_reported: 0,
            scratch: Vec::new(),
            links: HashMap::new(),
            current: None,
        };
        let mut initial = Vec::new();
        for generation in processor.functions.all() {
            processor.with_function(generation, None, &mut initial, |f, ctx| f.restored(ctx));
        }
        if restored.records > 0 || from_standby {
            tracing::info!(
                shard = %format!("{}/{}/{partition}", self.dag, self.node),
                from_standby,
                standby_at = from,
                entries = restored.records,
                open = processor.functions.open_count(),
                took = ?started.elapsed(),
                "restored from the changelog"
            );
        }
        let name = format!("{}/{}/{partition}", self.dag, self.node);
        let addr = SyncShard::new(
            name,
            partition.clone(),
            processor,
            initial,
            waker,
            self.panics.clone(),
            self.mailbox,
        )
        .start();
        self.table
            .subscribe(addr.clone().recipient::<LayoutArrived>());
        Ok(addr.recipient())
    }

    fn released(&self, partition: &TopicPartition) {
        if let Some(standbys) = &self.standbys {
            standbys.release(partition.partition);
        }
    }
}

pub struct GroupingProcessor {
    dag: Arc<str>,
    node: Arc<str>,
    changelog: TopicPartition,
    /// The first run's function and the re-runs'.
    functions: Generations,
    /// Set when an output of the record being processed could not be routed now, but
    /// could later: the record is read again.
    retry: Option<RetryLater>,
    table: MetadataTable,
    clock: Arc<dyn Clock>,
    downstream: Downstream,
    incomplete: IncompleteWriter,
    records_in: Counter,
    duplicates: Counter,
    open: Gauge,
    /// This shard's share of the open-aggregates gauge.
    open_reported: i64,
    scratch: Vec<FunctionOutput>,
    /// With tracing on: the spans of the records each open aggregate has taken in, by
    /// the aggregate's key (its fan-in links once it completes).
    links: HashMap<String, Vec<SpanContext>>,
    /// With tracing on: the span of the record being processed (the parent of an
    /// aggregate it completes).
    current: Option<TraceContext>,
}

/// Where the links of an aggregate are kept: by its key, and a re-run's apart.
fn links_key(generation: u32, key: &str) -> String {
    if generation == 0 {
        key.to_owned()
    } else {
        format!("#{generation}/{key}")
    }
}

/// What a grouping's spans name as their actor.
const ACTOR: &str = "grouping shard";

/// Links kept per aggregate: a well has 4 sites and a plate 308 wells; beyond this many
/// (duplicates), the rest are dropped rather than let one key grow without bound.
const MAX_LINKS: usize = 1024;
/// Keys with links kept: late duplicates of closed aggregates leave entries nothing
/// removes; past this many, they are all dropped (traces lose links, memory stays bounded).
const MAX_LINKED_KEYS: usize = 200_000;

impl GroupingProcessor {
    /// Runs `f` on the function of `generation` with a fresh context, then writes what
    /// it produced.
    fn with_function(
        &mut self,
        generation: u32,
        origin: Option<&Origin>,
        out: &mut Vec<ProducerRecord>,
        f: impl FnOnce(&mut dyn StreamFunction, &mut FunctionContext<'_>),
    ) {
        let Some(function) = self.functions.function(generation) else {
            return;
        };
        let layouts = Snapshot(self.table.snapshot());
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut ctx = FunctionContext {
            layouts: &layouts,
            now_ms: self.clock.now_ms(),
            out: &mut scratch,
            duplicates: 0,
        };
        f(function, &mut ctx);
        self.duplicates.add(ctx.duplicates);
        let scope = self.functions.scope(generation).cloned();
        for output in scratch.drain(..) {
            self.write(output, scope.as_ref(), origin, out);
        }
        self.scratch = scratch;
    }

    /// Runs `f` on every generation's function.
    fn with_every_function(
        &mut self,
        out: &mut Vec<ProducerRecord>,
        f: impl Fn(&mut dyn StreamFunction, &mut FunctionContext<'_>),
    ) {
        for generation in self.functions.all() {
            self.with_function(generation, None, out, &f);
        }
    }

    fn write(
        &mut self,
        output: FunctionOutput,
        scope: Option<&RerunScope>,
        origin: Option<&Origin>,
        out: &mut Vec<ProducerRecord>,
    ) {
        match output {
            FunctionOutput::Emit { key, value } => {
                let generation = scope.map_or(0, |s| s.generation);
                let id = MessageId::derive(&self.dag, &self.node, &key).in_generation(generation);
                let mut envelope = Envelope::new(id, key, value);
                if let Some(scope) = scope {
                    scope.mark(&mut envelope);
                }
                // The aggregate's span, linked to everything that made it; it travels on.
                let _span = telemetry::enabled().then(|| {
                    let links = self
                        .links
                        .remove(&links_key(generation, &envelope.key))
                        .unwrap_or_default();
                    let span = telemetry::start(
                        "wellspring.aggregate",
                        SpanKind::Internal,
                        telemetry::About::envelope(ACTOR, &self.dag, &self.node, &envelope),
                        self.current.as_ref(),
                        links,
                    );
                    envelope.trace = span.trace();
                    span
                });
                if let Err(e) = self.downstream.send(envelope, origin.cloned(), 0, out) {
                    self.retry.get_or_insert(RetryLater(e.to_string()));
                }
            }
            FunctionOutput::Incomplete(record) => {
                let generation = scope.map_or(0, |s| s.generation);
                self.links.remove(&links_key(generation, &record.key));
                out.push(self.incomplete.record(&record, generation))
            }
            FunctionOutput::Reject { key, reason } => {
                out.push(self.downstream.dead.record(
                    reason,
                    origin.cloned(),
                    Some(key),
                    Value::Null,
                    0,
                ));
            }
        }
    }
}

impl RecordProcessor for GroupingProcessor {
    fn process(&mut self, record: &LogRecord, out: &mut Vec<ProducerRecord>) -> Result<(), Halt> {
        self.records_in.inc();
        let envelope = match decode_envelope(record, &self.downstream.dead) {
            Ok(envelope) => envelope,
            Err(Undecodable::DeadLetter(letter)) => {
                out.push(letter);
                return Ok(());
            }
            Err(Undecodable::Newer(newer)) => return Err(newer.into()),
        };
        // Dead letters name where the record first entered the engine.
        let origin = envelope.origin.clone().unwrap_or_else(|| origin_of(record));
        // A re-run's record goes to its generation's function (made on its first).
        let generation = match RerunScope::of(&envelope) {
            Some(scope) => {
                self.functions.rerun(&scope);
                scope.generation
            }
            None => 0,
        };
        let _span = telemetry::enabled().then(|| {
            let span = telemetry::start(
                "wellspring.group",
                SpanKind::Consumer,
                telemetry::About::envelope(ACTOR, &self.dag, &self.node, &envelope),
                envelope.trace.as_ref(),
                Vec::new(),
            );
            let key = links_key(generation, &envelope.key);
            if self.links.len() >= MAX_LINKED_KEYS && !self.links.contains_key(&key) {
                self.links.clear();
            }
            let links = self.links.entry(key).or_default();
            if links.len() < MAX_LINKS {
                links.push(span.context());
            }
            self.current = span.trace();
            span
        });
        let mut refused = None;
        self.with_function(generation, Some(&origin), out, |f, ctx| {
            if let Err(e) = f.process(&envelope.key, &envelope.payload, ctx) {
                refused = Some(e);
            }
        });
        self.current = None;
        if let Some(retry) = self.retry.take() {
            return Err(retry.into());
        }
        match refused {
            None => Ok(()),
            Some(FunctionError::Unavailable(why)) => Err(RetryLater(why).into()),
            Some(rejected @ FunctionError::Rejected(_)) => {
                out.push(self.downstream.dead.record(
                    rejected.to_string(),
                    Some(origin),
                    Some(envelope.key),
                    envelope.payload,
                    0,
                ));
                Ok(())
            }
        }
    }

    fn drain(&mut self, out: &mut Vec<ProducerRecord>) -> Result<(), RetryLater> {
        self.with_every_function(out, |f, ctx| f.tick(ctx));
        // Also what a layout's arrival or the restore emitted since the last drain.
        if let Some(retry) = self.retry.take() {
            return Err(retry);
        }
        for (key, state) in self.functions.take_changes() {
            out.push(ProducerRecord {
                topic: self.changelog.topic.clone(),
                partition: Some(self.changelog.partition),
                key: Some(Bytes::from(key)),
                value: state.map(Bytes::from),
                headers: Vec::new(),
            });
        }
        let open = self.functions.open_count() as i64;
        self.open.add(open - self.open_reported);
        self.open_reported = open;
        Ok(())
    }

    fn layout_arrived(&mut self, experiment: &ExperimentId, out: &mut Vec<ProducerRecord>) {
        self.with_every_function(out, |f, ctx| f.layout_arrived(experiment, ctx));
    }

    fn due_in(&self) -> Option<Duration> {
        let due_ms = self.functions.due_ms()?;
        let wait_ms = due_ms.saturating_sub(self.clock.now_ms()).max(0);
        Some(Duration::from_millis(wait_ms as u64))
    }
}
