//! The `wellspring` command as a user runs it.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Command, Output};

fn wellspring(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wellspring"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("RUST_LOG", "error")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn temp_file(name: &str, content: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wellspring-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

#[test]
fn validate_accepts_the_examples() {
    for file in ["examples/reference-dag.yaml", "examples/reference-dag.json"] {
        let out = wellspring(&["validate", file]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(text(&out.stdout).contains("DAG microscopy-reference is valid: 18 nodes"));
    }
}

/// One spec with every kind of error at once.
const BROKEN: &str = r#"
name: broken
variables: {svc: "http://127.0.0.1:1"}
topics:
  images: {value-schema: channel_level}
  meta: {value-schema: experiment_metadata}
  out: {value-schema: site_levle}
  wells: {value-schema: channel_level}
tasks:
  call: {url: "${svc}/x", input-schema: well_level}
graph:
  images: {type: topic-stream, topic-name: images}
  meta: {type: topic-table, topic-name: meta}
  site: {type: stream-operation, inputs: [images, meta], function: aggregations/images-site-grouping}
  typo: {type: external-task, stream: imagez, task-name: call}
  no-task: {type: external-task, stream: site, task-name: calll}
  mismatch: {type: external-task, stream: site, task-name: call}
  publish-wells: {type: publish, stream: site, topic-name: wells}
  loop-a: {type: stream-operation, inputs: [loop-b, meta], function: aggregations/sites-well-grouping}
  loop-b: {type: stream-operation, inputs: [loop-a, meta], function: aggregations/images-site-grouping}
"#;

#[test]
fn validate_reports_every_error_with_its_node_and_field() {
    let path = temp_file("broken.yaml", BROKEN);
    let out = wellspring(&["validate", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    for expected in [
        "graph.typo.stream: unknown input \"imagez\" (did you mean \"images\"?)",
        "graph.no-task.task-name: unknown task \"calll\" (did you mean \"call\"?)",
        "topics.out.value-schema: unknown schema \"site_levle\" (did you mean \"site_level\"?)",
        "graph.mismatch.stream: schema mismatch: \"site\" emits site_level but task call expects well_level",
        "graph.publish-wells.stream: schema mismatch: \"site\" emits site_level but topic wells expects channel_level",
        "graph.loop-a.inputs: is on a cycle",
        "graph.loop-b.inputs: is on a cycle",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    assert!(stderr.contains("errors in the DAG spec"), "{stderr}");
}

#[test]
fn validate_explains_unreadable_files_and_bad_overrides() {
    let out = wellspring(&["validate", "no/such/file.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot read no/such/file.yaml"));
    let out = wellspring(&["validate", "examples/reference-dag.yaml", "--set", "nope=1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("variable \"nope\" is not declared"));
    let out = wellspring(&[
        "validate",
        "examples/reference-dag.yaml",
        "--set",
        "image-metrics-url=http://127.0.0.1:1",
    ]);
    assert!(out.status.success());
}

#[test]
fn graph_prints_mermaid_and_dot() {
    let out = wellspring(&["graph", "examples/reference-dag.yaml"]);
    assert!(out.status.success());
    let mermaid = text(&out.stdout);
    assert!(
        mermaid.contains("flowchart LR") && mermaid.contains("aggregations/images-site-grouping")
    );
    let out = wellspring(&["graph", "examples/reference-dag.yaml", "--format", "dot"]);
    let dot = text(&out.stdout);
    assert!(
        dot.starts_with("digraph \"microscopy-reference\"")
            && dot.contains("\"images-well\" -> \"well-thumbnails\";")
    );
}

#[test]
fn the_demo_runs_an_experiment_exactly_once_with_bad_records_dead_lettered() {
    let out = wellspring(&[
        "demo",
        "--plates",
        "2",
        "--wells",
        "24",
        "--bad-records",
        "4",
        "--no-progress",
        "--stall-timeout",
        "30s",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(
        stdout.contains("every expected aggregate exactly once: OK"),
        "{stdout}"
    );
    assert!(stdout.contains("dead letters: 4"), "{stdout}");
    assert!(
        stdout.contains("p50") && stdout.contains("events/s"),
        "{stdout}"
    );
}

#[test]
fn the_demo_rejects_nonsense_options() {
    let out = wellspring(&["demo", "--error-rate", "2"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("--error-rate") && stderr.contains("must be between 0 and 1, not 2"),
        "{stderr}"
    );
}

/// Every duration flag reads durations by the one rule: text with its unit; a number
/// alone is refused (by clap, before anything starts) with how to write it.
#[test]
fn duration_flags_need_their_unit_and_their_bounds() {
    for (args, expected) in [
        (
            vec!["run", "--session-timeout", "30000"],
            "\"30000\" has no unit",
        ),
        (vec!["run", "--session-timeout", "500ms"], "at least 1s"),
        (vec!["run", "--lease-duration", "2s"], "at least 3s"),
        (vec!["run", "--task-partitions", "0"], "--task-partitions"),
        (
            vec!["drain", "--wait", "30"],
            "write it with one, like 30ms or 30s",
        ),
        (
            vec![
                "tasks",
                "claim",
                "--group",
                "g",
                "--client-id",
                "c",
                "--duration",
                "30",
            ],
            "has no unit",
        ),
        (vec!["demo", "--stall-timeout", "30"], "has no unit"),
        (vec!["demo", "--duplicates", "1.5"], "between 0 and 1"),
        (vec!["validate", "x.yaml", "--set", "novalue"], "name=value"),
    ] {
        let out = wellspring(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

/// Starts `wellspring run` on a free port; returns the process and its API's URL.
fn run_node() -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_wellspring"))
        .args([
            "run",
            "--http-addr",
            "127.0.0.1:0",
            "--task-partitions",
            "2",
        ])
        .env("RUST_LOG", "error")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("the node says where it serves")
            .unwrap();
        if let Some(at) = line.find("http://") {
            break line[at..].split_whitespace().next().unwrap().to_owned();
        }
    };
    // Keep draining stderr so the node never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    (child, url)
}

fn tasks(url: &str, args: &[&str]) -> Output {
    let mut all = vec!["tasks", "--url", url];
    all.extend_from_slice(args);
    wellspring(&all)
}

#[test]
fn the_tasks_commands_drive_a_running_node_which_stops_on_sigterm() {
    let (mut node, url) = run_node();
    let out = tasks(
        &url,
        &[
            "create-group",
            "cli group",
            "--max-attempts",
            "2",
            "--max-run-time",
            "5m",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("\"max-run-time\": 300000"));
    // The node may still be taking its shards: submit until it accepts.
    let submitted = (0..200)
        .map(|_| {
            tasks(
                &url,
                &[
                    "submit",
                    "--group",
                    "cli group",
                    "--label",
                    "kind=test",
                    "--",
                    "echo",
                    "hello",
                ],
            )
        })
        .find(|out| out.status.success())
        .expect("the node accepts a task");
    let task: serde_json::Value = serde_json::from_slice(&submitted.stdout).unwrap();
    assert_eq!(task["cmd"], serde_json::json!(["echo", "hello"]));
    let claimed = tasks(
        &url,
        &["claim", "--group", "cli group", "--client-id", "cli"],
    );
    let claimed: serde_json::Value = serde_json::from_slice(&claimed.stdout).unwrap();
    assert_eq!(
        (claimed["id"].clone(), claimed["status"].as_str()),
        (task["id"].clone(), Some("leased"))
    );
    let empty = tasks(
        &url,
        &["claim", "--group", "cli group", "--client-id", "cli"],
    );
    assert!(text(&empty.stdout).contains("no task available"));
    let stats: serde_json::Value =
        serde_json::from_slice(&tasks(&url, &["stats", "--group", "cli group"]).stdout).unwrap();
    assert_eq!(stats["leased"], 1);
    let listed: serde_json::Value = serde_json::from_slice(
        &tasks(
            &url,
            &["list", "--group", "cli group", "--status", "leased"],
        )
        .stdout,
    )
    .unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    let missing = tasks(&url, &["stats", "--group", "nope"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        text(&missing.stderr).contains("404") && text(&missing.stderr).contains("does not exist")
    );

    let killed = Command::new("kill")
        .args(["-TERM", &node.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = node.wait().unwrap();
    assert!(
        status.success(),
        "a node stops cleanly on SIGTERM: {status}"
    );
    let unreachable = tasks(&url, &["stats", "--group", "cli group"]);
    assert!(
        text(&unreachable.stderr).contains("cannot reach"),
        "{}",
        text(&unreachable.stderr)
    );
}

#[test]
fn drain_stops_a_running_node_and_waits_until_it_has() {
    let (mut node, url) = run_node();
    let out = wellspring(&["drain", "--url", &url, "--wait", "1m"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(&format!("{url} stopped after")),
        "{}",
        text(&out.stderr)
    );
    // The node process ends on its own, cleanly.
    let status = node.wait().unwrap();
    assert!(status.success(), "a drained node exits cleanly: {status}");
    let again = wellspring(&["drain", "--url", &url]);
    assert_eq!(again.status.code(), Some(2));
    assert!(text(&again.stderr).contains("cannot reach"));
}

/// `wellspring sim` is the harness's own binary, `wellspring-sim`, found beside
/// `wellspring`: a stand-in for it gets every argument, and its exit code is the
/// command's; without it the command says how to build it. (The harness itself is tested
/// in `simulations/harness/tests/cli.rs`.)
#[cfg(unix)]
#[test]
fn sim_hands_over_to_the_harness_beside_it_or_says_how_to_build_it() {
    use std::os::unix::fs::PermissionsExt;

    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("wellspring-sim-hand-over-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("wellspring");
    let _ = std::fs::remove_file(&copy);
    std::fs::hard_link(env!("CARGO_BIN_EXE_wellspring"), &copy)
        .or_else(|_| std::fs::copy(env!("CARGO_BIN_EXE_wellspring"), &copy).map(drop))
        .unwrap();
    let sim = |args: &[&str]| {
        Command::new(&copy)
            .arg("sim")
            .args(args)
            .env("PATH", "")
            .output()
            .unwrap()
    };

    let missing = sim(&["--seed", "3"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        text(&missing.stderr).contains("cargo build --release -p wellspring-simulations"),
        "{}",
        text(&missing.stderr)
    );

    let harness = dir.join("wellspring-sim");
    std::fs::write(&harness, "#!/bin/sh\necho \"harness: $*\"\nexit 3\n").unwrap();
    std::fs::set_permissions(&harness, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = sim(&["--seeds", "0..2", "--no-progress", "--help"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "harness: --seeds 0..2 --no-progress --help\n"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn run_with_kubernetes_on_but_no_way_to_reach_the_api_says_what_to_do() {
    let home = std::env::temp_dir().join(format!("wellspring-cli-home-{}", std::process::id()));
    std::fs::create_dir_all(&home).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wellspring"))
        .args(["run", "--http-addr", "127.0.0.1:0", "--kube", "on"])
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("KUBECONFIG", home.join("no-such-kubeconfig"))
        .env("HOME", &home)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("Kubernetes"), "{stderr}");
    assert!(
        stderr.contains("--kube-api") && stderr.contains("--kube off"),
        "{stderr}"
    );
    // A bad template directory is named, before anything starts.
    let out = wellspring(&[
        "run",
        "--http-addr",
        "127.0.0.1:0",
        "--kube-api",
        "http://127.0.0.1:9",
        "--worker-templates",
        "no/such/dir",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no/such/dir"),
        "{}",
        text(&out.stderr)
    );
}
