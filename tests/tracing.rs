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

/// Every span the engine makes from now on, kept in memory.
fn recording() -> (InMemorySpanExporter, SdkTracerProvider) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    (exporter, provider)
}

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
    let (exporter, provider) = recording();
    telemetry::enable(true);

    let service = ScriptedServer::start(|_| Answer::ok(r#"{"cells": 12}"#));
    let h = Harness::start(common::SITE_FEATURES_DAG, &[("svc", service.url.clone())]).await;
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
    let (exporter, provider) = recording();
    telemetry::enable(false);
    let service = ScriptedServer::start(|_| Answer::ok("{}"));
    let h = Harness::start(common::SITE_FEATURES_DAG, &[("svc", service.url.clone())]).await;
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

const QUEUE_DAG: &str = r#"
name: segmentation
variables: {}
settings: {partitions: 1}
topics:
  images: {value-schema: channel_level, partitions: 1}
  segments: {value-schema: json}
tasks:
  segment:
    type: queue
    group: segmentation
    cmd: ["segment.py", "{location}"]
    input-schema: channel_level
graph:
  images: {type: topic-stream, topic-name: images}
  segment: {type: external-task, stream: images, task-name: segment}
  out: {type: publish, stream: segment, topic-name: segments}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_tasks_worker_gets_the_trace_and_its_output_carries_it_on() {
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    use wellspring_log::{EmbeddedLog, Log, ProducerRecord, TopicPartition};

    let (exporter, provider) = recording();
    telemetry::enable(true);

    let registry = wellspring_actors::FunctionRegistry::with_builtins();
    let dag =
        wellspring_protocol::Dag::load(QUEUE_DAG, wellspring_protocol::SpecFormat::Yaml, &registry)
            .unwrap_or_else(|e| panic!("{e}"));
    let log = EmbeddedLog::new();
    let mut options = wellspring_nodes::run::RunOptions::new("127.0.0.1:0".parse().unwrap());
    options.dags = vec![dag];
    options.task_partitions = 1;
    let node =
        wellspring_nodes::run::start(options, Some(Arc::new(log.clone()) as Arc<dyn Log>)).unwrap();
    let layout = synthetic::layout("EXP-Q", 1, 1, 1, 1).unwrap();
    let image = &synthetic::images(&layout, "HUVEC")[0];
    log.producer()
        .unwrap()
        .send(vec![ProducerRecord::new(
            "images",
            Some(image.key.to_string().into()),
            Some(image.to_value().to_json_string().into()),
        )])
        .await
        .unwrap();

    // A worker claims the task and finds the trace context in it.
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let claim =
        serde_json::json!({"groups": ["segmentation"], "client-id": "w", "duration": 30000});
    let deadline = Instant::now() + Duration::from_secs(30);
    let task: serde_json::Value = loop {
        let answer = http
            .post(format!("{}/tasks/claim", node.url()))
            .header("content-type", "application/json")
            .body(claim.to_string())
            .send()
            .await
            .unwrap();
        if answer.status() == 200 {
            break serde_json::from_slice(&answer.bytes().await.unwrap()).unwrap();
        }
        assert!(Instant::now() < deadline, "no task to claim");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let handed = task["traceparent"]
        .as_str()
        .expect("the task carries its trace")
        .to_owned();
    let report = serde_json::json!({"client-id": "w", "id": task["id"], "version": task["version"], "output": {"cells": 3}});
    let answer = http
        .post(format!("{}/tasks/success", node.url()))
        .header("content-type", "application/json")
        .body(report.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let output = loop {
        let records = log
            .read(&TopicPartition::new("segments", 0), 0, 10)
            .unwrap();
        if let Some(record) = records.into_iter().next() {
            break record;
        }
        assert!(Instant::now() < deadline, "no output");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    node.stop().unwrap();
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();

    let source = named(&spans, "wellspring.source")[0];
    let queue = named(&spans, "wellspring.queue");
    assert_eq!(queue.len(), 1);
    let queue = queue[0];
    assert_eq!(
        queue.parent_span_id,
        source.span_context.span_id(),
        "submitted for the image"
    );
    assert_eq!(
        handed,
        format!(
            "00-{}-{}-01",
            queue.span_context.trace_id(),
            queue.span_context.span_id()
        ),
        "the worker continues from the submission"
    );
    let run = named(&spans, "wellspring.task");
    assert_eq!(run.len(), 1);
    assert_eq!(run[0].parent_span_id, queue.span_context.span_id());
    assert_eq!(
        run[0].span_context.trace_id(),
        source.span_context.trace_id()
    );
    // The output, published, names the task's run as its parent.
    let header = output
        .header("traceparent")
        .expect("the output's traceparent");
    assert_eq!(
        std::str::from_utf8(header).unwrap(),
        format!(
            "00-{}-{}-01",
            run[0].span_context.trace_id(),
            run[0].span_context.span_id()
        )
    );
    telemetry::enable(false);
}
