//! `/metrics` after a small run: every series the operator guide describes, with the
//! values that run must give.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Answer, ScriptedServer, load};
use serde_json::json;
use wellspring_actors::FunctionRegistry;
use wellspring_log::{EmbeddedLog, Log, ProducerRecord};
use wellspring_nodes::run::{RunOptions, start};
use wellspring_protocol::synthetic;

/// `series{labels}` → value, after checking the text is well-formed Prometheus: every
/// sample belongs to a family declared (HELP, TYPE) before it.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut declared = Vec::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            declared.push(rest.split(' ').next().unwrap().to_owned());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let name = series.split('{').next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| declared.iter().any(|d| d == f))
            })
            .unwrap_or(name);
        assert!(
            declared.iter().any(|d| d == family),
            "{name} has no TYPE before it"
        );
        samples.insert(series.to_owned(), value.parse::<f64>().unwrap());
    }
    samples
}

fn get(url: &str) -> String {
    call(url, None)
}

/// Posts until the node accepts: a task shard still starting answers 503 ("retry").
fn post(url: &str, body: serde_json::Value) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, text) = call_with_status(url, Some(body.clone()));
        if status != 503 {
            assert!(status < 300, "POST {url} answered {status}: {text}");
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "POST {url} kept answering 503: {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn call(url: &str, body: Option<serde_json::Value>) -> String {
    call_with_status(url, body).1
}

/// One request, answered as its status and text, on a runtime of its own (the test is
/// synchronous).
fn call_with_status(url: &str, body: Option<serde_json::Value>) -> (u16, String) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let request = match body {
            Some(body) => client
                .post(url)
                .header("content-type", "application/json")
                .body(body.to_string()),
            None => client.get(url),
        };
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    })
}

#[test]
fn metrics_after_a_small_run_have_the_values_of_that_run() {
    // The first call to the service fails, its retry succeeds.
    let service = ScriptedServer::start(|seen| {
        if seen.attempt == 1 {
            Answer::status(503)
        } else {
            Answer::ok(r#"{"cells": 12}"#)
        }
    });
    let registry = FunctionRegistry::with_builtins();
    let dag = load(
        common::SITE_FEATURES_DAG,
        &registry,
        &[("svc", service.url.clone())],
    );
    let log = EmbeddedLog::new();
    let mut options = RunOptions::new("127.0.0.1:0".parse().unwrap());
    options.dags = vec![dag];
    options.task_partitions = 2;
    let node = start(options, Some(Arc::new(log.clone()) as Arc<dyn Log>)).unwrap();

    let layout = synthetic::layout("EXP-M", 1, 1, 1, 6).unwrap();
    let mut records = vec![ProducerRecord::new(
        "metadata",
        Some(layout.experiment.as_str().to_owned().into()),
        Some(layout.to_value().to_json_string().into()),
    )];
    for image in synthetic::images(&layout, "HUVEC") {
        records.push(ProducerRecord::new(
            "images",
            Some(image.key.to_string().into()),
            Some(image.to_value().to_json_string().into()),
        ));
    }
    records.push(ProducerRecord::new(
        "images",
        Some("bad".into()),
        Some("not json".into()),
    ));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async { log.producer().unwrap().send(records).await.unwrap() });

    // Task-store groups: two tasks, one claimed.
    let base = node.url();
    post(&format!("{base}/groups"), json!({"name": "plates"}));
    for i in 0..2 {
        post(
            &format!("{base}/tasks"),
            json!({"cmd": ["x", i.to_string()], "group": "plates"}),
        );
    }
    post(
        &format!("{base}/tasks/claim"),
        json!({"groups": ["plates"], "client-id": "w1", "duration": 60000}),
    );

    // Wait for the output and for the lag to settle (end offsets are read every 2 s).
    let deadline = Instant::now() + Duration::from_secs(30);
    let m = loop {
        let m = parse(&get(&format!("{base}/metrics")));
        let lag_done = m
            .iter()
            .filter(|(k, _)| k.starts_with("wellspring_consumer_lag{dag=\"lab\",node=\"images\""))
            .count()
            == 2
            && m.iter()
                .filter(|(k, _)| k.starts_with("wellspring_consumer_lag{"))
                .all(|(_, v)| *v == 0.0);
        if m.get("wellspring_out_total{dag=\"lab\",node=\"features\"}") == Some(&1.0) && lag_done {
            break m;
        }
        assert!(Instant::now() < deadline, "the run did not settle: {m:#?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let v = |series: &str| {
        *m.get(series)
            .unwrap_or_else(|| panic!("no {series} in {m:#?}"))
    };
    let at = |node: &str| format!("dag=\"lab\",node=\"{node}\"");
    // Events in and out per DAG node; the bad record is a dead letter of the source.
    assert_eq!(v(&format!("wellspring_in_total{{{}}}", at("images"))), 7.0);
    assert_eq!(v(&format!("wellspring_out_total{{{}}}", at("images"))), 6.0);
    assert_eq!(
        v(&format!(
            "wellspring_dead_letters_total{{{}}}",
            at("images")
        )),
        1.0
    );
    assert_eq!(v(&format!("wellspring_in_total{{{}}}", at("site"))), 6.0);
    assert_eq!(v(&format!("wellspring_out_total{{{}}}", at("site"))), 1.0);
    // No aggregate left open; the task's call was retried once.
    assert_eq!(v(&format!("wellspring_open{{{}}}", at("site"))), 0.0);
    assert_eq!(
        v(&format!(
            "wellspring_http_requests_total{{{}}}",
            at("features")
        )),
        2.0
    );
    assert_eq!(
        v(&format!("wellspring_retries_total{{{}}}", at("features"))),
        1.0
    );
    assert_eq!(
        v(&format!("wellspring_inflight{{{}}}", at("features"))),
        0.0
    );
    let calls = format!(
        "wellspring_http_request_duration_seconds_count{{{}}}",
        at("features")
    );
    assert_eq!(v(&calls), 2.0);
    assert_eq!(
        v(&format!(
            "wellspring_http_request_duration_seconds_bucket{{{},le=\"+Inf\"}}",
            at("features")
        )),
        2.0
    );
    // Shards: both partitions of each stage here, assigned once, restored once each.
    assert_eq!(v(&format!("wellspring_shards{{{}}}", at("site"))), 2.0);
    assert!(v(&format!("wellspring_rebalances_total{{{}}}", at("site"))) >= 1.0);
    assert_eq!(
        v(&format!(
            "wellspring_restore_duration_seconds_count{{{}}}",
            at("site")
        )),
        2.0
    );
    // Each cycle of a stage is timed: its poll, its processing, and (when it had
    // something to commit) its commit; the site stage committed the site's images.
    let cycles = v(&format!(
        "wellspring_stage_poll_seconds_count{{{}}}",
        at("site")
    ));
    let processed = v(&format!(
        "wellspring_stage_process_seconds_count{{{}}}",
        at("site")
    ));
    let commits = v(&format!(
        "wellspring_stage_commit_seconds_count{{{}}}",
        at("site")
    ));
    assert!(commits >= 1.0, "the site stage committed: {commits}");
    assert!(
        processed <= cycles && commits <= processed,
        "cycles {cycles}, processed {processed}, commits {commits}"
    );
    // The task store: one task waiting, one leased.
    assert_eq!(
        v("wellspring_task_group_tasks{group=\"plates\",status=\"available\"}"),
        1.0
    );
    assert_eq!(
        v("wellspring_task_group_tasks{group=\"plates\",status=\"leased\"}"),
        1.0
    );
    node.stop().unwrap();
}
