//! The task store over HTTP on loopback: the reference API, leases, durability.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use wellspring_actors::taskstore::{ApiClient, ClientError};
use wellspring_log::{EmbeddedLog, Log};
use wellspring_nodes::run::{RunOptions, RunningNode, start};
use wellspring_protocol::taskstore::{
    Claim, ExtendClaim, GroupSettings, Millis, NewTask, Report, TaskStatus,
};

fn node(log: &EmbeddedLog, node_id: &str, token: Option<&str>) -> RunningNode {
    let mut options = RunOptions::new("127.0.0.1:0".parse().unwrap());
    options.node_id = node_id.into();
    options.token = token.map(str::to_owned);
    options.task_partitions = 4;
    options.session_timeout = Duration::from_secs(2);
    options.body_limit = 64 * 1024;
    start(options, Some(Arc::new(log.clone()) as Arc<dyn Log>)).unwrap()
}

#[derive(Clone)]
struct Api {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Api {
    fn new(node: &RunningNode) -> Api {
        Api {
            base: node.url(),
            token: None,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let bytes = response.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(
            reqwest::Method::POST,
            path,
            Some("application/json"),
            Some(body.to_string().into_bytes()),
        )
        .await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, None, None).await
    }

    /// Posts until the node's shards are served (a fresh node takes a moment).
    async fn ready_post(&self, path: &str, body: Value) -> (u16, Value) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (status, answer) = self.post(path, body.clone()).await;
            if status != 503 || tokio::time::Instant::now() > deadline {
                return (status, answer);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn group(&self, name: &str, settings: Value) {
        let mut body = json!({"name": name});
        body.as_object_mut()
            .unwrap()
            .extend(settings.as_object().cloned().unwrap_or_default());
        let (status, answer) = self.post("/groups", body).await;
        assert!(status == 201 || status == 200, "{status} {answer}");
    }

    async fn submit(&self, group: &str, cmd: &str) -> Value {
        let (status, task) = self
            .ready_post("/tasks", json!({"cmd": [cmd], "group": group}))
            .await;
        assert_eq!(status, 201, "{task}");
        task
    }

    async fn claim(&self, group: &str, client: &str, duration_ms: u64) -> Option<Value> {
        let (status, task) = self
            .ready_post(
                "/tasks/claim",
                json!({"groups": [group], "client-id": client, "duration": duration_ms}),
            )
            .await;
        match status {
            200 => Some(task),
            204 => None,
            other => panic!("claim answered {other}: {task}"),
        }
    }
}

/// How many of the tasks `ids` are in each status, once every one is readable (a
/// restarted node restores its shards first).
async fn statuses_once_readable(
    api: &Api,
    ids: impl IntoIterator<Item = impl AsRef<str>> + Clone,
) -> BTreeMap<String, i32> {
    let mut statuses = BTreeMap::new();
    eventually("every task readable on the new node", async || {
        statuses.clear();
        for id in ids.clone() {
            let (status, task) = api.get(&format!("/tasks/{}", id.as_ref())).await;
            if status != 200 {
                return false;
            }
            *statuses
                .entry(task["status"].as_str().unwrap().to_owned())
                .or_insert(0) += 1;
        }
        true
    })
    .await;
    statuses
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn the_reference_api_end_to_end() {
    let log = EmbeddedLog::new();
    let node = node(&log, "n0", None);
    let api = Api::new(&node);

    let (status, group) = api
        .post(
            "/groups",
            json!({"name": "Group A", "max-run-time": "10m", "retry": {"max-attempts": 5}}),
        )
        .await;
    assert_eq!(status, 201, "{group}");
    assert_eq!(group["max-run-time"], 600_000);
    let (status, _) = api.post("/groups", group.clone()).await;
    assert_eq!(status, 200, "creating it again changes nothing");

    let (status, task) = api.ready_post("/tasks", json!({"cmd": ["my-program.py", "url-to-data", "settings"], "group": "Group A", "labels": {"my-label": "is-good"}})).await;
    assert_eq!(status, 201, "{task}");
    assert_eq!(
        (task["version"].as_u64(), task["status"].as_str()),
        (Some(0), Some("available"))
    );
    let id = task["id"].as_str().unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok());

    let (status, keyed) = api
        .post(
            "/tasks",
            json!({"cmd": ["x"], "group": "Group A", "idempotency-key": "k-1"}),
        )
        .await;
    assert_eq!(status, 201);
    let (status, again) = api
        .post(
            "/tasks",
            json!({"cmd": ["x"], "group": "Group A", "idempotency-key": "k-1"}),
        )
        .await;
    assert_eq!(status, 200, "the same key gives the same task");
    assert_eq!(again["id"], keyed["id"]);

    let claimed = api.claim("Group A", "client-123", 30_000).await.unwrap();
    assert_eq!(claimed["id"], task["id"], "first in, first out");
    assert_eq!(
        (claimed["version"].as_u64(), claimed["status"].as_str()),
        (Some(1), Some("leased"))
    );
    assert_eq!(claimed["client-id"], "client-123");

    let (status, extended) = api
        .post(
            "/tasks/extend-claim",
            json!({"client-id": "client-123", "duration": 30000, "id": id, "version": 1}),
        )
        .await;
    assert_eq!((status, extended["version"].as_u64()), (200, Some(2)));
    let (status, stale) = api
        .post(
            "/tasks/extend-claim",
            json!({"client-id": "client-123", "duration": 30000, "id": id, "version": 1}),
        )
        .await;
    assert_eq!(status, 409);
    assert!(
        stale["error"].as_str().unwrap().contains("stale"),
        "{stale}"
    );
    let (status, other) = api
        .post(
            "/tasks/success",
            json!({"client-id": "someone-else", "id": id, "version": 2}),
        )
        .await;
    assert_eq!(status, 409);
    assert!(
        other["error"].as_str().unwrap().contains("another client"),
        "{other}"
    );

    let report = json!({"client-id": "client-123", "elapsed-time": 300232000, "id": id, "version": 2, "output": {"cells": 412}});
    let (status, done) = api.post("/tasks/success", report.clone()).await;
    assert_eq!(
        (status, done["status"].as_str(), done["version"].as_u64()),
        (200, Some("succeeded"), Some(3))
    );
    let (status, repeat) = api.post("/tasks/success", report).await;
    assert_eq!(
        (status, repeat["version"].as_u64()),
        (200, Some(3)),
        "a repeated report is idempotent"
    );

    let (status, read) = api.get(&format!("/tasks/{id}")).await;
    assert_eq!((status, read["output"]["cells"].as_u64()), (200, Some(412)));
    let (status, listed) = api.get("/groups/Group%20A/tasks?status=succeeded").await;
    assert_eq!((status, listed.as_array().map(Vec::len)), (200, Some(1)));
    let (status, stats) = api.get("/groups/Group%20A/stats").await;
    assert_eq!(status, 200);
    assert_eq!(
        (stats["available"].as_u64(), stats["succeeded"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(stats["desired-workers"], 1);
    let (status, scaling) = api.get("/groups/Group%20A/autoscaling").await;
    assert_eq!(
        (status, scaling["desired-workers"].as_u64()),
        (200, Some(1))
    );

    let (_, metrics) = api.send(reqwest::Method::GET, "/metrics", None, None).await;
    let _ = metrics;
    let text = reqwest::get(format!("{}/metrics", api.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("wellspring_task_group_desired_workers{group=\"Group A\"} 1"),
        "{text}"
    );
    assert_eq!(api.get("/health/live").await.0, 200);
    assert_eq!(api.get("/health/ready").await.0, 200);
    node.stop().unwrap();
}

type BadRequest = (
    &'static str,
    Option<&'static str>,
    Vec<u8>,
    u16,
    &'static str,
);

#[tokio::test]
async fn bad_requests_get_clear_4xx_answers_and_never_crash_the_node() {
    let log = EmbeddedLog::new();
    let node = node(&log, "n0", None);
    let api = Api::new(&node);
    api.group("g", json!({})).await;
    let post_raw = |path: &'static str, ct: Option<&'static str>, body: Vec<u8>| {
        let api = api.clone();
        async move { api.send(reqwest::Method::POST, path, ct, Some(body)).await }
    };
    // (path, content type, body, status wanted, text the error must contain)
    let cases: Vec<BadRequest> = vec![
        (
            "/tasks",
            Some("application/json"),
            br#"{"cmd": ["x"], "group": "g", "bogus": 1}"#.to_vec(),
            400,
            "unknown field `bogus`",
        ),
        (
            "/tasks",
            Some("application/json"),
            br#"{"cmd": "x", "group": "g"}"#.to_vec(),
            400,
            "cmd",
        ),
        (
            "/tasks",
            Some("application/json"),
            br#"{"cmd": [], "group": "g"}"#.to_vec(),
            400,
            "at least the program",
        ),
        (
            "/tasks",
            Some("application/json"),
            br#"{"cmd": ["x"], "group": "nope"}"#.to_vec(),
            404,
            "group \"nope\" does not exist",
        ),
        (
            "/tasks",
            Some("application/json"),
            b"{not json".to_vec(),
            400,
            "",
        ),
        ("/tasks", Some("application/json"), Vec::new(), 400, ""),
        (
            "/tasks",
            None,
            br#"{"cmd": ["x"], "group": "g"}"#.to_vec(),
            415,
            "Content-Type",
        ),
        (
            "/tasks",
            Some("application/json"),
            vec![b'['; 100 * 1024],
            413,
            "",
        ),
        (
            "/tasks/claim",
            Some("application/json"),
            br#"{"groups": ["g"], "client-id": "c", "duration": -5}"#.to_vec(),
            400,
            "duration",
        ),
        (
            "/tasks/claim",
            Some("application/json"),
            br#"{"groups": ["g"], "client-id": "c", "duration": 0}"#.to_vec(),
            400,
            "longer than zero",
        ),
        (
            "/tasks/extend-claim",
            Some("application/json"),
            br#"{"client-id": "c", "duration": 1, "id": "not-a-uuid", "version": 1}"#.to_vec(),
            400,
            "UUID",
        ),
        (
            "/tasks/success",
            Some("application/json"),
            br#"{"client-id": "c", "id": "6b1a4b9e-9a8e-4c4e-8f5d-0f6f1c2d3e4f", "version": 1}"#
                .to_vec(),
            404,
            "does not exist",
        ),
        (
            "/groups",
            Some("application/json"),
            br#"{"name": "bad/name"}"#.to_vec(),
            400,
            "name",
        ),
        (
            "/groups",
            Some("application/json"),
            br#"{"name": "g2", "retry": {"max-attempts": 0}}"#.to_vec(),
            400,
            "max-attempts",
        ),
    ];
    for (path, ct, body, want, needle) in cases {
        let shown = String::from_utf8_lossy(&body[..body.len().min(60)]).into_owned();
        let (status, answer) = post_raw(path, ct, body).await;
        assert_eq!(status, want, "{path} {shown}: {answer}");
        if status != 413 {
            assert!(
                answer["error"].as_str().is_some_and(|e| e.contains(needle)),
                "{path} {shown}: {answer}"
            );
        }
    }
    assert_eq!(api.get("/tasks/not-a-uuid").await.0, 400);
    assert_eq!(
        api.get("/tasks/6b1a4b9e-9a8e-4c4e-8f5d-0f6f1c2d3e4f")
            .await
            .0,
        404
    );
    assert_eq!(api.get("/groups/nope/stats").await.0, 404);
    assert_eq!(api.get("/groups/g/tasks?status=sleeping").await.0, 400);
    assert_eq!(api.get("/no/such/endpoint").await.0, 404);
    // Still serving.
    api.submit("g", "x").await;
    node.stop().unwrap();
}

/// One rule for durations in every body: a number is milliseconds (the reference sends
/// `30000`), text carries its unit, and text without one is refused, not read as seconds.
#[tokio::test]
async fn durations_are_milliseconds_or_text_with_its_unit() {
    let log = EmbeddedLog::new();
    let node = node(&log, "n0", None);
    let api = Api::new(&node);
    let (status, group) = api
        .post("/groups", json!({"name": "d", "max-run-time": "10m"}))
        .await;
    assert_eq!(
        (status, group["max-run-time"].as_u64()),
        (201, Some(600_000))
    );
    let (status, refused) = api
        .post("/groups", json!({"name": "e", "max-run-time": "600"}))
        .await;
    assert_eq!(status, 400, "{refused}");
    let message = refused["error"].as_str().unwrap_or_default();
    assert!(
        message.contains("\"600\" has no unit") && message.contains("600ms"),
        "{refused}"
    );
    for _ in 0..2 {
        api.submit("d", "x").await;
    }
    let lease = |task: &Value| {
        task["lease-expires-at"].as_i64().unwrap() - task["updated-at"].as_i64().unwrap()
    };
    let by_number = api.claim("d", "w", 30_000).await.unwrap();
    assert_eq!(lease(&by_number), 30_000, "{by_number}");
    let (status, by_text) = api
        .ready_post(
            "/tasks/claim",
            json!({"groups": ["d"], "client-id": "w", "duration": "30s"}),
        )
        .await;
    assert_eq!((status, lease(&by_text)), (200, 30_000), "{by_text}");
    let (status, refused) = api
        .ready_post(
            "/tasks/extend-claim",
            json!({"client-id": "w", "duration": "30000", "id": by_text["id"], "version": by_text["version"]}),
        )
        .await;
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("\"30000\" has no unit")),
        "{refused}"
    );
    node.stop().unwrap();
}

/// The typed client (the peer link's and the CLI's) speaks every call of the API: the
/// paths, bodies and answers of `wellspring_protocol::taskstore::api`.
#[tokio::test]
async fn the_typed_client_speaks_every_call() {
    let log = EmbeddedLog::new();
    let node = node(&log, "n0", Some("s3cret"));
    let client = ApiClient::new(&node.url(), Some("s3cret".into())).unwrap();
    let (group, created) = client
        .create_group(&GroupSettings::named("typed group"))
        .await
        .unwrap();
    assert!(created);
    assert!(!client.create_group(&group).await.unwrap().1, "unchanged");
    assert_eq!(client.group("typed group").await.unwrap(), group);
    assert_eq!(client.groups().await.unwrap(), vec![group.clone()]);
    let new = NewTask {
        cmd: vec!["echo".into()],
        group: "typed group".into(),
        labels: BTreeMap::new(),
        idempotency_key: Some("once".into()),
    };
    let submitted = loop {
        match client.submit(&new).await {
            Err(e) if e.can_retry() => tokio::time::sleep(Duration::from_millis(20)).await,
            answer => break answer.unwrap(),
        }
    };
    assert!(submitted.1, "a new task");
    let (again, created) = client.submit(&new).await.unwrap();
    assert_eq!((again.id, created), (submitted.0.id, false), "the same key");
    let claim = Claim {
        groups: vec!["typed group".into()],
        client_id: "w".into(),
        duration: Millis(60_000),
    };
    let task = client.claim(&claim).await.unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::Leased);
    assert_eq!(
        client.claim(&claim).await.unwrap(),
        None,
        "204: nothing left"
    );
    let task = client
        .extend(&ExtendClaim {
            client_id: "w".into(),
            duration: Millis(60_000),
            id: task.id,
            version: task.version,
        })
        .await
        .unwrap();
    let report = Report {
        client_id: "w".into(),
        id: task.id,
        version: task.version,
        elapsed_time: None,
        output: Some(json!({"done": true})),
        error: None,
    };
    let done = client.report(&report, true).await.unwrap();
    assert_eq!(done.status, TaskStatus::Succeeded);
    assert_eq!(client.get(task.id).await.unwrap(), done);
    let listed = client
        .list("typed group", Some(TaskStatus::Succeeded), Some(10))
        .await
        .unwrap();
    assert_eq!(listed, vec![done]);
    assert_eq!(client.stats("typed group").await.unwrap().succeeded, 1);
    assert_eq!(client.autoscaling("typed group").await.unwrap().backlog, 0);
    assert!(client.live().await.unwrap().live);
    assert!(client.ready().await.unwrap().ready);
    let cluster = client.shards().await.unwrap();
    assert_eq!(cluster.node, "n0");
    let local = client.local_shards().await.unwrap();
    assert!(
        local.stages.iter().any(|s| s.dag == "task-store"),
        "{local:?}"
    );
    // Refusals carry the status and the node's message; a wrong token is refused too.
    match client.stats("nope").await {
        Err(ClientError::Refused {
            status, message, ..
        }) => assert!(
            status == 404 && message.contains("does not exist"),
            "{message}"
        ),
        other => panic!("{other:?}"),
    }
    let stranger = ApiClient::new(&node.url(), None).unwrap();
    assert!(matches!(
        stranger.groups().await,
        Err(ClientError::Refused { status: 401, .. })
    ));
    assert!(client.drain().await.unwrap().draining);
    let url = node.url();
    node.stop().unwrap();
    let gone = ApiClient::new(&url, None)
        .unwrap()
        .live()
        .await
        .unwrap_err();
    assert!(
        matches!(gone, ClientError::Unreachable { .. }) && gone.can_retry(),
        "{gone}"
    );
}

#[tokio::test]
async fn a_token_protects_everything_but_the_health_checks() {
    let log = EmbeddedLog::new();
    let node = node(&log, "n0", Some("s3cret"));
    let mut api = Api::new(&node);
    let (status, answer) = api.post("/groups", json!({"name": "g"})).await;
    assert_eq!(status, 401, "{answer}");
    assert_eq!(api.get("/health/live").await.0, 200);
    api.token = Some("wrong".into());
    assert_eq!(api.post("/groups", json!({"name": "g"})).await.0, 401);
    api.token = Some("s3cret".into());
    assert_eq!(api.post("/groups", json!({"name": "g"})).await.0, 201);
    node.stop().unwrap();
}

#[tokio::test]
async fn many_claimers_in_parallel_never_share_a_task() {
    let log = EmbeddedLog::new();
    let node = node(&log, "n0", None);
    let api = Api::new(&node);
    api.group("g", json!({})).await;
    for i in 0..300 {
        api.submit("g", &format!("job-{i}")).await;
    }
    let mut workers = Vec::new();
    for w in 0..16 {
        let api = api.clone();
        workers.push(tokio::spawn(async move {
            let client = format!("worker-{w}");
            let mut done = Vec::new();
            while let Some(task) = api.claim("g", &client, 30_000).await {
                let id = task["id"].as_str().unwrap().to_owned();
                let (status, answer) = api
                    .post(
                        "/tasks/success",
                        json!({"client-id": client, "id": id, "version": task["version"]}),
                    )
                    .await;
                assert_eq!(status, 200, "{answer}");
                done.push(id);
            }
            done
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap());
    }
    let distinct: BTreeSet<&String> = all.iter().collect();
    assert_eq!(all.len(), 300, "every task claimed once");
    assert_eq!(distinct.len(), 300, "no task leased to two workers");
    let (_, stats) = api.get("/groups/g/stats").await;
    assert_eq!(stats["succeeded"], 300);
    node.stop().unwrap();
}

#[tokio::test]
async fn an_unextended_lease_expires_and_the_task_is_claimed_again() {
    let log = EmbeddedLog::new();
    let node = node(&log, "n0", None);
    let api = Api::new(&node);
    api.group("g", json!({"retry": {"initial-backoff": 10}}))
        .await;
    let task = api.submit("g", "x").await;
    let first = api.claim("g", "vanishing", 300).await.unwrap();
    assert_eq!(first["id"], task["id"]);
    let mut second = None;
    eventually("the task to be claimable again", async || {
        second = api.claim("g", "rescuer", 30_000).await;
        second.is_some()
    })
    .await;
    let second = second.unwrap();
    assert_eq!(
        (second["id"].clone(), second["attempts"].as_u64()),
        (task["id"].clone(), Some(2))
    );
    assert!(
        second["last-error"].as_str().unwrap().contains("expired"),
        "{second}"
    );
    let (status, _) = api
        .post(
            "/tasks/success",
            json!({"client-id": "vanishing", "id": task["id"], "version": first["version"]}),
        )
        .await;
    assert_eq!(status, 409, "the vanished client's late report is refused");
    node.stop().unwrap();
}

#[tokio::test]
async fn a_hanging_task_is_halted_and_retried() {
    let log = EmbeddedLog::new();
    let node = node(&log, "n0", None);
    let api = Api::new(&node);
    api.group(
        "g",
        json!({"max-run-time": 400, "retry": {"initial-backoff": 10}}),
    )
    .await;
    let task = api.submit("g", "x").await;
    let claimed = api.claim("g", "slow", 60_000).await.unwrap();
    let id = task["id"].as_str().unwrap().to_owned();
    // The worker keeps extending, but runs past the maximum run time.
    let mut version = claimed["version"].as_u64().unwrap();
    let mut halted = Value::Null;
    eventually("the task to be halted", async || {
        let (status, answer) = api
            .post(
                "/tasks/extend-claim",
                json!({"client-id": "slow", "duration": 60000, "id": id, "version": version}),
            )
            .await;
        if status == 200 {
            version = answer["version"].as_u64().unwrap();
            return false;
        }
        halted = api.get(&format!("/tasks/{id}")).await.1;
        true
    })
    .await;
    assert_eq!(halted["status"], "available");
    assert!(
        halted["last-error"]
            .as_str()
            .unwrap()
            .contains("max-run-time"),
        "{halted}"
    );
    node.stop().unwrap();
}

#[tokio::test]
async fn failures_retry_with_backoff_then_dead_letter_with_the_last_error() {
    let log = EmbeddedLog::new();
    let node = node(&log, "n0", None);
    let api = Api::new(&node);
    api.group(
        "g",
        json!({"retry": {"max-attempts": 3, "initial-backoff": 50, "max-backoff": 200}}),
    )
    .await;
    let task = api.submit("g", "x").await;
    for attempt in 1..=3 {
        let mut claimed = None;
        eventually("the retry", async || {
            claimed = api.claim("g", "w", 30_000).await;
            claimed.is_some()
        })
        .await;
        let claimed = claimed.unwrap();
        assert_eq!(claimed["attempts"], attempt);
        let (status, answer) = api.post("/tasks/failure", json!({"client-id": "w", "id": task["id"], "version": claimed["version"], "error": format!("disk full {attempt}")})).await;
        assert_eq!(status, 200, "{answer}");
    }
    let (_, dead) = api
        .get(&format!("/tasks/{}", task["id"].as_str().unwrap()))
        .await;
    assert_eq!(dead["status"], "dead-lettered");
    assert_eq!(dead["last-error"], "disk full 3 (attempt 3 of 3)");
    let (_, stats) = api.get("/groups/g/stats").await;
    assert_eq!(
        (stats["dead-lettered"].as_u64(), stats["available"].as_u64()),
        (Some(1), Some(0))
    );
    node.stop().unwrap();
}

#[tokio::test]
async fn a_restarted_node_keeps_every_task_and_dead_leases_become_claimable() {
    let log = EmbeddedLog::new();
    let first = node(&log, "n0", None);
    let api = Api::new(&first);
    api.group("g", json!({"retry": {"initial-backoff": 10}}))
        .await;
    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(
            api.submit("g", &format!("job-{i}")).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let mut leased = Vec::new();
    for _ in 0..10 {
        leased.push(api.claim("g", "doomed", 1_000).await.unwrap());
    }
    for task in &leased[..4] {
        let (status, _) = api
            .post(
                "/tasks/success",
                json!({"client-id": "doomed", "id": task["id"], "version": task["version"]}),
            )
            .await;
        assert_eq!(status, 200);
    }
    first.kill();

    let second = node(&log, "n0", None);
    let api = Api::new(&second);
    let statuses = statuses_once_readable(&api, &ids).await;
    assert_eq!(statuses.get("succeeded"), Some(&4), "{statuses:?}");
    assert_eq!(statuses.values().sum::<i32>(), 40, "no task lost");
    // The leases that died with the node expire, and everything else can be worked off.
    let mut worked = 0;
    eventually("every unfinished task worked off", async || {
        while let Some(task) = api.claim("g", "survivor", 30_000).await {
            let (status, _) = api
                .post(
                    "/tasks/success",
                    json!({"client-id": "survivor", "id": task["id"], "version": task["version"]}),
                )
                .await;
            assert_eq!(status, 200);
            worked += 1;
        }
        worked == 36
    })
    .await;
    second.stop().unwrap();
}

#[tokio::test]
async fn a_dags_queue_task_hands_records_to_workers_and_carries_their_output_on() {
    let dag = r#"
name: segmentation
variables: {}
settings: {partitions: 2}
topics:
  images: {value-schema: channel_level, partitions: 2}
  segments: {value-schema: json}
tasks:
  segment:
    type: queue
    group: segmentation
    cmd: ["segment.py", "{location}"]
    labels: {experiment: "{experiment_id}", well: "{well}"}
    group-settings: {retry: {max-attempts: 1}}
    input-schema: channel_level
graph:
  images: {type: topic-stream, topic-name: images}
  segment: {type: external-task, stream: images, task-name: segment}
  out: {type: publish, stream: segment, topic-name: segments}
"#;
    let registry = wellspring_actors::FunctionRegistry::with_builtins();
    let dag = wellspring_protocol::Dag::load(dag, wellspring_protocol::SpecFormat::Yaml, &registry)
        .unwrap_or_else(|e| panic!("{e}"));
    let log = EmbeddedLog::new();
    let mut options = RunOptions::new("127.0.0.1:0".parse().unwrap());
    options.dags = vec![dag];
    options.task_partitions = 2;
    let node = start(options, Some(Arc::new(log.clone()) as Arc<dyn Log>)).unwrap();
    let api = Api::new(&node);

    let layout = wellspring_protocol::synthetic::layout("EXP-Q", 1, 1, 1, 3).unwrap();
    let images = wellspring_protocol::synthetic::images(&layout, "HUVEC");
    let producer = log.producer().unwrap();
    producer
        .send(
            images
                .iter()
                .map(|i| {
                    wellspring_log::ProducerRecord::new(
                        "images",
                        Some(i.key.to_string().into()),
                        Some(i.to_value().to_json_string().into()),
                    )
                })
                .collect(),
        )
        .await
        .unwrap();

    // A worker takes the three tasks: two succeed, one fails for good.
    let mut handled = 0;
    eventually("three tasks worked", async || {
        if let Some(task) = api.claim("segmentation", "gpu-worker", 30_000).await {
            assert_eq!(task["cmd"][0], "segment.py");
            assert!(task["cmd"][1].as_str().unwrap().starts_with("s3://"));
            assert_eq!(task["labels"]["experiment"], "EXP-Q");
            let location = task["cmd"][1].as_str().unwrap();
            let (path, body) = if location.ends_with("ch3.tiff") {
                ("/tasks/failure", json!({"client-id": "gpu-worker", "id": task["id"], "version": task["version"], "error": "segmentation diverged"}))
            } else {
                ("/tasks/success", json!({"client-id": "gpu-worker", "id": task["id"], "version": task["version"], "output": {"cells": 17, "image": location}}))
            };
            let (status, answer) = api.post(path, body).await;
            assert_eq!(status, 200, "{answer}");
            handled += 1;
        }
        handled == 3
    })
    .await;
    let read = |topic: &str| -> Vec<Value> {
        (0..2)
            .flat_map(|p| {
                log.read(&wellspring_log::TopicPartition::new(topic, p), 0, 100)
                    .unwrap_or_default()
            })
            .filter_map(|r| r.value.and_then(|v| serde_json::from_slice(&v).ok()))
            .collect()
    };
    eventually("two outputs and a dead letter", async || {
        read("segments").len() == 2 && read("segmentation.dead-letters").len() == 1
    })
    .await;
    assert!(read("segments").iter().all(|o| o["cells"] == 17));
    let letter = &read("segmentation.dead-letters")[0];
    assert!(
        letter["reason"]
            .as_str()
            .unwrap()
            .contains("segmentation diverged"),
        "{letter}"
    );
    assert_eq!(letter["node"], "segment");
    assert!(
        letter["record"]["location"]
            .as_str()
            .unwrap()
            .ends_with("ch3.tiff")
    );
    node.stop().unwrap();
}

/// Runs the Python worker example with `args` on three tasks: one that outlives its
/// lease unless the worker extends it, one that succeeds quickly, one that fails. Returns
/// the worker's output.
async fn python_worker_works_off_three_tasks(args: &[&str]) -> String {
    let log = EmbeddedLog::new();
    let node = node(&log, "n0", None);
    let api = Api::new(&node);
    api.group("py", json!({"retry": {"max-attempts": 1}})).await;
    let slow = api.ready_post("/tasks", json!({"cmd": ["python3", "-c", "import time; time.sleep(2.5); print('slow done')"], "group": "py"})).await.1;
    let quick = api
        .ready_post(
            "/tasks",
            json!({"cmd": ["python3", "-c", "print('quick done')"], "group": "py"}),
        )
        .await
        .1;
    let bad = api.ready_post("/tasks", json!({"cmd": ["python3", "-c", "import sys; sys.stderr.write('no input'); sys.exit(3)"], "group": "py"})).await.1;
    let worker = tokio::process::Command::new("python3")
        // As a worker Job started by the autoscaler finds them: in its environment.
        .env("WELLSPRING_URL", &api.base)
        .env("WELLSPRING_GROUP", "py")
        .args([
            "examples/worker.py",
            "--lease",
            "1",
            "--exit-when-empty",
            "--client-id",
            "py-worker",
        ])
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .await
        .expect("python3 runs the worker example");
    assert!(
        worker.status.success(),
        "{}",
        String::from_utf8_lossy(&worker.stderr)
    );
    let get = |task: &Value| {
        let api = api.clone();
        let id = task["id"].as_str().unwrap().to_owned();
        async move { api.get(&format!("/tasks/{id}")).await.1 }
    };
    let slow = get(&slow).await;
    assert_eq!(
        slow["status"], "succeeded",
        "the worker kept the 1 s lease alive for 2.5 s: {slow}"
    );
    assert_eq!(slow["attempts"], 1);
    assert!(
        slow["output"]["stdout"]
            .as_str()
            .unwrap()
            .contains("slow done")
    );
    assert!(
        slow["version"].as_u64().unwrap() >= 4,
        "extended at least once: {slow}"
    );
    assert_eq!(get(&quick).await["status"], "succeeded");
    let bad = get(&bad).await;
    assert_eq!(bad["status"], "dead-lettered");
    assert!(
        bad["last-error"]
            .as_str()
            .unwrap()
            .contains("exit code 3: no input"),
        "{bad}"
    );
    node.stop().unwrap();
    String::from_utf8_lossy(&worker.stdout).into_owned()
}

#[tokio::test]
async fn the_python_worker_example_claims_extends_and_reports() {
    let output = python_worker_works_off_three_tasks(&["--no-batch"]).await;
    assert!(!output.contains("batch"), "{output}");
}

#[tokio::test]
async fn the_python_worker_example_uses_the_batch_calls_the_server_offers() {
    let output = python_worker_works_off_three_tasks(&["--parallel", "3"]).await;
    assert!(
        output.contains("claimed 3 task(s) in one batch call"),
        "{output}"
    );
}

#[tokio::test]
async fn two_nodes_share_the_shards_and_either_answers_any_call() {
    let log = EmbeddedLog::new();
    let a = node(&log, "n0", None);
    let b = node(&log, "n1", None);
    let (api_a, api_b) = (Api::new(&a), Api::new(&b));
    // Wait until the group gave each node some shards and each knows of the other.
    eventually("both nodes serving shards and announced", async || {
        let (_, sa) = api_a.get("/task-store/shards").await;
        let (_, sb) = api_b.get("/task-store/shards").await;
        let serving = |s: &Value| s["serving"].as_array().map_or(0, Vec::len);
        let known = |s: &Value| {
            s["nodes"].as_array().map_or(0, |n| {
                n.iter()
                    .filter(|x| !x["partitions"].as_array().unwrap().is_empty())
                    .count()
            })
        };
        serving(&sa) > 0
            && serving(&sb) > 0
            && serving(&sa) + serving(&sb) == 4
            && known(&sa) == 2
            && known(&sb) == 2
    })
    .await;
    // Either node shows who owns what: every partition of the task store's stage once,
    // split between the two nodes.
    let (status, cluster) = api_b.get("/shards").await;
    assert_eq!(status, 200, "{cluster}");
    let mut owners = BTreeMap::new();
    for node in cluster["nodes"].as_array().unwrap() {
        for stage in node["stages"].as_array().unwrap() {
            if stage["dag"] == "task-store" {
                for p in stage["partitions"].as_array().unwrap() {
                    let previous = owners.insert(
                        p["partition"].as_u64().unwrap(),
                        node["node"].as_str().unwrap().to_owned(),
                    );
                    assert!(previous.is_none(), "a partition owned twice: {cluster}");
                }
            }
        }
    }
    assert_eq!(owners.keys().copied().collect::<Vec<_>>(), vec![0, 1, 2, 3]);
    assert_eq!(
        owners.values().collect::<BTreeSet<_>>().len(),
        2,
        "{cluster}"
    );
    let (status, _) = api_a.get("/shards?scope=everywhere").await;
    assert_eq!(status, 400);
    api_a.group("shared", json!({})).await;
    eventually("node b to learn the group", async || {
        api_b.get("/groups/shared").await.0 == 200
    })
    .await;

    let mut ids = Vec::new();
    for i in 0..40 {
        let (status, task) = api_a
            .ready_post(
                "/tasks",
                json!({"cmd": [format!("job-{i}")], "group": "shared"}),
            )
            .await;
        assert_eq!(status, 201, "{task}");
        ids.push(task["id"].as_str().unwrap().to_owned());
    }
    // Every task is readable through either node.
    for id in &ids {
        assert_eq!(api_b.get(&format!("/tasks/{id}")).await.0, 200);
        assert_eq!(api_a.get(&format!("/tasks/{id}")).await.0, 200);
    }
    let (_, stats) = api_b.get("/groups/shared/stats").await;
    assert_eq!(
        stats["available"], 40,
        "statistics cover both nodes: {stats}"
    );
    // A worker talking to one node only gets every task (its own shards, then the other's),
    // and its reports reach the owners.
    let mut done = BTreeSet::new();
    while let Some(task) = api_a.claim("shared", "one-sided", 30_000).await {
        let (status, answer) = api_a
            .ready_post(
                "/tasks/success",
                json!({"client-id": "one-sided", "id": task["id"], "version": task["version"]}),
            )
            .await;
        assert_eq!(status, 200, "{answer}");
        done.insert(task["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(done.len(), 40);
    let (_, stats) = api_a.get("/groups/shared/stats").await;
    assert_eq!(stats["succeeded"], 40, "{stats}");
    let (_, listed) = api_b
        .get("/groups/shared/tasks?status=succeeded&limit=100")
        .await;
    assert_eq!(listed.as_array().map(Vec::len), Some(40));
    a.stop().unwrap();
    b.stop().unwrap();
}

#[tokio::test]
async fn batch_calls_submit_claim_and_report_many_each_answered_as_its_single_call() {
    let log = EmbeddedLog::new();
    let first = node(&log, "n0", Some("s3cret"));
    let mut api = Api::new(&first);
    assert_eq!(
        api.post("/tasks/batch/claim", json!({})).await.0,
        401,
        "batch calls need the token too"
    );
    api.token = Some("s3cret".into());
    api.group("g", json!({})).await;

    // Submissions: one result per task, in order, each with the status of POST /tasks.
    let tasks: Vec<Value> = (0..30)
        .map(|i| json!({"cmd": ["run", format!("job-{i}")], "group": "g", "idempotency-key": format!("k-{i}")}))
        .chain([json!({"cmd": ["run"], "group": "nowhere"}), json!({"cmd": [], "group": "g"})])
        .collect();
    let (status, answer) = api
        .ready_post("/tasks/batch/submit", json!({"tasks": tasks}))
        .await;
    assert_eq!(status, 200, "{answer}");
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 32);
    assert!(
        results[..30]
            .iter()
            .all(|r| r["status"] == 201 && r["created"] == true && r["version"] == 0),
        "{answer}"
    );
    assert_eq!(results[30]["status"], 404, "{answer}");
    assert!(results[30]["error"].as_str().unwrap().contains("nowhere"));
    assert_eq!(results[31]["status"], 400, "{answer}");
    // The same keys again: the tasks already there, not new ones.
    let (_, again) = api
        .post("/tasks/batch/submit", json!({"tasks": tasks[..3]}))
        .await;
    for (new, old) in again["results"].as_array().unwrap().iter().zip(results) {
        assert_eq!(
            (new["status"].clone(), &new["id"]),
            (json!(200), &old["id"])
        );
    }

    // Claims: up to the limit, in queue order, never a task twice.
    let (status, claimed) = api
        .post(
            "/tasks/batch/claim",
            json!({"groups": ["g"], "client-id": "w", "duration": 60_000, "limit": 20}),
        )
        .await;
    assert_eq!(status, 200, "{claimed}");
    let first_claim = claimed["tasks"].as_array().unwrap().clone();
    assert_eq!(first_claim.len(), 20);
    assert!(
        first_claim
            .iter()
            .all(|t| t["status"] == "leased" && t["version"] == 1)
    );
    let (_, rest) = api
        .post(
            "/tasks/batch/claim",
            json!({"groups": ["g"], "client-id": "w", "duration": 60_000, "limit": 1000}),
        )
        .await;
    let rest = rest["tasks"].as_array().unwrap().clone();
    assert_eq!(rest.len(), 10, "what was left");
    let leased: BTreeSet<&str> = first_claim
        .iter()
        .chain(&rest)
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(leased.len(), 30, "each task leased once");
    let (status, none) = api
        .post(
            "/tasks/batch/claim",
            json!({"groups": ["g"], "client-id": "w", "duration": 60_000, "limit": 5}),
        )
        .await;
    assert_eq!((status, none), (200, json!({"tasks": []})));

    // Reports: successes then failures, each answered as its single call; a stale one
    // is a 409 in its place, not a failed batch.
    let report = |t: &Value| json!({"client-id": "w", "id": t["id"], "version": t["version"]});
    let succeeded: Vec<Value> = first_claim.iter().map(report).collect();
    let failed: Vec<Value> = rest
        .iter()
        .map(|t| json!({"client-id": "w", "id": t["id"], "version": t["version"], "error": "boom"}))
        .collect();
    let stale = json!({"client-id": "w", "id": rest[0]["id"], "version": 0});
    let mut with_stale = succeeded.clone();
    with_stale.push(stale);
    let (status, answer) = api
        .post(
            "/tasks/batch/report",
            json!({"succeeded": with_stale, "failed": failed}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 31);
    assert!(
        results[..20]
            .iter()
            .all(|r| r["status"] == 200 && r["version"] == 2)
    );
    assert_eq!(results[20]["status"], 409, "{answer}");
    assert!(results[21..].iter().all(|r| r["status"] == 200), "{answer}");

    // Bounded and checked as every call is.
    let (status, answer) = api
        .post(
            "/tasks/batch/claim",
            json!({"groups": ["g"], "client-id": "w", "duration": 60_000, "limit": 1001}),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("1000"),
        "{answer}"
    );
    let too_many: Vec<Value> = (0..1001)
        .map(|_| json!({"cmd": ["x"], "group": "g"}))
        .collect();
    let (status, _) = api
        .post("/tasks/batch/submit", json!({"tasks": too_many}))
        .await;
    assert!(status == 400 || status == 413, "{status}");
    let (status, _) = api
        .post("/tasks/batch/report", json!({"succeeded": [], "extra": 1}))
        .await;
    assert_eq!(status, 400);

    // Every answer was durable: a restarted node has each change.
    first.kill();
    let second = node(&log, "n0", Some("s3cret"));
    let mut api = Api::new(&second);
    api.token = Some("s3cret".into());
    let statuses = statuses_once_readable(&api, &leased).await;
    assert_eq!(statuses.get("succeeded"), Some(&20), "{statuses:?}");
    assert_eq!(
        statuses.get("available"),
        Some(&10),
        "retried: {statuses:?}"
    );
    second.stop().unwrap();
}
