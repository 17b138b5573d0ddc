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
//! HTTP headers, as W3C trace context.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::{
    Link, Span as _, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer,
};
use opentelemetry::{Context, KeyValue, global};
use wellspring_protocol::TraceContext;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns span creation on or off (the node does, once its tracer provider is set).
pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::Release);
}

#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The span context a W3C `traceparent` names (`00-TRACEID-SPANID-FLAGS`).
pub fn span_context(trace: &TraceContext) -> Option<SpanContext> {
    let mut parts = trace.traceparent.split('-');
    let (version, trace_id, span_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || trace_id.len() != 32 || span_id.len() != 16 || flags.len() != 2 {
        return None;
    }
    let trace_id = TraceId::from_hex(trace_id).ok()?;
    let span_id = SpanId::from_hex(span_id).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let state = trace
        .tracestate
        .as_deref()
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    Some(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags),
        true,
        state,
    ))
}

/// The W3C trace context naming `span`.
pub fn trace_context(span: &SpanContext) -> TraceContext {
    let state = span.trace_state().header();
    TraceContext {
        traceparent: format!(
            "00-{}-{}-{:02x}",
            span.trace_id(),
            span.span_id(),
            span.trace_flags().to_u8()
        ),
        tracestate: (!state.is_empty()).then_some(state),
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
        let cx = self.context();
        cx.is_valid().then(|| trace_context(&cx))
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

    #[test]
    fn traceparent_round_trips_and_nonsense_is_refused() {
        let trace = TraceContext {
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            tracestate: Some("vendor=x".into()),
        };
        let cx = span_context(&trace).expect("well-formed");
        assert!(cx.is_remote() && cx.is_sampled());
        assert_eq!(trace_context(&cx), trace);
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-xyz-00f067aa0ba902b7-01",
        ] {
            let t = TraceContext {
                traceparent: bad.into(),
                tracestate: None,
            };
            assert!(span_context(&t).is_none(), "{bad}");
        }
    }
}
