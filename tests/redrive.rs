//! Dead-letter redrive as an operator meets it: a service answers 503 past its retries
//! while a plate goes through; the dead letters are listed with their metadata; the
//! service recovers; `wellspring dead-letters redrive` sends them back into the task
//! stage, once; every output is there exactly once by id. A real node (its API on
//! loopback, the embedded log shared with the test), a real HTTP service on loopback and
//! the real `wellspring` binary.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{
    Answer, ScriptedServer, block_on, image_records, load, publish_plates, read_all as read,
    stderr, stdout, wait_for, wellspring_with,
};
use serde_json::Value;
use wellspring_actors::FunctionRegistry;
use wellspring_log::{EmbeddedLog, Log, LogRecord};
use wellspring_nodes::run::{RunOptions, start};
use wellspring_protocol::{MessageId, synthetic};

const TOKEN: &str = "redrive-test-token";
const DEAD_LETTERS: &str = "lab.dead-letters";

/// The `wellspring-id` of every record of `topic`, with how often each is there.
fn ids(log: &EmbeddedLog, topic: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for record in read(log, topic) {
        let id = record
            .header("wellspring-id")
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        *out.entry(id).or_default() += 1;
    }
    out
}

/// `wellspring ARGS` to its end, with the node's token in the environment.
fn wellspring(args: &[&str]) -> Output {
    wellspring_with(args, &[("WELLSPRING_API_TOKEN", TOKEN)])
}

