//! Re-runs and backfills as an operator meets them: `wellspring rerun` redoes one DAG
//! node for one plate in a new generation (other plates and the nodes downstream left
//! alone, unless `--downstream`), and `wellspring backfill` runs a node added after an
//! experiment finished over that whole experiment, repeating nothing else. A real node
//! (its API on loopback, the embedded log shared with the test), a real HTTP service on
//! loopback and the real `wellspring` binary.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use common::{
    Answer, ScriptedServer, load, publish_plates, read_all, stderr, stdout, wait_for,
    wellspring_with,
};
use serde_json::Value;
use wellspring_actors::FunctionRegistry;
use wellspring_log::{EmbeddedLog, Log, LogRecord};
use wellspring_nodes::run::{RunOptions, RunningNode, start};
use wellspring_protocol::{MessageId, synthetic};

/// Four levels, a task on sites and one on wells, every stream published.
const HIERARCHY_DAG: &str = r#"
name: lab
settings: {partitions: 2}
variables: {svc: "http://127.0.0.1:1"}
topics:
  images: {value-schema: channel_level, partitions: 2}
  metadata: {value-schema: experiment_metadata, partitions: 1}
  sites: {value-schema: site_level}
  features: {value-schema: json}
  wells: {value-schema: well_level}
  plates: {value-schema: plate_level}
  experiments: {value-schema: experiment_level}
tasks:
  site-features:
    url: "${svc}/v1/sites/{experiment_id}/{plate_number}/{well}/{site}/features"
    input-schema: site_level
    retries: 1
    backoff: {initial: 10ms, max: 10ms, jitter: false}
graph:
  images: {type: topic-stream, topic-name: images}
  metadata: {type: topic-table, topic-name: metadata}
  site: {type: stream-operation, inputs: [images, metadata], function: aggregations/images-site-grouping}
  site-out: {type: publish, stream: site, topic-name: sites}
  features: {type: external-task, stream: site, task-name: site-features}
  features-out: {type: publish, stream: features, topic-name: features}
  well: {type: stream-operation, inputs: [site, metadata], function: aggregations/sites-well-grouping}
  well-out: {type: publish, stream: well, topic-name: wells}
  plate: {type: stream-operation, inputs: [well, metadata], function: aggregations/wells-plate-grouping}
  plate-out: {type: publish, stream: plate, topic-name: plates}
  experiment: {type: stream-operation, inputs: [plate, metadata], function: aggregations/plates-experiment-grouping}
  experiment-out: {type: publish, stream: experiment, topic-name: experiments}
"#;

/// Version 2: a thumbnail task on wells, added after the experiment ran.
const THUMBNAILS: &str = r#"
  thumbnails: {type: external-task, stream: well, task-name: well-thumbnails}
  thumbnails-out: {type: publish, stream: thumbnails, topic-name: thumbnails}
"#;

fn with_thumbnails() -> String {
    HIERARCHY_DAG
        .replace(
            "  experiments: {value-schema: experiment_level}\n",
            "  experiments: {value-schema: experiment_level}\n  thumbnails: {value-schema: json}\n",
        )
        .replace(
            "graph:\n",
            "  well-thumbnails:\n    url: \"${svc}/v1/wells/{experiment_id}/{plate_number}/{well}/thumbnail\"\n    input-schema: well_level\n    retries: 1\ngraph:\n",
        )
        .replace("name: lab\n", "name: lab\nversion: 2\n")
        + THUMBNAILS
}

