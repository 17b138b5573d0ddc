//! Tracing of the engine's messages with OpenTelemetry.
//!
//! Off unless the node turns it on ([`enable`], after installing a tracer provider):
//! every hook here first reads one atomic flag, so an engine without tracing builds no
//! span, attribute or link (the aggregation benchmark shows no difference). When on:
//!
//! - a source shard starts a span per input record (`wellspring.source`), a child of the
//!   record's W3C `traceparent` header when it has one;
//! - a grouping shard starts a span per record it aggregates (`wellspring.group`), a
//!   child of the record's span, and remembers its context under the aggregate's key; the
//!   aggregate it completes gets a span (`wellspring.aggregate`) linked to every record
//!   that made it (a site to its channel images, a well to its sites, ...), and that span
//!   travels on with the aggregate, so a plate's trace reaches back to every image;
//! - an HTTP task starts a client span per attempt (`wellspring.http`) and sends it as the
//!   request's `traceparent`.
//!
//! The context travels in the envelope (`Envelope::trace`), in log record headers and in
//! HTTP headers, as W3C trace context. OpenTelemetry's [`TraceContextPropagator`] reads
//! and writes it; the carriers here adapt it to the envelope's [`TraceContext`], to log
//! records and to HTTP requests.

use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{Link, Span as _, SpanContext, SpanKind, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue, global};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use wellspring_log::LogRecord;
use wellspring_protocol::{Envelope, TraceContext};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns span creation on or off (the node does, once its tracer provider is set).
pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::Release);
}

#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The fields of an envelope's trace context, as the propagator reads them.
struct TraceFields<'a>(&'a TraceContext);

impl Extractor for TraceFields<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => Some(&self.0.traceparent),
            "tracestate" => self.0.tracestate.as_deref(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        let mut keys = vec!["traceparent"];
        if self.0.tracestate.is_some() {
            keys.push("tracestate");
        }
        keys
    }
}

/// An envelope's trace context, as the propagator writes it.
#[derive(Default)]
struct TraceBuilder {
    traceparent: Option<String>,
    tracestate: Option<String>,
}

impl Injector for TraceBuilder {
    fn set(&mut self, key: &str, value: String) {
        match key {
            "traceparent" => self.traceparent = Some(value),
            "tracestate" if !value.is_empty() => self.tracestate = Some(value),
            _ => {}
        }
    }
}

/// A log record's headers, as the propagator reads them.
struct RecordFields<'a>(&'a LogRecord);

impl Extractor for RecordFields<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        std::str::from_utf8(self.0.header(key)?).ok()
    }

    fn keys(&self) -> Vec<&str> {
        self.0.headers.iter().map(|(k, _)| k.as_str()).collect()
    }
}

/// The headers of a record to write, as the propagator writes them.
pub struct RecordHeaders<'a>(pub &'a mut Vec<(String, Bytes)>);

impl Injector for RecordHeaders<'_> {
    fn set(&mut self, key: &str, value: String) {
        if !value.is_empty() {
            self.0.push((key.to_owned(), Bytes::from(value)));
        }
    }
}

/// The headers of an HTTP request, as the propagator writes them.
pub struct HttpHeaders<'a>(pub &'a mut Vec<(String, String)>);

impl Injector for HttpHeaders<'_> {
    fn set(&mut self, key: &str, value: String) {
        if !value.is_empty() {
            self.0.push((key.to_owned(), value));
        }
    }
}

/// The valid span context `extractor` carries, if any.
fn extract(extractor: &dyn Extractor) -> Option<SpanContext> {
    let context = TraceContextPropagator::new().extract(extractor);
    let span = context.span().span_context().clone();
    span.is_valid().then_some(span)
}

/// The span context a W3C trace context names, if it is well-formed.
pub fn span_context(trace: &TraceContext) -> Option<SpanContext> {
    extract(&TraceFields(trace))
}

/// The W3C trace context naming `span` (none for an invalid span).
pub fn trace_context(span: &SpanContext) -> Option<TraceContext> {
    let mut builder = TraceBuilder::default();
    let context = Context::new().with_remote_span_context(span.clone());
    TraceContextPropagator::new().inject_context(&context, &mut builder);
    Some(TraceContext {
        traceparent: builder.traceparent?,
        tracestate: builder.tracestate,
    })
}

/// The trace context a log record's headers carry, if they carry a well-formed one.
pub fn record_trace(record: &LogRecord) -> Option<TraceContext> {
    // Most records carry none: no propagator for them.
    record.header("traceparent")?;
    trace_context(&extract(&RecordFields(record))?)
}

