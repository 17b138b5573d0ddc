//! Grouping shards: a stream-operation function over one partition of its input topic.
//!
//! Before it processes, a shard restores its function's state from its partition of the
//! changelog topic (only that partition). With every batch it writes the state that
//! changed back to the changelog, in the same commit as the outputs and the input
//! offsets, so after a crash the restored state matches the committed input exactly.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use async_trait::async_trait;
use bytes::Bytes;
use opentelemetry::trace::{SpanContext, SpanKind};
use tokio::sync::Notify;
use tokio::time::Instant;
use wellspring_log::{
    Clock, ConsumerConfig, Log, LogRecord, NoListener, ProducerRecord, TopicPartition,
};
use wellspring_protocol::{Envelope, ExperimentId, MessageId, Origin, TraceContext, Value, wire};

use super::shard::{RecordProcessor, SyncShard};
use super::{ShardFactory, ShardRequest};
use crate::functions::{
    FunctionContext, FunctionDef, FunctionOutput, FunctionParams, StreamFunction,
};
use crate::metadata::{LayoutArrived, MetadataTable, Snapshot};
use crate::metrics::{Counter, Gauge};
use crate::routing::{DeadLetterWriter, IncompleteWriter, Router};
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
    pub router: Arc<Router>,
    pub dead: DeadLetterWriter,
    pub incomplete: IncompleteWriter,
    pub records_in: Counter,
    pub records_out: Counter,
    pub duplicates: Counter,
    pub panics: Counter,
    pub open: Gauge,
    pub mailbox: usize,
}

/// A changelog restore that makes no progress for this long fails (and is retried).
const RESTORE_STALL: Duration = Duration::from_secs(30);

impl GroupingFactory {
    async fn restore(
        &self,
        partition: u32,
        function: &mut dyn StreamFunction,
    ) -> Result<u64, String> {
        let changelog = TopicPartition::new(self.changelog_topic.clone(), partition);
        let end = self
            .log
            .end_offset(&changelog)
            .await
            .map_err(|e| format!("reading the end of {changelog}: {e}"))?;
        if end == 0 {
            return Ok(0);
        }
        let mut consumer = self
            .log
            .consumer(ConsumerConfig::assign(
                format!("restore-{}-{partition}", self.node),
                vec![(changelog.clone(), Some(0))],
            ))
            .map_err(|e| e.to_string())?;
        let mut applied = 0u64;
        let mut last_progress = Instant::now();
        loop {
            let records = consumer
                .poll(&mut NoListener, 10_000, Duration::from_millis(200))
                .await
                .map_err(|e| format!("reading {changelog}: {e}"))?;
            for record in &records {
                let key =
                    String::from_utf8_lossy(record.key.as_deref().unwrap_or_default()).into_owned();
                if let Err(e) = function.restore(&key, record.value.as_deref()) {
                    tracing::warn!(changelog = %changelog, offset = record.offset, "skipping an unreadable changelog entry: {e}");
                }
                applied += 1;
            }
            // Read to the end of what is committed (offsets alone cannot tell: Kafka's
            // transaction markers take offsets no record is delivered for).
            if consumer.caught_up(&changelog) {
                return Ok(applied);
            }
            if records.is_empty() && last_progress.elapsed() > RESTORE_STALL {
                return Err(format!(
                    "restoring from {changelog} stalled before offset {end}"
                ));
            }
            if !records.is_empty() {
                last_progress = Instant::now();
            }
        }
    }
}

