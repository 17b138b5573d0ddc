//! `wellspring run --data-dir` as a real process, fed over HTTP ingest: killed with
//! SIGKILL mid-stream and restarted on the same directory, it loses nothing and repeats
//! nothing (every aggregate exactly once) and keeps the task store's tasks; a batch with
//! bad records is refused whole, with each bad record named.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;
use wellspring_actors::FunctionRegistry;
use wellspring_actors::taskstore::{ApiClient, ClientError};
use wellspring_log::{DurableOptions, EmbeddedLog, TopicPartition};
use wellspring_nodes::demo;
use wellspring_nodes::services::{ServiceConfig, Services};
use wellspring_nodes::verify::{VerifyOptions, verify_experiment};
use wellspring_nodes::workload::{Message, Workload, WorkloadConfig};
use wellspring_protocol::taskstore::{GroupSettings, NewTask, TaskStatus};
use wellspring_test_support::node_process::{NodeProcess, reference_dag_args};

const EXPERIMENT: &str = "EXP-DURABLE";

fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wellspring-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn start(dir: &std::path::Path, args: &[String]) -> NodeProcess {
    NodeProcess::start_on_disk(env!("CARGO_BIN_EXE_wellspring"), dir, "wellspring-0", args)
}

/// The workload's messages as ingest batches: `(topic, body)`.
fn batches(workload: &Workload, size: usize) -> Vec<(&'static str, Value)> {
    let mut out = Vec::new();
    let mut images = Vec::new();
    for message in &workload.messages {
        match message {
            Message::Metadata(layout) => {
                let value: Value =
                    serde_json::from_str(&layout.to_value().to_json_string()).unwrap();
                out.push((
                    "experiment_metadata",
                    json!({"records": [{"key": layout.experiment.to_string(), "value": value}]}),
                ));
            }
            Message::Image(image) => {
                let value: Value =
                    serde_json::from_str(&image.to_value().to_json_string()).unwrap();
                images.push(json!({"key": image.key.to_string(), "value": value, "headers": {"uploader": "test"}}));
                if images.len() == size {
                    out.push((
                        "images_channel",
                        json!({ "records": std::mem::take(&mut images) }),
                    ));
                }
            }
            Message::Bad(_) => {}
        }
    }
    if !images.is_empty() {
        out.push(("images_channel", json!({ "records": images })));
    }
    out
}

async fn post(url: &str, topic: &str, body: &Value) -> (u16, Value) {
    post_with(url, topic, body, None).await
}

async fn post_with(url: &str, topic: &str, body: &Value, token: Option<&str>) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("{url}/api/topics/{topic}/records"))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(body).unwrap());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// What the task store answered, or `None` while the shard is not served yet (503);
/// any other error fails the test.
fn served<T>(answer: Result<T, ClientError>) -> Option<T> {
    match answer {
        Err(ClientError::Refused { status: 503, .. }) => None,
        other => Some(other.unwrap()),
    }
}