/// Runs `wellspring ARGS --json` and reads its answer; it must succeed.
fn json_of(args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    let output = wellspring(&args);
    assert!(
        output.status.success(),
        "wellspring {args:?}: {}{}",
        stdout(&output),
        stderr(&output)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn items(answer: &Value, list: &str) -> Vec<Value> {
    answer[list].as_array().unwrap().clone()
}

#[test]
fn dead_letters_of_a_service_that_was_down_are_listed_redriven_once_and_yield_each_output_once() {
    // The features service: down (503, past the task's retries) until told otherwise.
    let down = Arc::new(AtomicBool::new(true));
    let service = {
        let down = down.clone();
        ScriptedServer::start(move |seen| {
            if down.load(Ordering::SeqCst) {
                Answer::status(503)
            } else {
                Answer::ok(&format!(r#"{{"cell_count": 7, "path": "{}"}}"#, seen.path))
            }
        })
    };
    let registry = FunctionRegistry::with_builtins();
    let dag = load(
        common::SITE_FEATURES_DAG,
        &registry,
        &[("svc", service.url.clone())],
    );
    let log = EmbeddedLog::new();
    let mut options = RunOptions::new("127.0.0.1:0".parse().unwrap());
    options.dags = vec![dag];
    options.token = Some(TOKEN.into());
    options.node_id = "redrive-0".into();
    let node = start(options, Some(Arc::new(log.clone()) as Arc<dyn Log>)).unwrap();
    let url = node.url();

    // One plate: 3 wells x 2 sites x 2 channels; every site's features call fails.
    let layout = synthetic::layout("EXP-R", 1, 3, 2, 2).unwrap();
    let images = synthetic::images(&layout, "HUVEC");
    let site_keys: BTreeSet<String> = images
        .iter()
        .map(|i| {
            let key = i.key.to_string();
            key.rsplit_once('/').unwrap().0.to_owned()
        })
        .collect();
    assert_eq!(site_keys.len(), 6);
    publish_plates(&log, "metadata", &layout, "images", &images);
    wait_for("a dead letter per site", || {
        read(&log, DEAD_LETTERS).len() == 6
    });
    assert!(ids(&log, "features").is_empty(), "nothing can be out yet");

    // Listed with their metadata, from the node's API (the view may lag the topic).
    let args = ["dead-letters", "list", "--url", &url, "--node", "features"];
    let mut listed = Value::Null;
    wait_for("the view to list six dead letters", || {
        listed = json_of(&args);
        listed["total"] == 6
    });
    let letters = items(&listed, "dead_letters");
    let mut listed_sites = BTreeSet::new();
    for letter in &letters {
        assert_eq!(letter["node"], "features", "{letter}");
        assert_eq!(letter["experiment"], "EXP-R", "{letter}");
        assert_eq!(letter["plate"], 1, "{letter}");
        assert!(
            letter["well"].is_string() && letter["site"].is_u64(),
            "{letter}"
        );
        assert!(
            letter["reason"].as_str().unwrap().contains("503"),
            "{letter}"
        );
        assert_eq!(
            letter["attempts"], 2,
            "one call and its one retry: {letter}"
        );
        let key = letter["key"].as_str().unwrap();
        assert_eq!(
            key,
            format!(
                "EXP-R/1/{}/{}",
                letter["well"].as_str().unwrap(),
                letter["site"]
            )
        );
        listed_sites.insert(key.to_owned());
    }
    assert_eq!(listed_sites, site_keys);
    // The text form names the same, and a filter narrows it.
    let text = stdout(&wellspring(&[
        "dead-letters",
        "list",
        "--url",
        &url,
        "--reason",
        "503",
    ]));
    assert!(text.contains("6 dead letters"), "{text}");
    assert!(text.contains("EXP-R plate 1 B02 site 1"), "{text}");
    let none = json_of(&[
        "dead-letters",
        "list",
        "--url",
        &url,
        "--experiment",
        "EXP-OTHER",
    ]);
    assert_eq!(none["total"], 0, "{none}");

    // The service recovers. A dry run says what would go where, and changes nothing.
    down.store(false, Ordering::SeqCst);
    let calls_before = service.requests();
    let dry = json_of(&[
        "dead-letters",
        "redrive",
        "--url",
        &url,
        "--node",
        "features",
        "--dry-run",
    ]);
    assert_eq!(dry["dry_run"], true);
    let would = items(&dry, "redriven");
    assert_eq!(would.len(), 6, "{dry}");
    for item in &would {
        assert_eq!(item["topic"], "wellspring.lab.features.input", "{item}");
        assert_eq!(item["redriven_before"], 0, "{item}");
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(ids(&log, "features").is_empty(), "a dry run sends nothing");
    assert_eq!(service.requests(), calls_before, "a dry run calls nothing");
    assert!(
        read(&log, "wellspring.dead-letter-redrives").is_empty(),
        "a dry run records nothing"
    );

    // The redrive: each dead letter back into the task stage (not the whole DAG).
    let site_records_before = read(&log, "wellspring.lab.site.input").len();
    let answer = json_of(&[
        "dead-letters",
        "redrive",
        "--url",
        &url,
        "--node",
        "features",
    ]);
    assert_eq!(items(&answer, "redriven").len(), 6, "{answer}");
    assert!(items(&answer, "skipped").is_empty(), "{answer}");
    let expected: BTreeSet<String> = site_keys
        .iter()
        .map(|key| MessageId::derive("lab", "features", key).to_string())
        .collect();
    wait_for("every site's features", || ids(&log, "features").len() == 6);
    let out = ids(&log, "features");
    assert_eq!(
        out.keys().cloned().collect::<BTreeSet<_>>(),
        expected,
        "each output keeps the id it would have had"
    );
    assert!(out.values().all(|n| *n == 1), "each exactly once: {out:?}");
    assert_eq!(
        read(&log, "wellspring.lab.site.input").len(),
        site_records_before,
        "nothing went back through the grouping"
    );
    let redriven: Vec<LogRecord> = read(&log, "wellspring.lab.features.input")
        .into_iter()
        .filter(|r| r.header("wellspring-redrive-of").is_some())
        .collect();
    assert_eq!(
        redriven.len(),
        6,
        "each marked as the redrive of its dead letter"
    );

    // Again: nothing, each skipped with the reason.
    let second = json_of(&[
        "dead-letters",
        "redrive",
        "--url",
        &url,
        "--node",
        "features",
    ]);
    assert!(items(&second, "redriven").is_empty(), "{second}");
    let skipped = items(&second, "skipped");
    assert_eq!(skipped.len(), 6, "{second}");
    assert!(
        skipped
            .iter()
            .all(|s| s["why"].as_str().unwrap().contains("redriven before")
                && s["redriven_before"] == 1),
        "{second}"
    );
    let text = stdout(&wellspring(&[
        "dead-letters",
        "redrive",
        "--url",
        &url,
        "--plate",
        "1",
    ]));
    assert!(text.starts_with("redrove 0 dead letters"), "{text}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ids(&log, "features"), out, "a second redrive sends nothing");

    // --again, for one of them by id: it goes back once more, and its output keeps its
    // id (a redrive racing a success yields one output by id).
    let one = letters[0]["id"].as_str().unwrap().to_owned();
    let token_file =
        std::env::temp_dir().join(format!("wellspring-redrive-{}", std::process::id()));
    std::fs::write(&token_file, TOKEN).unwrap();
    let again = wellspring_with(
        &[
            "dead-letters",
            "redrive",
            "--url",
            &url,
            "--id",
            &one,
            "--again",
            "--json",
            "--token-file",
            token_file.to_str().unwrap(),
        ],
        &[],
    );
    assert!(again.status.success(), "{}", stderr(&again));
    let again: Value = serde_json::from_slice(&again.stdout).unwrap();
    let again_items = items(&again, "redriven");
    assert_eq!(again_items.len(), 1, "{again}");
    assert_eq!(again_items[0]["id"], one.as_str());
    assert_eq!(again_items[0]["redriven_before"], 1);
    wait_for("the output once more", || {
        ids(&log, "features").values().sum::<usize>() == 7
    });
    let repeated = ids(&log, "features");
    assert_eq!(repeated.len(), 6, "still one id per site: {repeated:?}");
    let key = letters[0]["key"].as_str().unwrap();
    assert_eq!(
        repeated[&MessageId::derive("lab", "features", key).to_string()],
        2
    );

    // Plain errors: what could not run says what to do (exit 2); what failed, 1.
    let unsaid = wellspring(&["dead-letters", "redrive", "--url", &url]);
    assert_eq!(unsaid.status.code(), Some(2), "{}", stderr(&unsaid));
    assert!(stderr(&unsaid).contains("--id ID"), "{}", stderr(&unsaid));
    let unreachable = wellspring(&["dead-letters", "list", "--url", "http://127.0.0.1:1"]);
    assert_eq!(unreachable.status.code(), Some(2));
    assert!(
        stderr(&unreachable).contains("cannot reach") && stderr(&unreachable).contains("--url"),
        "{}",
        stderr(&unreachable)
    );
    let unknown = wellspring(&[
        "dead-letters",
        "redrive",
        "--url",
        &url,
        "--id",
        "no-such-id",
    ]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        stderr(&unknown).contains("no dead letter has the id no-such-id"),
        "{}",
        stderr(&unknown)
    );
    let no_token = wellspring_with(&["dead-letters", "list", "--url", &url], &[]);
    assert_eq!(no_token.status.code(), Some(1));
    assert!(stderr(&no_token).contains("401"), "{}", stderr(&no_token));
    let bad_since = wellspring(&[
        "dead-letters",
        "list",
        "--url",
        &url,
        "--since",
        "yesterday",
    ]);
    assert_eq!(bad_since.status.code(), Some(2));
    assert!(
        stderr(&bad_since).contains("duration ago"),
        "{}",
        stderr(&bad_since)
    );

    // The API itself: the token rule, strict bodies and the body limit.
    let post = |body: String, token: Option<&str>| -> (u16, String) {
        block_on(async {
            let client = reqwest::Client::builder().no_proxy().build().unwrap();
            let mut request = client
                .post(format!("{url}/api/dead-letters/redrive"))
                .header("content-type", "application/json")
                .body(body);
            if let Some(token) = token {
                request = request.header("authorization", format!("Bearer {token}"));
            }
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        })
    };
    let dry_body = r#"{"filter": {"node": "features"}, "dry_run": true}"#.to_owned();
    assert_eq!(post(dry_body.clone(), None).0, 401);
    let (status, body) = post(dry_body, Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    let (status, body) = post(r#"{"filter": {"nod": "features"}}"#.into(), Some(TOKEN));
    assert_eq!(status, 400, "{body}");
    let (status, body) = post("{}".into(), Some(TOKEN));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("say which dead letters"), "{body}");
    let huge = format!(r#"{{"ids": ["{}"]}}"#, "x".repeat(2 * 1024 * 1024));
    assert_eq!(post(huge, Some(TOKEN)).0, 413);

    let _ = std::fs::remove_file(token_file);
    node.stop().unwrap();
}

/// A queue task's dead letter (a worker reported it failed for good) goes back as a new
/// task: the task store drops repeated submissions by the record's id, so the redrive
/// must not be answered by the task that failed, and its output keeps the record's id.
#[test]
fn a_queue_tasks_dead_letter_goes_back_to_the_workers_as_a_new_task_with_the_same_output_id() {
    use wellspring_actors::taskstore::ApiClient;
    use wellspring_protocol::redrive::{DeadLetterFilter, RedriveRequest};
    use wellspring_protocol::taskstore::{Claim, Millis, Report, TaskView};

    let yaml = r#"
name: segmentation
settings: {partitions: 2}
topics:
  images: {value-schema: channel_level, partitions: 2}
  segments: {value-schema: json}
tasks:
  segment:
    type: queue
    group: segmentation
    cmd: ["segment.py", "{location}"]
    group-settings: {retry: {max-attempts: 1}}
    input-schema: channel_level
graph:
  images: {type: topic-stream, topic-name: images}
  segment: {type: external-task, stream: images, task-name: segment}
  out: {type: publish, stream: segment, topic-name: segments}
"#;
    let registry = FunctionRegistry::with_builtins();
    let dag = load(yaml, &registry, &[]);
    let log = EmbeddedLog::new();
    let mut options = RunOptions::new("127.0.0.1:0".parse().unwrap());
    options.dags = vec![dag];
    options.task_partitions = 2;
    let node = start(options, Some(Arc::new(log.clone()) as Arc<dyn Log>)).unwrap();
    let api = ApiClient::new(&node.url(), None).unwrap();

    let layout = synthetic::layout("EXP-Q", 1, 1, 1, 3).unwrap();
    let images = synthetic::images(&layout, "HUVEC");
    block_on(async {
        log.producer()
            .unwrap()
            .send(image_records("images", &images))
            .await
            .unwrap();
    });
    // A worker: channel 3's segmentation fails while `failing`, the rest succeed.
    let work = |failing: bool, tasks: usize| -> Vec<TaskView> {
        let mut taken = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while taken.len() < tasks {
            assert!(
                Instant::now() < deadline,
                "the workers got {} of {tasks} tasks",
                taken.len()
            );
            let claim = Claim {
                groups: vec!["segmentation".into()],
                client_id: "gpu-worker".into(),
                duration: Millis(30_000),
            };
            let Some(task) = block_on(api.claim(&claim)).unwrap_or(None) else {
                std::thread::sleep(Duration::from_millis(25));
                continue;
            };
            let fail = failing && task.cmd[1].ends_with("ch3.tiff");
            let report = Report {
                client_id: "gpu-worker".into(),
                id: task.id,
                version: task.version,
                elapsed_time: None,
                output: (!fail).then(|| serde_json::json!({"cells": 17, "image": task.cmd[1]})),
                error: fail.then(|| "segmentation diverged".to_owned()),
            };
            block_on(api.report(&report, !fail)).unwrap();
            taken.push(task);
        }
        taken
    };
    let first = work(true, 3);
    wait_for("two outputs and a dead letter", || {
        ids(&log, "segments").len() == 2 && read(&log, "segmentation.dead-letters").len() == 1
    });

    let answer = block_on(api.redrive(&RedriveRequest {
        filter: DeadLetterFilter {
            node: Some("segment".into()),
            ..Default::default()
        },
        ..Default::default()
    }))
    .unwrap();
    assert_eq!(answer.redriven.len(), 1, "{answer:?}");
    assert_eq!(
        answer.redriven[0].topic.as_deref(),
        Some("wellspring.segmentation.segment.input")
    );
    // A new task (not the one that failed), and once it succeeds, the third output.
    let again = work(false, 1);
    assert!(again[0].cmd[1].ends_with("ch3.tiff"), "{again:?}");
    assert!(
        first.iter().all(|t| t.id != again[0].id),
        "the redrive is a task of its own"
    );
    wait_for("the third output", || ids(&log, "segments").len() == 3);
    let expected: BTreeSet<String> = images
        .iter()
        .map(|i| MessageId::derive("segmentation", "segment", &i.key.to_string()).to_string())
        .collect();
    let out = ids(&log, "segments");
    assert_eq!(out.keys().cloned().collect::<BTreeSet<_>>(), expected);
    assert!(out.values().all(|n| *n == 1), "{out:?}");
    node.stop().unwrap();
}

/// The same on a broker (tansu, transactions on): a node process on Kafka, its dead
/// letters redriven once through the CLI, every site's features present afterwards and
/// a second redrive sending nothing.
#[test]
fn on_kafka_a_redrive_reads_the_dead_letters_and_the_ledger_from_the_broker() {
    use wellspring_test_support::broker::Broker;
    use wellspring_test_support::node_process::NodeProcess;

    let broker = Broker::start();
    let down = Arc::new(AtomicBool::new(true));
    let service = {
        let down = down.clone();
        ScriptedServer::start(move |_| {
            if down.load(Ordering::SeqCst) {
                Answer::status(503)
            } else {
                Answer::ok(r#"{"cell_count": 5}"#)
            }
        })
    };
    let dir = std::env::temp_dir().join(format!("wellspring-redrive-kafka-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dag_file = dir.join("lab.yaml");
    std::fs::write(&dag_file, common::SITE_FEATURES_DAG).unwrap();
    let args: Vec<String> = vec![
        "--dag".into(),
        dag_file.display().to_string(),
        "--set".into(),
        format!("svc={}", service.url),
        "--session-timeout".into(),
        "6s".into(),
    ];
    let node = NodeProcess::start(
        env!("CARGO_BIN_EXE_wellspring"),
        &broker.address,
        "redrive-k",
        &args,
    );

    // One plate through the node's record API: its layout, then its images.
    let layout = synthetic::layout("EXP-K", 1, 2, 2, 2).unwrap();
    let post = |topic: &str, records: Vec<Value>| {
        let body = serde_json::json!({ "records": records });
        let (status, answer) = block_on(async {
            let client = reqwest::Client::builder().no_proxy().build().unwrap();
            let response = client
                .post(format!("{}/api/topics/{topic}/records", node.url))
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        });
        assert_eq!(status, 200, "{answer}");
    };
    let value = |v: wellspring_protocol::Value| -> Value {
        serde_json::from_str(&v.to_json_string()).unwrap()
    };
    post(
        "metadata",
        vec![serde_json::json!({"key": "EXP-K", "value": value(layout.to_value())})],
    );
    post(
        "images",
        synthetic::images(&layout, "HUVEC")
            .iter()
            .map(|i| serde_json::json!({"key": i.key.to_string(), "value": value(i.to_value())}))
            .collect(),
    );
    let list = [
        "dead-letters",
        "list",
        "--url",
        node.url.as_str(),
        "--experiment",
        "EXP-K",
    ];
    let mut listed = Value::Null;
    wait_for("four dead letters on the broker", || {
        listed = json_of_untokened(&list);
        listed["total"] == 4
    });
    assert!(
        items(&listed, "dead_letters")
            .iter()
            .all(|d| d["node"] == "features" && d["site"].is_u64()),
        "{listed}"
    );

    down.store(false, Ordering::SeqCst);
    let redrive = [
        "dead-letters",
        "redrive",
        "--url",
        node.url.as_str(),
        "--experiment",
        "EXP-K",
    ];
    let answer = json_of_untokened(&redrive);
    assert_eq!(items(&answer, "redriven").len(), 4, "{answer}");
    let features = |detail: &Value| {
        detail["levels"]
            .as_array()
            .and_then(|levels| levels.iter().find(|l| l["name"] == "features"))
            .and_then(|l| l["present"].as_u64())
    };
    wait_for("every site's features on the broker", || {
        let detail = json_of_untokened(&["status", "EXP-K", "--url", node.url.as_str()]);
        features(&detail) == Some(4)
    });
    let second = json_of_untokened(&redrive);
    assert!(items(&second, "redriven").is_empty(), "{second}");
    assert_eq!(items(&second, "skipped").len(), 4, "{second}");
    let _ = std::fs::remove_dir_all(dir);
}

/// `wellspring ARGS --json` against a node without a token.
fn json_of_untokened(args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    let output = wellspring_with(&args, &[]);
    assert!(
        output.status.success(),
        "wellspring {args:?}: {}",
        stderr(&output)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}
