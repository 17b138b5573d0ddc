//! The task store on Kafka: a `wellspring run --kafka` process killed with SIGKILL and
//! started again keeps every task (its shards restore from their changelog partitions),
//! and the leases that died with it become claimable.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use wellspring_test_support::broker::Broker;
use wellspring_test_support::node_process::NodeProcess;

fn start_node(broker: &Broker) -> NodeProcess {
    let args = ["--session-timeout", "6s", "--task-partitions", "3"].map(str::to_owned);
    NodeProcess::start(
        env!("CARGO_BIN_EXE_wellspring"),
        &broker.address,
        "ts-node",
        &args,
    )
}

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn new(base: String) -> Api {
        Api {
            base,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        }
    }

    /// Sends until the node's shards are served (503 while they are being restored).
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let mut request = self
                .http
                .request(method.clone(), format!("{}{path}", self.base));
            if let Some(body) = &body {
                request = request
                    .header("content-type", "application/json")
                    .body(body.to_string());
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let bytes = response.bytes().await.unwrap();
            if status != 503 || tokio::time::Instant::now() > deadline {
                return (
                    status,
                    serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn claim(&self, client: &str, duration_ms: u64) -> Option<Value> {
        let (status, task) = self
            .post(
                "/tasks/claim",
                json!({"groups": ["g"], "client-id": client, "duration": duration_ms}),
            )
            .await;
        match status {
            200 => Some(task),
            204 => None,
            other => panic!("claim answered {other}: {task}"),
        }
    }

    async fn succeed(&self, client: &str, task: &Value) {
        let (status, answer) = self
            .post(
                "/tasks/success",
                json!({"client-id": client, "id": task["id"], "version": task["version"]}),
            )
            .await;
        assert_eq!(status, 200, "{answer}");
    }
}

#[tokio::test]
async fn a_node_killed_with_sigkill_and_restarted_keeps_every_task() {
    let broker = Broker::start();
    let mut first = start_node(&broker);
    let api = Api::new(first.url.clone());
    let (status, answer) = api
        .post(
            "/groups",
            json!({"name": "g", "retry": {"initial-backoff": 10}}),
        )
        .await;
    assert!(status == 201 || status == 200, "{status} {answer}");
    let mut ids = Vec::new();
    for i in 0..30 {
        let (status, task) = api
            .post("/tasks", json!({"cmd": [format!("job-{i}")], "group": "g"}))
            .await;
        assert_eq!(status, 201, "{task}");
        ids.push(task["id"].as_str().unwrap().to_owned());
    }
    let mut leased = Vec::new();
    for _ in 0..8 {
        leased.push(api.claim("doomed", 1_000).await.expect("a task to claim"));
    }
    for task in &leased[..3] {
        api.succeed("doomed", task).await;
    }
    // Every answer above came after its change was committed to Kafka; now the process
    // dies without a chance to flush anything.
    first.kill();

    let mut second = start_node(&broker);
    let api = Api::new(second.url.clone());
    let mut statuses = BTreeMap::new();
    for id in &ids {
        let (status, task) = api
            .call(reqwest::Method::GET, &format!("/tasks/{id}"), None)
            .await;
        assert_eq!(status, 200, "task {id} after the restart: {task}");
        *statuses
            .entry(task["status"].as_str().unwrap().to_owned())
            .or_insert(0) += 1;
    }
    assert_eq!(statuses.get("succeeded"), Some(&3), "{statuses:?}");
    assert_eq!(
        statuses.values().sum::<i32>(),
        30,
        "no task lost: {statuses:?}"
    );

    // The five leases that died with the first process expire; then all 27 unfinished
    // tasks can be worked off, each once.
    let mut worked = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while worked.len() < 27 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of 27 unfinished tasks came back: {worked:?}",
            worked.len()
        );
        match api.claim("survivor", 30_000).await {
            Some(task) => {
                api.succeed("survivor", &task).await;
                *worked
                    .entry(task["id"].as_str().unwrap().to_owned())
                    .or_insert(0) += 1;
            }
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(worked.values().all(|&n| n == 1), "{worked:?}");
    assert!(second.terminate().success());
}
