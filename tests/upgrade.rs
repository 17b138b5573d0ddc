//! DAG upgrades as an operator meets them: `wellspring upgrade-check OLD NEW` (its report,
//! `--json` and exit codes) and `wellspring run` refusing a spec that upgrade-check
//! refuses against the one recorded by the node that ran before (the durable embedded
//! log, `--data-dir`).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use wellspring_test_support::node_process::NodeProcess;

const REFERENCE: &str = include_str!("../examples/reference-dag.yaml");

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

fn dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("wellspring-upgrade-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The reference spec with each `(from, to)` replaced once (each must be there).
fn spec(edits: &[(&str, &str)]) -> String {
    let mut text = REFERENCE.to_owned();
    for (from, to) in edits {
        assert!(text.contains(from), "{from:?} is not in the reference spec");
        text = text.replacen(from, to, 1);
    }
    text
}

fn write(dir: &Path, name: &str, content: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path.display().to_string()
}

const V2: (&str, &str) = ("version: 1 ", "version: 2 ");
const NEW_URL: (&str, &str) = (
    "${image-metrics-url}/v1/image-metrics",
    "${image-metrics-url}/v2/image-metrics",
);
const MORE_PLATE_SHARDS: (&str, &str) = (
    "    value-schema: plate_level\n",
    "    value-schema: plate_level\n    partitions: 16\n",
);
const NEW_TASK_NODE: (&str, &str) = (
    "  images-site-output:    {type: publish, stream: images-site, topic-name: images_site}\n",
    "  images-site-output:    {type: publish, stream: images-site, topic-name: images_site}\n  site-qc: {type: external-task, stream: images-site, task-name: extract-site-features}\n",
);

#[test]
fn safe_and_backfilled_changes_pass_with_their_reasons() {
    let dir = dir("check-pass");
    let old = "examples/reference-dag.yaml";
    let safe = write(&dir, "safe.yaml", &spec(&[V2, NEW_URL]));
    let out = wellspring(&["upgrade-check", old, &safe]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains(
            "DAG microscopy-reference: version 1 -> 2, 2 changes: 2 safe, 0 backfilled, 0 refused"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "url: \"${image-metrics-url}/v1/image-metrics\" -> \"${image-metrics-url}/v2/image-metrics\""
        ),
        "{stdout}"
    );
    assert!(stdout.contains("why: read per call"), "{stdout}");

    let added = write(&dir, "added.yaml", &spec(&[V2, NEW_TASK_NODE]));
    let out = wellspring(&["upgrade-check", old, &added]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("1 backfilled, 0 refused"), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.contains("graph.site-qc"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(line.trim_start().starts_with("backfilled"), "{line}");
    assert!(
        stdout.contains("what it needs: done as the roll goes: each node of the new version, as it starts, sends it what images-site emitted"),
        "{stdout}"
    );
}

#[test]
fn a_refused_change_exits_1_with_what_to_do_instead_also_as_json() {
    let dir = dir("check-refused");
    let old = "examples/reference-dag.yaml";
    let refused = write(
        &dir,
        "refused.yaml",
        &spec(&[V2, NEW_URL, MORE_PLATE_SHARDS]),
    );
    let out = wellspring(&["upgrade-check", old, &refused]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    let line = stdout
        .lines()
        .find(|l| l.contains("graph.images-plate"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(line.trim_start().starts_with("refused"), "{line}");
    assert!(line.contains("partitions: 8 -> 16"), "{line}");
    assert!(
        stdout.contains("instead: keep partitions: 8 for images-plate"),
        "{stdout}"
    );
    assert!(
        stderr.contains(
            "the upgrade of microscopy-reference from version 1 to 2 is refused: 1 change"
        ),
        "{stderr}"
    );

    let out = wellspring(&["upgrade-check", "--json", old, &refused]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["verdict"], "refused");
    assert_eq!(
        (
            report["old_version"].as_u64(),
            report["new_version"].as_u64()
        ),
        (Some(1), Some(2))
    );
    let changes = report["changes"].as_array().unwrap();
    let classes: Vec<(&str, &str)> = changes
        .iter()
        .map(|c| {
            (
                c["location"].as_str().unwrap(),
                c["class"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        classes,
        [
            ("version", "safe"),
            ("tasks.image-metrics", "safe"),
            ("graph.images-plate", "refused")
        ]
    );
    assert!(
        changes[2]["advice"]
            .as_str()
            .unwrap()
            .contains("keep partitions: 8")
    );

    // The same change without a new version is refused for that too.
    let unversioned = write(&dir, "unversioned.yaml", &spec(&[NEW_URL]));
    let out = wellspring(&["upgrade-check", old, &unversioned]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("instead: set version: 2 in the new spec"),
        "{}",
        text(&out.stdout)
    );

    // Two different DAGs are not an upgrade of one.
    let other = write(
        &dir,
        "other.yaml",
        &spec(&[("name: microscopy-reference", "name: other-lab")]),
    );
    let out = wellspring(&["upgrade-check", old, &other]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("an upgrade keeps the DAG's name"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_file_that_cannot_be_read_or_parsed_exits_2_naming_it() {
    let dir = dir("check-unreadable");
    let missing = dir.join("missing.yaml").display().to_string();
    let out = wellspring(&["upgrade-check", "examples/reference-dag.yaml", &missing]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot read {missing}")),
        "{stderr}"
    );

    let broken = write(&dir, "broken.yaml", "name: [unclosed\n");
    let out = wellspring(&["upgrade-check", &broken, "examples/reference-dag.yaml"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&broken), "{stderr}");
    assert!(
        stderr.contains(&format!("`wellspring validate {broken}`")),
        "{stderr}"
    );
}

/// `run` with `--data-dir DIR --dag FILE` on a directory a node ran in before.
fn run_on(dir: &Path, dag: &str, extra: &[&str]) -> Output {
    let mut args = vec!["run", "--http-addr", "127.0.0.1:0", "--data-dir"];
    let data_dir = dir.display().to_string();
    args.push(&data_dir);
    args.extend(["--dag", dag]);
    args.extend(extra);
    wellspring(&args)
}

fn start_on(dir: &Path, dag: &str, extra: &[&str]) -> NodeProcess {
    let mut args = vec!["--dag".to_owned(), dag.to_owned()];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    NodeProcess::start_on_disk(env!("CARGO_BIN_EXE_wellspring"), dir, "wellspring-0", &args)
}

#[test]
fn run_refuses_a_spec_that_upgrade_check_refuses_against_the_recorded_one() {
    let specs = dir("run-specs");
    let data = specs.join("data");
    let v1 = "examples/reference-dag.yaml";
    // The first node records version 1 as what the cluster runs.
    let mut node = start_on(&data, v1, &[]);
    assert!(node.terminate().success());

    // A refused change stops the next node at start, with exit 2 and the reasons.
    let refused = write(&specs, "refused.yaml", &spec(&[V2, MORE_PLATE_SHARDS]));
    let out = run_on(&data, &refused, &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "DAG microscopy-reference version 2 is refused against version 1, which the cluster runs (1 change refused)"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("graph.images-plate") && stderr.contains("partitions: 8 -> 16"),
        "{stderr}"
    );
    assert!(
        stderr.contains("Nothing was started") && stderr.contains("--force-upgrade"),
        "{stderr}"
    );

    // Version 1 with other content is refused too: the version must say the spec changed.
    let same_version = write(&specs, "same-version.yaml", &spec(&[NEW_URL]));
    let out = run_on(&data, &same_version, &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("the spec changed (1 change) but its version did not"),
        "{stderr}"
    );

    // A safe upgrade starts, and is recorded; a node of version 1 may still join (a roll
    // in progress), while version 1 edited is still refused against its record.
    let safe = write(&specs, "safe.yaml", &spec(&[V2, NEW_URL]));
    let mut node = start_on(&data, &safe, &[]);
    assert!(node.terminate().success());
    let mut node = start_on(&data, v1, &[]);
    assert!(node.terminate().success());
    let out = run_on(&data, &same_version, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));

    // Going on after v2 needs a version above it: v3 is checked against v2.
    let v3 = write(
        &specs,
        "v3.yaml",
        &spec(&[("version: 1 ", "version: 3 "), NEW_URL, MORE_PLATE_SHARDS]),
    );
    let out = run_on(&data, &v3, &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("version 3 is refused against version 2"),
        "{stderr}"
    );

    // --force-upgrade runs a refused spec anyway, after a warning.
    let mut node = start_on(&data, &same_version, &["--force-upgrade"]);
    assert!(node.terminate().success());
}

/// The same record on a broker: a node on Kafka records its DAG, and the next node's
/// refused spec stops it at start.
#[test]
fn run_on_kafka_refuses_a_spec_refused_against_the_recorded_one() {
    let broker = wellspring_test_support::broker::Broker::start();
    let specs = dir("kafka-specs");
    let mut node = NodeProcess::start(
        env!("CARGO_BIN_EXE_wellspring"),
        &broker.address,
        "upgrade-0",
        &["--dag".to_owned(), "examples/reference-dag.yaml".to_owned()],
    );
    assert!(node.terminate().success());
    let refused = write(&specs, "refused.yaml", &spec(&[V2, MORE_PLATE_SHARDS]));
    let out = Command::new(env!("CARGO_BIN_EXE_wellspring"))
        .args([
            "run",
            "--http-addr",
            "127.0.0.1:0",
            "--node-id",
            "upgrade-1",
        ])
        .args(["--kafka", &broker.address, "--dag", &refused])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("RUST_LOG", "error")
        .env_remove("WELLSPRING_KAFKA")
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("DAG microscopy-reference version 2 is refused against version 1"),
        "{stderr}"
    );
    assert!(stderr.contains("partitions: 8 -> 16"), "{stderr}");
}
