//! Tracing of the engine's messages, with an in-memory exporter: a site's span links to
//! the spans of its six channel images, and the HTTP call's span is what the microservice
//! on loopback receives as its `traceparent`.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;

use common::{Answer, Harness, ScriptedServer};
use opentelemetry::trace::SpanKind;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use wellspring_actors::telemetry;
use wellspring_protocol::synthetic;

const DAG: &str = r#"
name: traced
settings: {partitions: 2}
variables: {svc: "http://127.0.0.1:1"}
topics:
  images: {value-schema: channel_level, partitions: 2}
  metadata: {value-schema: experiment_metadata, partitions: 1}
  features: {value-schema: json}
tasks:
  site-features:
    url: "${svc}/v1/sites/{experiment_id}/{plate_number}/{well}/{site}/features"
    input-schema: site_level
    retries: 0
graph:
  images: {type: topic-stream, topic-name: images}
  metadata: {type: topic-table, topic-name: metadata}
  site: {type: stream-operation, inputs: [images, metadata], function: aggregations/images-site-grouping}
  features: {type: external-task, stream: site, task-name: site-features}
  out: {type: publish, stream: features, topic-name: features}
"#;

fn named<'a>(spans: &'a [SpanData], name: &str) -> Vec<&'a SpanData> {
    spans.iter().filter(|s| s.name == name).collect()
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

#[actix_rt::test]
async fn a_sites_span_links_its_six_channel_images_and_the_service_gets_the_calls_span() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    telemetry::enable(true);

    let service = ScriptedServer::start(|_| Answer::ok(r#"{"cells": 12}"#));
    let h = Harness::start(DAG, &[("svc", service.url.clone())]).await;
    // One plate, one well, one site, six channels.
    let layout = synthetic::layout("EXP-T", 1, 1, 1, 6).unwrap();
    h.publish_layout("metadata", &layout).await;
    h.publish_images("images", &synthetic::images(&layout, "HUVEC"))
        .await;
    h.wait_until("the site's features", |h| h.count("features") == 1)
        .await;
    h.stop().await;
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();

    // Six channel images came in, each with its span, each grouped under the site.
    let sources = named(&spans, "wellspring.source");
    assert_eq!(
        sources.len(),
        6,
        "{:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    let groups = named(&spans, "wellspring.group");
    assert_eq!(groups.len(), 6);
    for group in &groups {
        assert!(
            sources
                .iter()
                .any(|s| s.span_context.span_id() == group.parent_span_id
                    && s.span_context.trace_id() == group.span_context.trace_id()),
            "a grouping span is the child of its image's span"
        );
    }
    // The site's span is linked to all six, by their contexts.
    let sites = named(&spans, "wellspring.aggregate");
    assert_eq!(sites.len(), 1);
    let site = sites[0];
    let linked: BTreeSet<_> = site
        .links
        .iter()
        .map(|l| l.span_context.span_id().to_string())
        .collect();
    let grouped: BTreeSet<_> = groups
        .iter()
        .map(|g| g.span_context.span_id().to_string())
        .collect();
    assert_eq!(linked, grouped);
    assert_eq!(
        attribute(site, "wellspring.key").as_deref(),
        Some("EXP-T/1/B02/1")
    );
    assert_eq!(attribute(site, "wellspring.node").as_deref(), Some("site"));

    // The HTTP call is the site's child, and the service received exactly that span.
    let calls = named(&spans, "wellspring.http");
    assert_eq!(calls.len(), 1);
    let call = calls[0];
    assert_eq!(call.span_kind, SpanKind::Client);
    assert_eq!(call.span_context.trace_id(), site.span_context.trace_id());
    assert_eq!(call.parent_span_id, site.span_context.span_id());
    assert_eq!(
        attribute(call, "http.response.status_code").as_deref(),
        Some("200")
    );
    let received = service.seen.lock()[0]
        .traceparent
        .clone()
        .expect("a traceparent");
    assert_eq!(
        received,
        format!(
            "00-{}-{}-01",
            call.span_context.trace_id(),
            call.span_context.span_id()
        )
    );
    telemetry::enable(false);
}

#[actix_rt::test]
async fn with_tracing_off_nothing_is_recorded_and_no_traceparent_is_made_up() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    telemetry::enable(false);
    let service = ScriptedServer::start(|_| Answer::ok("{}"));
    let h = Harness::start(DAG, &[("svc", service.url.clone())]).await;
    let layout = synthetic::layout("EXP-U", 1, 1, 1, 6).unwrap();
    h.publish_layout("metadata", &layout).await;
    h.publish_images("images", &synthetic::images(&layout, "HUVEC"))
        .await;
    h.wait_until("the site's features", |h| h.count("features") == 1)
        .await;
    h.stop().await;
    provider.force_flush().unwrap();
    assert!(exporter.get_finished_spans().unwrap().is_empty());
    assert_eq!(service.seen.lock()[0].traceparent, None);
}