async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_stream_restarts_from_its_data_dir_with_every_aggregate_once_and_every_task()
 {
    let services = Services::start(ServiceConfig::quick()).unwrap();
    let args = reference_dag_args(services.variables(), "3s");
    let dir = fresh_dir("durable-node");
    let workload = Workload::build(&WorkloadConfig {
        experiment: EXPERIMENT.into(),
        plates: 2,
        wells: 12,
        sites: 2,
        channels: 3,
        metadata_after: 10,
        ..WorkloadConfig::default()
    })
    .unwrap();
    let batches = batches(&workload, 12);
    let half = batches.len() / 2;

    let mut node = start(&dir, &args);
    // Tasks queued in the task store, with no worker to take them.
    let client = ApiClient::new(&node.url, None).unwrap();
    let group = serde_json::from_value::<GroupSettings>(json!({"name": "stitching"})).unwrap();
    wait_for("the task store's groups", async || {
        served(client.create_group(&group).await).is_some()
    })
    .await;
    let mut tasks: Vec<Uuid> = Vec::new();
    for i in 0..10 {
        let task = NewTask {
            cmd: vec!["stitch".into(), format!("plate-{i}")],
            group: "stitching".into(),
            labels: Default::default(),
            idempotency_key: Some(format!("stitch-{i}")),
        };
        let mut submitted = None;
        wait_for("the task store's shards", async || {
            submitted = served(client.submit(&task).await);
            submitted.is_some()
        })
        .await;
        tasks.push(submitted.unwrap().0.id);
    }
    for (topic, body) in &batches[..half] {
        let (status, answer) = post(&node.url, topic, body).await;
        assert_eq!(status, 200, "{answer}");
    }
    // Some sites are done (aggregated, their outputs committed) when the node dies.
    wait_for("the first sites", async || {
        node.counter("wellspring_out_total", "images-site").await > 0.0
    })
    .await;
    node.kill();

    let mut node = start(&dir, &args);
    let client = ApiClient::new(&node.url, None).unwrap();
    for id in &tasks {
        // Until the restored node serves the task store's shards, it answers 503.
        let mut task = None;
        wait_for("the restored task store", async || {
            task = served(client.get(*id).await);
            task.is_some()
        })
        .await;
        assert_eq!(
            task.unwrap().status,
            TaskStatus::Available,
            "task {id} kept"
        );
    }
    // The uploader did not hear back for its last batch before the crash: it sends it again.
    for (topic, body) in &batches[half - 1..] {
        let (status, answer) = post(&node.url, topic, body).await;
        assert_eq!(status, 200, "{answer}");
    }
    wait_for(
        "the experiment's aggregate, every task call finished",
        async || node.reference_dag_finished().await,
    )
    .await;
    assert!(node.terminate().success(), "a SIGTERMed node exits cleanly");

    // The stopped node's log, read from its directory.
    let log = EmbeddedLog::open(DurableOptions::new(&dir)).unwrap();
    let registry = FunctionRegistry::with_builtins();
    let dag = demo::load_dag(None, &registry, &services).unwrap();
    let report = verify_experiment(&log, &VerifyOptions::for_dag(&dag, EXPERIMENT), |_| {})
        .await
        .unwrap();
    assert!(report.ok(), "{}", report.render());
    assert!(report.dead_letters.is_empty(), "{}", report.render());
    let images = (0..8)
        .map(|p| {
            log.read(&TopicPartition::new("images_channel", p), 0, usize::MAX)
                .unwrap()
                .len()
        })
        .sum::<usize>();
    assert!(
        images >= workload.image_count(),
        "every posted image is on disk: {images}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_bad_records_is_refused_whole_with_each_bad_record_named() {
    let services = Services::start(ServiceConfig::quick()).unwrap();
    let args = reference_dag_args(services.variables(), "3s");
    let dir = fresh_dir("durable-ingest");
    let mut node = start(&dir, &args);
    let good = json!({
        "experiment_id": "EXP-X", "cell_type": "HUVEC", "plate_number": 1,
        "plate_barcode": "BC1", "well": "B02", "site": 1, "channel": 1, "location": "file:///x.tif"
    });
    let body = json!({"records": [
        {"key": "EXP-X/1/B02/1/1", "value": good},
        {"key": "EXP-X/1/B02/1/2", "value": {"experiment_id": "EXP-X", "plate_number": "one"}},
        {"key": 7, "value": good},
        {"value": good, "colour": "red"},
        {"key": "EXP-X/1/B02/1/3", "value": good, "headers": {"n": 1}},
    ]});
    let (status, answer) = post(&node.url, "images_channel", &body).await;
    assert_eq!(status, 422, "{answer}");
    let refused: Vec<u64> = answer["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    assert_eq!(refused, vec![1, 2, 3, 4], "{answer}");
    let errors = answer["records"][0]["errors"].to_string();
    assert!(
        errors.contains("value.plate_number") && errors.contains("value.well"),
        "{errors}"
    );
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("nothing was written"),
        "{answer}"
    );

    // Other refusals: an unknown topic, a body that is not a batch, too big a body.
    let (status, answer) = post(&node.url, "images_site", &body).await;
    assert_eq!(status, 404, "{answer}");
    assert!(answer.to_string().contains("images_channel"), "{answer}");
    let (status, _) = post(&node.url, "images_channel", &json!({"records": []})).await;
    assert_eq!(status, 400);
    let (status, _) = post(&node.url, "images_channel", &json!([good])).await;
    assert_eq!(status, 400);
    let huge = json!({"records": [{"key": "k", "value": {"location": "x".repeat(2 << 20)}}]});
    let (status, _) = post(&node.url, "images_channel", &huge).await;
    assert_eq!(status, 413);

    // The good record alone goes in, and is answered with where it went.
    let (status, answer) = post(
        &node.url,
        "images_channel",
        &json!({"records": [{"key": "EXP-X/1/B02/1/1", "value": good}]}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["offsets"].as_array().unwrap().len(), 1, "{answer}");
    assert!(node.terminate().success());

    // On disk: the one good record, nothing of the refused batch.
    let log = EmbeddedLog::open(DurableOptions::new(&dir)).unwrap();
    let stored: usize = (0..8)
        .map(|p| {
            log.read(&TopicPartition::new("images_channel", p), 0, usize::MAX)
                .unwrap()
                .len()
        })
        .sum();
    assert_eq!(stored, 1);
}

/// `wellspring services` on ports of its own, as a child process.
struct ServicesProcess(std::process::Child);

impl Drop for ServicesProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_and_verify_data_dir_run_the_reference_dag_by_hand() {
    use std::io::BufRead;
    // Free ports of this test's own (--first-port 0), away from the usual 9101-9104.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_wellspring"))
        .args(["services", "--first-port", "0", "--latency", "1ms"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let services = ServicesProcess(child);
    let mut said = Vec::new();
    let mut urls: Vec<(String, String)> = Vec::new();
    for line in std::io::BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
    {
        let mut words = line.split_whitespace();
        if let (Some(name), Some(url)) = (words.next(), words.next())
            && name.ends_with("-url")
            && url.starts_with("http://")
        {
            urls.push((name.to_owned(), url.to_owned()));
        }
        said.push(line);
        if urls.len() == 4 {
            break;
        }
    }
    assert_eq!(urls.len(), 4, "wellspring services said: {said:?}");
    let distinct: std::collections::BTreeSet<&String> = urls.iter().map(|(_, url)| url).collect();
    assert_eq!(distinct.len(), 4, "{urls:?}");
    let args = reference_dag_args(urls, "3s");
    let dir = fresh_dir("durable-verify");
    let mut node = start(&dir, &args);
    let workload = Workload::build(&WorkloadConfig {
        experiment: "EXP-BY-HAND".into(),
        plates: 1,
        wells: 4,
        sites: 2,
        channels: 2,
        metadata_after: 0,
        ..WorkloadConfig::default()
    })
    .unwrap();
    for (topic, body) in batches(&workload, 8) {
        let (status, answer) = post(&node.url, topic, &body).await;
        assert_eq!(status, 200, "{answer}");
    }
    wait_for(
        "the experiment's aggregate, every task call finished",
        async || node.reference_dag_finished().await,
    )
    .await;
    // A running node holds its directory.
    let verify = |experiment: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_wellspring"))
            .args(["verify", "--data-dir", &dir.display().to_string()])
            .args(["--experiment", experiment, "--no-progress"])
            .output()
            .unwrap()
    };
    let busy = verify("EXP-BY-HAND");
    assert_eq!(busy.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&busy.stderr).contains("in use"),
        "{busy:?}"
    );
    assert!(node.terminate().success());
    let checked = verify("EXP-BY-HAND");
    let stdout = String::from_utf8_lossy(&checked.stdout);
    assert!(
        checked.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(stdout.contains("every aggregate exactly once"), "{stdout}");
    // An experiment the log never saw is said to be unknown.
    let missing = verify("EXP-NEVER");
    assert_eq!(missing.status.code(), Some(2), "{missing:?}");
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no layout of experiment EXP-NEVER"),
        "{missing:?}"
    );
    drop(services);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_needs_the_nodes_token_when_it_has_one() {
    let services = Services::start(ServiceConfig::quick()).unwrap();
    let mut args = reference_dag_args(services.variables(), "3s");
    let dir = fresh_dir("durable-token");
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    args.extend(["--token-file".into(), token_file.display().to_string()]);
    let mut node = start(&dir.join("log"), &args);
    let body = json!({"records": [{"key": "EXP-T", "value": {"experiment_id": "EXP-T"}}]});
    let (status, _) = post(&node.url, "experiment_metadata", &body).await;
    assert_eq!(status, 401);
    let (status, _) = post_with(&node.url, "experiment_metadata", &body, Some("wrong")).await;
    assert_eq!(status, 401);
    // With the token the call is served (this record then fails its schema: 422).
    let (status, answer) = post_with(
        &node.url,
        "experiment_metadata",
        &body,
        Some("s3cret-token"),
    )
    .await;
    assert_eq!(status, 422, "{answer}");
    assert!(node.terminate().success());
}

#[test]
fn a_corrupt_data_dir_stops_the_node_with_a_message_naming_the_file() {
    let dir = fresh_dir("durable-corrupt");
    std::fs::create_dir_all(&dir).unwrap();
    let journal = dir.join("journal-00000000000000000000.log");
    std::fs::write(&journal, b"these bytes were never a Wellspring log").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wellspring"))
        .args(["run", "--http-addr", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains(&journal.display().to_string()), "{said}");
    assert!(said.contains("backup"), "{said}");
    // And --data-dir with --kafka is one log too many.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wellspring"))
        .args([
            "run",
            "--http-addr",
            "127.0.0.1:0",
            "--kafka",
            "127.0.0.1:1",
            "--data-dir",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("give one of them"));
}