/// A service that answers every call with where it was called.
fn service() -> ScriptedServer {
    ScriptedServer::start(|seen| Answer::ok(&format!(r#"{{"path": "{}"}}"#, seen.path)))
}

fn start_node(dag_yaml: &str, service: &ScriptedServer, log: &EmbeddedLog) -> RunningNode {
    let registry = FunctionRegistry::with_builtins();
    let dag = load(dag_yaml, &registry, &[("svc", service.url.clone())]);
    let mut options = RunOptions::new("127.0.0.1:0".parse().unwrap());
    options.dags = vec![dag];
    options.node_id = "rerun-0".into();
    start(options, Some(Arc::new(log.clone()) as Arc<dyn Log>)).unwrap()
}

/// Publishes a whole experiment: 2 plates of 3 wells, 2 sites, 2 channels.
fn publish_experiment(log: &EmbeddedLog, experiment: &str) {
    let layout = synthetic::layout(experiment, 2, 3, 2, 2).unwrap();
    let images = synthetic::images(&layout, "HUVEC");
    publish_plates(log, "metadata", &layout, "images", &images);
}

fn header(record: &LogRecord, name: &str) -> Option<String> {
    record
        .header(name)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

fn key(record: &LogRecord) -> String {
    String::from_utf8_lossy(record.key.as_deref().unwrap()).into_owned()
}

/// The records of `topic` in re-run `generation` (0: those without the header).
fn of_generation(log: &EmbeddedLog, topic: &str, generation: u32) -> Vec<LogRecord> {
    read_all(log, topic)
        .into_iter()
        .filter(|r| {
            let g = header(r, "wellspring-generation").map_or(0, |g| g.parse().unwrap());
            g == generation
        })
        .collect()
}

fn keys(records: &[LogRecord]) -> BTreeSet<String> {
    records.iter().map(key).collect()
}

fn ids(records: &[LogRecord]) -> BTreeSet<String> {
    records
        .iter()
        .map(|r| header(r, "wellspring-id").unwrap())
        .collect()
}

/// How many records each output topic holds.
fn counts(log: &EmbeddedLog, topics: &[&str]) -> BTreeMap<String, usize> {
    topics
        .iter()
        .map(|t| ((*t).to_owned(), read_all(log, t).len()))
        .collect()
}

fn wellspring_json(args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    let output = wellspring_with(&args, &[]);
    assert!(
        output.status.success(),
        "wellspring {args:?}: {}{}",
        stdout(&output),
        stderr(&output)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// `wellspring COMMAND --url URL --dag lab ARGS --json`: its answer; it must succeed.
fn call(command: &str, url: &str, args: &[&str]) -> Value {
    let mut all = vec![command, "--url", url, "--dag", "lab"];
    all.extend_from_slice(args);
    wellspring_json(&all)
}

/// `wellspring COMMAND --url URL --dag lab ARGS`, expected to fail: its exit code and
/// what it said.
fn refused(command: &str, url: &str, args: &[&str]) -> (Option<i32>, String) {
    let mut all = vec![command, "--url", url, "--dag", "lab"];
    all.extend_from_slice(args);
    let output = wellspring_with(&all, &[]);
    (output.status.code(), stderr(&output))
}

const OUTPUTS: [&str; 5] = ["sites", "features", "wells", "plates", "experiments"];

#[test]
fn a_rerun_redoes_one_plate_in_a_new_generation_and_downstream_only_when_asked() {
    let service = service();
    let log = EmbeddedLog::new();
    let node = start_node(HIERARCHY_DAG, &service, &log);
    let url = node.url();
    publish_experiment(&log, "EXP-R");
    wait_for("the experiment's record", || {
        read_all(&log, "experiments").len() == 1
    });
    wait_for("every site's features", || {
        read_all(&log, "features").len() == 12
    });
    let first = counts(&log, &OUTPUTS);
    let first_features = read_all(&log, "features");

    // A dry run says what it would send, and sends nothing.
    let dry = call(
        "rerun",
        &url,
        &[
            "--node",
            "features",
            "--experiment",
            "EXP-R",
            "--plate",
            "1",
            "--dry-run",
        ],
    );
    assert_eq!(dry["dry_run"], true, "{dry}");
    assert_eq!(dry["sent"], 6, "plate 1's six sites: {dry}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(counts(&log, &OUTPUTS), first, "a dry run sends nothing");

    // Plate 1's site features again: a new generation, published; nothing downstream.
    let calls = service.requests();
    let answer = call(
        "rerun",
        &url,
        &[
            "--node",
            "features",
            "--experiment",
            "EXP-R",
            "--plate",
            "1",
        ],
    );
    assert_eq!(
        answer["generation"], 1,
        "the dry run claimed nothing: {answer}"
    );
    assert_eq!(answer["sent"], 6, "{answer}");
    assert_eq!(answer["topic"], "wellspring.lab.features.input", "{answer}");
    wait_for("plate 1's features in generation 1", || {
        of_generation(&log, "features", 1).len() == 6
    });
    let rerun = of_generation(&log, "features", 1);
    let plate_1_sites: BTreeSet<String> = first_features
        .iter()
        .map(key)
        .filter(|k| k.starts_with("EXP-R/1/"))
        .collect();
    assert_eq!(keys(&rerun), plate_1_sites, "plate 1's sites, each once");
    // Each a new record: not the first run's id, and the first run's id moved into
    // generation 1 (so a replay of the re-run repeats it).
    let expected: BTreeSet<String> = plate_1_sites
        .iter()
        .map(|k| {
            MessageId::derive("lab", "features", k)
                .in_generation(1)
                .to_string()
        })
        .collect();
    assert_eq!(ids(&rerun), expected);
    assert!(ids(&rerun).is_disjoint(&ids(&first_features)));
    assert_eq!(
        service.requests() - calls,
        6,
        "one call per site of plate 1"
    );
    // Nothing else was redone (give stray records a moment to show).
    std::thread::sleep(Duration::from_millis(500));
    let mut after = counts(&log, &OUTPUTS);
    assert_eq!(after.remove("features"), Some(18));
    let mut unchanged = first.clone();
    unchanged.remove("features");
    assert_eq!(after, unchanged, "downstream and other plates untouched");

    // The site grouping for plate 1 again, with --downstream: its sites, their
    // features, its wells and the plate in generation 2; never the experiment (it
    // holds plate 2 too), nothing of plate 2.
    let answer = call(
        "rerun",
        &url,
        &[
            "--node",
            "site",
            "--experiment",
            "EXP-R",
            "--plate",
            "1",
            "--downstream",
        ],
    );
    assert_eq!(answer["generation"], 2, "{answer}");
    assert_eq!(answer["sent"], 12, "plate 1's 12 channel images: {answer}");
    wait_for("plate 1's plate record in generation 2", || {
        of_generation(&log, "plates", 2).len() == 1
    });
    wait_for("plate 1's features in generation 2", || {
        of_generation(&log, "features", 2).len() == 6
    });
    std::thread::sleep(Duration::from_millis(500));
    for (topic, count) in [("sites", 6), ("features", 6), ("wells", 3), ("plates", 1)] {
        let records = of_generation(&log, topic, 2);
        assert_eq!(records.len(), count, "{topic}: {:?}", keys(&records));
        assert!(
            keys(&records).iter().all(|k| k.starts_with("EXP-R/1")),
            "{topic}: only plate 1's"
        );
    }
    assert!(of_generation(&log, "experiments", 2).is_empty());
    assert_eq!(read_all(&log, "experiments").len(), 1);
    let experiment_state = read_all(&log, "wellspring.lab.experiment.changelog");
    assert!(
        !experiment_state.iter().any(|r| key(r).starts_with("#2")),
        "the experiment grouping never saw generation 2: {:?}",
        keys(&experiment_state)
    );
    // Generation 2's aggregates are whole: the plate has its three wells.
    let plate: Value = serde_json::from_slice(
        of_generation(&log, "plates", 2)[0]
            .value
            .as_deref()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(plate["wells"].as_array().map(Vec::len), Some(3), "{plate}");

    // Some wells of the plate: their sites and wells, not the plate (it holds others).
    let answer = call(
        "rerun",
        &url,
        &[
            "--node",
            "site",
            "--experiment",
            "EXP-R",
            "--plate",
            "1",
            "--wells",
            "b2",
            "--downstream",
        ],
    );
    assert_eq!(answer["generation"], 3, "{answer}");
    wait_for("well B02 in generation 3", || {
        of_generation(&log, "wells", 3).len() == 1
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(of_generation(&log, "sites", 3).len(), 2);
    assert_eq!(
        keys(&of_generation(&log, "wells", 3)),
        BTreeSet::from(["EXP-R/1/B02".to_owned()])
    );
    assert!(of_generation(&log, "plates", 3).is_empty());

    // Without --downstream, a grouping's re-run is published and goes no further.
    let answer = call(
        "rerun",
        &url,
        &["--node", "site", "--experiment", "EXP-R", "--plate", "2"],
    );
    assert_eq!(answer["generation"], 4, "{answer}");
    wait_for("plate 2's sites in generation 4", || {
        of_generation(&log, "sites", 4).len() == 6
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        keys(&of_generation(&log, "sites", 4))
            .iter()
            .all(|k| k.starts_with("EXP-R/2/"))
    );
    for topic in ["features", "wells", "plates"] {
        assert!(of_generation(&log, topic, 4).is_empty(), "{topic}");
    }

    // What cannot be done is said, and nothing is claimed.
    let (unknown_code, unknown_says) = refused(
        "rerun",
        &url,
        &["--node", "feature", "--experiment", "EXP-R"],
    );
    assert_eq!(unknown_code, Some(1), "{}", unknown_says);
    assert!(
        unknown_says.contains("no node \"feature\"") && unknown_says.contains("features"),
        "{}",
        unknown_says
    );
    let (nothing_code, nothing_says) = refused(
        "rerun",
        &url,
        &["--node", "features", "--experiment", "EXP-NONE"],
    );
    assert_eq!(nothing_code, Some(1), "{}", nothing_says);
    assert!(
        nothing_says.contains("nothing of experiment EXP-NONE"),
        "{}",
        nothing_says
    );
    let (source_code, source_says) = refused(
        "rerun",
        &url,
        &["--node", "images", "--experiment", "EXP-R"],
    );
    assert_eq!(source_code, Some(1));
    assert!(source_says.contains("topic-stream node"), "{}", source_says);
    let ledger = read_all(&log, "wellspring.reruns");
    assert_eq!(ledger.len(), 8, "four re-runs, each claimed then recorded");
    node.stop().unwrap();
}

/// A restarted node restores a re-run's open aggregates with their generation: a
/// re-run cut by a restart completes in its own generation, not in the first run's.
#[test]
fn a_rerun_survives_a_restart_in_its_generation() {
    let service = service();
    let log = EmbeddedLog::new();
    let node = start_node(HIERARCHY_DAG, &service, &log);
    let url = node.url();
    publish_experiment(&log, "EXP-S");
    wait_for("the experiment's record", || {
        read_all(&log, "experiments").len() == 1
    });
    let answer = call(
        "rerun",
        &url,
        &[
            "--node",
            "site",
            "--experiment",
            "EXP-S",
            "--plate",
            "2",
            "--downstream",
        ],
    );
    assert_eq!(answer["generation"], 1, "{answer}");
    wait_for("plate 2's record in generation 1", || {
        of_generation(&log, "plates", 1).len() == 1
    });
    node.stop().unwrap();
    // The changelogs hold generation 1 apart from the first run, with its scope.
    let changelog = read_all(&log, "wellspring.lab.site.changelog");
    assert!(
        changelog.iter().any(|r| key(r) == "#1"),
        "the re-run's scope is kept: {:?}",
        keys(&changelog)
    );
    assert!(changelog.iter().any(|r| key(r).starts_with("#1/EXP-S/2/")));

    // Restarted: the re-run's closed aggregates are restored in their generation, so
    // nothing is emitted again, in the first run's name or the re-run's.
    let before = read_all(&log, "sites").len();
    let node = start_node(HIERARCHY_DAG, &service, &log);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        read_all(&log, "sites").len(),
        before,
        "the restore emits nothing"
    );
    node.stop().unwrap();
}

#[test]
fn a_backfill_runs_a_new_node_over_a_finished_experiment_and_repeats_nothing_else() {
    let service = service();
    let log = EmbeddedLog::new();
    let v1 = start_node(HIERARCHY_DAG, &service, &log);
    publish_experiment(&log, "EXP-B");
    wait_for("the experiment's record", || {
        read_all(&log, "experiments").len() == 1
    });
    wait_for("every site's features", || {
        read_all(&log, "features").len() == 12
    });
    v1.stop().unwrap();
    let before = counts(&log, &OUTPUTS);
    let wells = read_all(&log, "wells");

    // Version 2 adds the thumbnail task: it never saw EXP-B's wells.
    let v2 = start_node(&with_thumbnails(), &service, &log);
    let url = v2.url();
    std::thread::sleep(Duration::from_millis(300));
    assert!(read_all(&log, "thumbnails").is_empty());

    let dry = call(
        "backfill",
        &url,
        &["--node", "thumbnails", "--experiment", "EXP-B", "--dry-run"],
    );
    assert_eq!(dry["sent"], 6, "{dry}");
    assert_eq!(
        dry["source"], "wells",
        "read from the well stream's topic: {dry}"
    );
    let answer = call(
        "backfill",
        &url,
        &["--node", "thumbnails", "--experiment", "EXP-B"],
    );
    assert_eq!(answer["generation"], 0, "{answer}");
    assert_eq!(answer["experiments"], serde_json::json!([["EXP-B", 6]]));
    wait_for("a thumbnail per well", || {
        read_all(&log, "thumbnails").len() == 6
    });
    let thumbnails = read_all(&log, "thumbnails");
    assert_eq!(
        keys(&thumbnails),
        keys(&wells),
        "every well of the experiment"
    );
    // First-run outputs: the ids the node would have given them live.
    let expected: BTreeSet<String> = keys(&wells)
        .iter()
        .map(|k| MessageId::derive("lab", "thumbnails", k).to_string())
        .collect();
    assert_eq!(ids(&thumbnails), expected);
    assert!(
        thumbnails
            .iter()
            .all(|r| header(r, "wellspring-generation").is_none())
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(counts(&log, &OUTPUTS), before, "nothing else repeated");

    // Again: the same outputs by id (repeats consumers drop), nothing new.
    call("backfill", &url, &["--node", "thumbnails", "--since", "1h"]);
    wait_for("the repeats", || read_all(&log, "thumbnails").len() == 12);
    assert_eq!(ids(&read_all(&log, "thumbnails")), expected);

    // What is not retained is refused in words.
    let (gone_code, gone_says) = refused(
        "backfill",
        &url,
        &["--node", "thumbnails", "--experiment", "EXP-OLD"],
    );
    assert_eq!(gone_code, Some(1), "{}", gone_says);
    assert!(
        gone_says.contains("nothing of experiment EXP-OLD") && gone_says.contains("retention"),
        "{}",
        gone_says
    );
    let (neither_code, neither_says) = refused("backfill", &url, &["--node", "thumbnails"]);
    assert_eq!(neither_code, Some(2), "clap refuses it: {}", neither_says);
    v2.stop().unwrap();
}
