//! HTTP tasks against real servers on loopback that fail, stall and answer slowly.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Answer, Harness, ScriptedServer};
use wellspring_actors::metrics::names;

const DAG: &str = r#"
name: http-test
settings: {partitions: 2}
variables: {svc: "http://127.0.0.1:1"}
schemas:
  job: {fields: {id: string, n: int}}
topics:
  jobs: {value-schema: job, partitions: 2}
  results: {value-schema: json}
tasks:
  call:
    url: "${svc}/work/{id}"
    input-schema: job
    max-inflight: 3
    retries: 3
    backoff: {initial: 100ms, max: 1s, multiplier: 2, jitter: false}
    timeout: 300ms
    success:
      status: [200]
      headers: [{name: X-Function-Error, not-in: [Handled, Unhandled]}]
graph:
  jobs: {type: topic-stream, topic-name: jobs}
  work: {type: external-task, stream: jobs, task-name: call}
  out: {type: publish, stream: work, topic-name: results}
"#;

async fn submit(h: &Harness, ids: impl IntoIterator<Item = String>) {
    for (n, id) in ids.into_iter().enumerate() {
        h.publish_json("jobs", &id, &format!(r#"{{"id": "{id}", "n": {n}}}"#))
            .await;
    }
}

fn dead_letters(h: &Harness) -> Vec<serde_json::Value> {
    h.read_json("http-test.dead-letters")
}

#[actix_rt::test]
async fn in_flight_requests_never_exceed_the_limit() {
    let server = ScriptedServer::start(|_| Answer::Json {
        status: 200,
        headers: vec![],
        body: r#"{"done": true}"#.into(),
        delay: Duration::from_millis(30),
    });
    let h = Harness::start(DAG, &[("svc", server.url.clone())]).await;
    submit(&h, (0..60).map(|i| format!("job-{i}"))).await;
    h.wait_until("60 results", |h| h.count("results") == 60)
        .await;
    let max = server
        .max_inflight
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        max <= 3,
        "the server saw {max} requests at once; the limit is 3"
    );
    assert!(
        max >= 2,
        "requests should run concurrently (saw at most {max})"
    );
    assert!(h.metrics.gauge_max("http-test", "work", names::INFLIGHT) <= 3);
    assert_eq!(server.requests(), 60, "no retries when every call succeeds");
    h.stop().await;
}

#[actix_rt::test]
async fn failures_retry_with_backoff_then_dead_letter_and_the_pipeline_goes_on() {
    let server = ScriptedServer::start(|seen| {
        if seen.path.contains("/ok") {
            Answer::ok(r#"{"done": true}"#)
        } else {
            Answer::status(503)
        }
    });
    let h = Harness::start(DAG, &[("svc", server.url.clone())]).await;
    submit(&h, ["fail-a".to_string(), "fail-b".to_string()]).await;
    h.wait_until("two dead letters", |h| dead_letters(h).len() == 2)
        .await;

    let seen = server.seen.lock().clone();
    for key in seen
        .iter()
        .map(|s| s.idempotency_key.clone())
        .collect::<std::collections::BTreeSet<_>>()
    {
        let attempts: Vec<_> = seen.iter().filter(|s| s.idempotency_key == key).collect();
        assert_eq!(attempts.len(), 4, "1 attempt + 3 retries");
        // Exponential back-off without jitter: 100 ms, 200 ms, 400 ms at least.
        for (i, pair) in attempts.windows(2).enumerate() {
            let gap = pair[1].at - pair[0].at;
            let backoff = Duration::from_millis(100 << i);
            assert!(
                gap >= backoff,
                "retry {} came after {gap:?}, before its back-off {backoff:?}",
                i + 1
            );
        }
    }
    assert_eq!(h.metrics.get("http-test", "work", names::RETRIES), 6);
    for letter in dead_letters(&h) {
        let reason = letter["reason"].as_str().unwrap();
        assert!(
            reason.contains("gave up after 4 attempts") && reason.contains("status 503"),
            "{reason}"
        );
        assert_eq!(letter["attempts"], 4);
        assert_eq!(letter["node"], "work");
        assert_eq!(letter["source_topic"], "jobs");
        assert!(letter["source_offset"].is_number());
        assert!(
            letter["record"]["id"]
                .as_str()
                .unwrap()
                .starts_with("fail-")
        );
    }
    // The pipeline goes on.
    submit(&h, ["ok-1".to_string()]).await;
    h.wait_until("the next job's result", |h| h.count("results") == 1)
        .await;
    h.stop().await;
}

#[actix_rt::test]
async fn stalled_calls_time_out_and_are_retried() {
    let server = ScriptedServer::start(|seen| {
        if seen.attempt == 1 {
            Answer::Stall(Duration::from_secs(2))
        } else {
            Answer::ok(r#"{"done": true}"#)
        }
    });
    let h = Harness::start(DAG, &[("svc", server.url.clone())]).await;
    submit(&h, (0..5).map(|i| format!("job-{i}"))).await;
    h.wait_until("5 results", |h| h.count("results") == 5).await;
    assert_eq!(
        h.metrics.get("http-test", "work", names::RETRIES),
        5,
        "one retry per stalled call"
    );
    assert!(dead_letters(&h).is_empty());
    h.stop().await;
}

#[actix_rt::test]
async fn slow_answers_within_the_timeout_are_not_retried() {
    let server = ScriptedServer::start(|_| Answer::Json {
        status: 200,
        headers: vec![],
        body: "{}".into(),
        delay: Duration::from_millis(150),
    });
    let h = Harness::start(DAG, &[("svc", server.url.clone())]).await;
    submit(&h, (0..6).map(|i| format!("job-{i}"))).await;
    h.wait_until("6 results", |h| h.count("results") == 6).await;
    assert_eq!(h.metrics.get("http-test", "work", names::RETRIES), 0);
    assert_eq!(server.requests(), 6);
    h.stop().await;
}

#[actix_rt::test]
async fn the_success_predicate_and_permanent_statuses() {
    let server = ScriptedServer::start(|seen| {
        if seen.path.contains("handled") {
            Answer::Json {
                status: 200,
                headers: vec![("X-Function-Error".into(), "Handled".into())],
                body: "{}".into(),
                delay: Duration::ZERO,
            }
        } else if seen.path.contains("bad") {
            Answer::status(400)
        } else {
            Answer::ok("{}")
        }
    });
    let h = Harness::start(DAG, &[("svc", server.url.clone())]).await;
    submit(
        &h,
        ["handled".to_string(), "bad".to_string(), "fine".to_string()],
    )
    .await;
    h.wait_until("two dead letters and one result", |h| {
        dead_letters(h).len() == 2 && h.count("results") == 1
    })
    .await;
    let letters = dead_letters(&h);
    let by_id = |id: &str| {
        letters
            .iter()
            .find(|l| l["record"]["id"] == id)
            .unwrap()
            .clone()
    };
    let handled = by_id("handled");
    assert_eq!(handled["attempts"], 4, "a function error is retried");
    assert!(
        handled["reason"]
            .as_str()
            .unwrap()
            .contains("x-function-error"),
        "{}",
        handled["reason"]
    );
    let bad = by_id("bad");
    assert_eq!(bad["attempts"], 1, "a 400 is not retried");
    assert!(
        bad["reason"].as_str().unwrap().contains("not retried"),
        "{}",
        bad["reason"]
    );
    h.stop().await;
}

#[actix_rt::test]
async fn a_slow_task_holds_back_its_input_instead_of_buffering_it() {
    let dag = DAG
        .replace("settings: {partitions: 2}", "settings: {partitions: 1}")
        .replace("max-inflight: 3", "max-inflight: 1");
    let server = ScriptedServer::start(|_| Answer::Json {
        status: 200,
        headers: vec![],
        body: "{}".into(),
        delay: Duration::from_millis(2),
    });
    let h = Harness::start(&dag, &[("svc", server.url.clone())]).await;
    submit(&h, (0..400).map(|i| format!("job-{i}"))).await;
    h.wait_until("400 results", |h| h.count("results") == 400)
        .await;
    let pending = h.metrics.gauge_max("http-test", "work", names::PENDING);
    // A shard admits at most max(2 × max-inflight, 64) records; the rest wait in the log.
    assert!(pending <= 64, "{pending} records were pending at once");
    assert_eq!(
        server
            .max_inflight
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    h.stop().await;
}