#[async_trait(?Send)]
impl ShardFactory for GroupingFactory {
    async fn start(
        &self,
        partition: &TopicPartition,
        waker: Arc<Notify>,
    ) -> Result<Recipient<ShardRequest>, String> {
        let started = Instant::now();
        let mut function = (self.function.create)(&self.params);
        let entries = self.restore(partition.partition, function.as_mut()).await?;
        let mut processor = GroupingProcessor {
            dag: self.dag.clone(),
            node: self.node.clone(),
            changelog: TopicPartition::new(self.changelog_topic.clone(), partition.partition),
            function,
            table: self.table.clone(),
            clock: self.clock.clone(),
            router: self.router.clone(),
            dead: self.dead.clone(),
            incomplete: self.incomplete.clone(),
            records_in: self.records_in.clone(),
            records_out: self.records_out.clone(),
            duplicates: self.duplicates.clone(),
            open: self.open.clone(),
            open_reported: 0,
            scratch: Vec::new(),
            links: HashMap::new(),
            current: None,
        };
        let mut initial = Vec::new();
        processor.with_function(None, &mut initial, |f, ctx| f.restored(ctx));
        if entries > 0 {
            tracing::info!(
                shard = %format!("{}/{}/{partition}", self.dag, self.node),
                entries,
                open = processor.function.open_count(),
                took = ?started.elapsed(),
                "restored from the changelog"
            );
        }
        let name = format!("{}/{}/{partition}", self.dag, self.node);
        let addr = SyncShard::new(
            name,
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
}

pub struct GroupingProcessor {
    dag: Arc<str>,
    node: Arc<str>,
    changelog: TopicPartition,
    function: Box<dyn StreamFunction>,
    table: MetadataTable,
    clock: Arc<dyn Clock>,
    router: Arc<Router>,
    dead: DeadLetterWriter,
    incomplete: IncompleteWriter,
    records_in: Counter,
    records_out: Counter,
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

/// Links kept per aggregate: a well has 4 sites and a plate 308 wells; beyond this many
/// (duplicates), the rest are dropped rather than let one key grow without bound.
const MAX_LINKS: usize = 1024;
/// Keys with links kept: late duplicates of closed aggregates leave entries nothing
/// removes; past this many, they are all dropped (traces lose links, memory stays bounded).
const MAX_LINKED_KEYS: usize = 200_000;

impl GroupingProcessor {
    /// Runs `f` on the function with a fresh context, then writes what it produced.
    fn with_function(
        &mut self,
        origin: Option<&Origin>,
        out: &mut Vec<ProducerRecord>,
        f: impl FnOnce(&mut dyn StreamFunction, &mut FunctionContext<'_>),
    ) {
        let layouts = Snapshot(self.table.snapshot());
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut ctx = FunctionContext {
            layouts: &layouts,
            now_ms: self.clock.now_ms(),
            out: &mut scratch,
            duplicates: 0,
        };
        f(self.function.as_mut(), &mut ctx);
        self.duplicates.add(ctx.duplicates);
        for output in scratch.drain(..) {
            self.write(output, origin, out);
        }
        self.scratch = scratch;
    }

    fn write(
        &mut self,
        output: FunctionOutput,
        origin: Option<&Origin>,
        out: &mut Vec<ProducerRecord>,
    ) {
        match output {
            FunctionOutput::Emit { key, value } => {
                let mut envelope =
                    Envelope::new(MessageId::derive(&self.dag, &self.node, &key), key, value);
                // The aggregate's span, linked to everything that made it; it travels on.
                let _span = telemetry::enabled().then(|| {
                    let links = self.links.remove(&envelope.key).unwrap_or_default();
                    let span = telemetry::start(
                        "wellspring.aggregate",
                        SpanKind::Internal,
                        telemetry::About {
                            actor: "grouping shard",
                            dag: &self.dag,
                            node: &self.node,
                            key: &envelope.key,
                            attempt: envelope.attempt,
                        },
                        self.current.as_ref(),
                        links,
                    );
                    envelope.trace = span.trace();
                    span
                });
                match self.router.route(&envelope, out) {
                    Ok(()) => self.records_out.inc(),
                    Err(reason) => {
                        let Envelope { key, payload, .. } = envelope;
                        out.push(
                            self.dead
                                .record(reason, origin.cloned(), Some(key), payload, 0),
                        );
                    }
                }
            }
            FunctionOutput::Incomplete(record) => {
                self.links.remove(&record.key);
                out.push(self.incomplete.record(&record))
            }
            FunctionOutput::Reject { key, reason } => {
                out.push(
                    self.dead
                        .record(reason, origin.cloned(), Some(key), Value::Null, 0),
                );
            }
        }
    }
}

impl RecordProcessor for GroupingProcessor {
    fn process(&mut self, record: &LogRecord, out: &mut Vec<ProducerRecord>) {
        self.records_in.inc();
        let here = Origin {
            topic: record.topic.to_string(),
            partition: record.partition,
            offset: record.offset,
        };
        let envelope: Envelope = match record.value.as_deref().map(wire::decode) {
            Some(Ok(envelope)) => envelope,
            Some(Err(e)) => {
                out.push(self.dead.unreadable(
                    format!("unreadable internal record: {e}"),
                    here,
                    record.key.as_deref(),
                    None,
                ));
                return;
            }
            None => {
                out.push(self.dead.unreadable(
                    "the record has no value".into(),
                    here,
                    record.key.as_deref(),
                    None,
                ));
                return;
            }
        };
        // Dead letters name where the record first entered the engine.
        let origin = envelope.origin.clone().unwrap_or(here);
        let _span = telemetry::enabled().then(|| {
            let span = telemetry::start(
                "wellspring.group",
                SpanKind::Consumer,
                telemetry::About {
                    actor: "grouping shard",
                    dag: &self.dag,
                    node: &self.node,
                    key: &envelope.key,
                    attempt: envelope.attempt,
                },
                envelope.trace.as_ref(),
                Vec::new(),
            );
            if self.links.len() >= MAX_LINKED_KEYS && !self.links.contains_key(&envelope.key) {
                self.links.clear();
            }
            let links = self.links.entry(envelope.key.clone()).or_default();
            if links.len() < MAX_LINKS {
                links.push(span.context());
            }
            self.current = span.trace();
            span
        });
        let mut rejected = None;
        self.with_function(Some(&origin), out, |f, ctx| {
            if let Err(reason) = f.process(&envelope.key, &envelope.payload, ctx) {
                rejected = Some(reason);
            }
        });
        self.current = None;
        if let Some(reason) = rejected {
            out.push(self.dead.record(
                reason,
                Some(origin),
                Some(envelope.key),
                envelope.payload,
                0,
            ));
        }
    }

    fn drain(&mut self, out: &mut Vec<ProducerRecord>) {
        self.with_function(None, out, |f, ctx| f.tick(ctx));
        for (key, state) in self.function.take_changes() {
            out.push(ProducerRecord {
                topic: self.changelog.topic.clone(),
                partition: Some(self.changelog.partition),
                key: Some(Bytes::from(key)),
                value: state.map(Bytes::from),
                headers: Vec::new(),
            });
        }
        let open = self.function.open_count() as i64;
        self.open.add(open - self.open_reported);
        self.open_reported = open;
    }

    fn layout_arrived(&mut self, experiment: &ExperimentId, out: &mut Vec<ProducerRecord>) {
        self.with_function(None, out, |f, ctx| f.layout_arrived(experiment, ctx));
    }
}