/// Writes `trace` as W3C headers through `injector` (nothing if it is not well-formed).
pub fn inject(trace: &TraceContext, injector: &mut dyn Injector) {
    if let Some(span) = span_context(trace) {
        let context = Context::new().with_remote_span_context(span);
        TraceContextPropagator::new().inject_context(&context, injector);
    }
}

/// A span being recorded; it ends when dropped.
pub struct Span(global::BoxedSpan);

impl Span {
    pub fn context(&self) -> SpanContext {
        self.0.span_context().clone()
    }

    /// This span as the W3C context to pass on (none if it is not sampled and carries
    /// nothing worth passing).
    pub fn trace(&self) -> Option<TraceContext> {
        trace_context(&self.context())
    }

    pub fn set(&mut self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        self.0.set_attribute(KeyValue::new(key, value));
    }

    pub fn error(&mut self, message: impl Into<String>) {
        self.0
            .set_status(opentelemetry::trace::Status::error(message.into()));
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// What a span is about: the actor handling the message and the message itself.
pub struct About<'a> {
    pub actor: &'static str,
    pub dag: &'a str,
    pub node: &'a str,
    pub key: &'a str,
    pub attempt: u32,
}

impl<'a> About<'a> {
    /// `actor` handling `envelope` for node `dag/node`.
    pub fn envelope(
        actor: &'static str,
        dag: &'a str,
        node: &'a str,
        envelope: &'a Envelope,
    ) -> Self {
        Self {
            actor,
            dag,
            node,
            key: &envelope.key,
            attempt: envelope.attempt,
        }
    }
}

/// Starts a span (only call when [`enabled`]): a child of `parent` if given, linked to
/// `links`.
pub fn start(
    name: &'static str,
    kind: SpanKind,
    about: About<'_>,
    parent: Option<&TraceContext>,
    links: Vec<SpanContext>,
) -> Span {
    let tracer = global::tracer("wellspring");
    let parent_context = match parent.and_then(span_context) {
        Some(remote) => Context::new().with_remote_span_context(remote),
        None => Context::new(),
    };
    let span = tracer
        .span_builder(name)
        .with_kind(kind)
        .with_attributes([
            KeyValue::new("wellspring.actor", about.actor),
            KeyValue::new("wellspring.dag", about.dag.to_owned()),
            KeyValue::new("wellspring.node", about.node.to_owned()),
            KeyValue::new("wellspring.key", about.key.to_owned()),
            KeyValue::new("wellspring.attempt", i64::from(about.attempt)),
        ])
        .with_links(links.into_iter().map(Link::with_context).collect())
        .start_with_context(&tracer, &parent_context);
    Span(span)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(traceparent: &str, tracestate: Option<&str>) -> TraceContext {
        TraceContext {
            traceparent: traceparent.into(),
            tracestate: tracestate.map(str::to_owned),
        }
    }

    #[test]
    fn traceparent_round_trips_and_nonsense_is_refused() {
        let good = trace(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            Some("vendor=x"),
        );
        let cx = span_context(&good).expect("well-formed");
        assert!(cx.is_remote() && cx.is_sampled());
        assert_eq!(trace_context(&cx), Some(good));
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-xyz-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(span_context(&trace(bad, None)).is_none(), "{bad}");
        }
    }

    #[test]
    fn a_records_headers_carry_the_trace_both_ways() {
        let sent = trace(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            Some("vendor=x"),
        );
        let mut headers = vec![("wellspring-id".to_owned(), Bytes::from("id"))];
        inject(&sent, &mut RecordHeaders(&mut headers));
        let record = LogRecord {
            topic: "t".into(),
            partition: 0,
            offset: 0,
            key: None,
            value: None,
            headers: std::sync::Arc::new(headers.clone()),
            timestamp_ms: 0,
        };
        assert_eq!(record_trace(&record), Some(sent));

        // No state: no empty `tracestate` header. A malformed parent: no trace at all.
        let mut http = Vec::new();
        let bare = trace(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            None,
        );
        inject(&bare, &mut HttpHeaders(&mut http));
        assert_eq!(http, vec![("traceparent".to_owned(), bare.traceparent)]);
        let mut none = Vec::new();
        inject(&trace("00-nonsense", None), &mut HttpHeaders(&mut none));
        assert!(none.is_empty());
        let malformed = LogRecord {
            headers: std::sync::Arc::new(vec![(
                "traceparent".to_owned(),
                Bytes::from("00-nonsense"),
            )]),
            ..record
        };
        assert_eq!(record_trace(&malformed), None);
    }
}
