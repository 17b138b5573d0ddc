//! The status view as an operator meets it, through real `wellspring` processes: the
//! status API and `wellspring status` during and after `wellspring demo --serve` (a
//! left-out image, a malformed record, a failing service), the token rules on a node,
//! and the same on a broker with two nodes, either of which answers for the whole
//! cluster.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::Value;
use wellspring_nodes::services::{ServiceConfig, Services};
use wellspring_test_support::broker::Broker;
use wellspring_test_support::node_process::NodeProcess;

/// A `wellspring` process whose output lines are collected as they come.
struct Process {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Process {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Process {
        let mut command = Command::new(env!("CARGO_BIN_EXE_wellspring"));
        command
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("RUST_LOG", "error")
            .env_remove("WELLSPRING_KAFKA")
            .env_remove("WELLSPRING_API_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().unwrap();
        let collect = |stream: Box<dyn Read + Send>| {
            let lines = Arc::new(Mutex::new(Vec::new()));
            let sink = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    sink.lock().push(line);
                }
            });
            lines
        };
        let stdout = collect(Box::new(child.stdout.take().unwrap()));
        let stderr = collect(Box::new(child.stderr.take().unwrap()));
        Process {
            child,
            stdout,
            stderr,
        }
    }

    /// The first `http://` URL on a stderr line containing `marker`.
    fn url(&self, marker: &str) -> String {
        let line = wait_for(&format!("a line with {marker:?}"), || {
            self.stderr
                .lock()
                .iter()
                .find(|l| l.contains(marker))
                .cloned()
        });
        line.split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap()
            .trim_end_matches([',', ';', ')'])
            .to_owned()
    }

    fn stdout(&self) -> String {
        self.stdout.lock().join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (up to three minutes) until `found` gives something.
fn wait_for<T>(what: &str, mut found: impl FnMut() -> Option<T>) -> T {
    wait_showing(what, |_| found())
}

/// As [`wait_for`], with `found` noting what it last saw, which a give-up prints.
fn wait_showing<T>(what: &str, mut found: impl FnMut(&mut String) -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut seen = String::new();
    loop {
        if let Some(value) = found(&mut seen) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "gave up waiting for {what}; last seen: {seen}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One GET: its status and body.
fn get(url: &str, token: Option<&str>) -> (u16, String) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let mut request = client.get(url);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let response = request.send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    })
}

fn json(url: &str) -> Value {
    let (status, body) = get(url, None);
    assert_eq!(status, 200, "GET {url}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// `wellspring ARGS` to its end.
fn wellspring(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wellspring"));
    command
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("RUST_LOG", "error")
        .env_remove("WELLSPRING_KAFKA")
        .env_remove("WELLSPRING_API_TOKEN");
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Opens `/api/events` and collects the event names it sends.
fn listen_to_events(base: &str, query: &str) -> Arc<Mutex<Vec<String>>> {
    let address = base.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&address).unwrap();
    write!(
        stream,
        "GET /api/events{query} HTTP/1.1\r\nHost: {address}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            sink.lock().push(line);
        }
    });
    events
}

fn level<'a>(summary: &'a Value, name: &str) -> &'a Value {
    summary["levels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == name)
        .unwrap_or_else(|| panic!("no level {name} in {summary}"))
}

#[test]
fn a_demo_run_shows_the_missing_image_by_name_the_dead_letters_and_the_plate_map() {
    let demo = Process::start(
        &[
            "demo",
            "--serve",
            "--http-addr",
            "127.0.0.1:0",
            "--plates",
            "1",
            "--wells",
            "48",
            "--sites",
            "2",
            "--channels",
            "3",
            "--missing",
            "1",
            "--bad-records",
            "1",
            // A failing service: most calls fail, some of them five retries in a row.
            "--error-rate",
            "0.7",
            "--function-error-rate",
            "0",
            "--latency-ms",
            "1",
            "--rate",
            "300",
            "--no-progress",
        ],
        &[],
    );
    let url = demo.url("serving the status API at");
    let events = listen_to_events(&url, "");

    // During the run: the experiment appears and fills.
    wait_for("the experiment in the list", || {
        let list = json(&format!("{url}/api/experiments"));
        let found = list["experiments"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["id"] == "EXP-DEMO" && level(e, "images")["present"].as_u64() > Some(0));
        found.then_some(())
    });
    // The run is over once the demo prints its report (it keeps serving).
    let left_out = wait_for("the demo's report", || {
        demo.stdout()
            .lines()
            .find_map(|l| l.trim().strip_prefix("left out on purpose: image "))
            .map(str::to_owned)
    });
    assert!(
        demo.stdout()
            .contains("every expected aggregate exactly once: OK"),
        "{}",
        demo.stdout()
    );
    let parts: Vec<&str> = left_out.split('/').collect();
    let (well, site, channel) = (parts[2], parts[3], parts[4]);

    // The experiment: every image but one, the left-out one named by its site's report.
    let detail = json(&format!("{url}/api/experiments/EXP-DEMO"));
    let images = level(&detail, "images");
    assert_eq!(images["expected"], 48 * 2 * 3, "{detail}");
    assert_eq!(images["present"], 48 * 2 * 3 - 1, "{detail}");
    assert_eq!(
        level(&detail, "images-site")["present"],
        48 * 2 - 1,
        "{detail}"
    );
    let named = format!("channel {channel} of site {site} of well {well} of plate 1");
    let site_key = format!("EXP-DEMO/1/{well}/{site}");
    let report = wait_for("the site's incomplete report", || {
        json(&format!("{url}/api/experiments/EXP-DEMO"))["incomplete"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["key"] == site_key.as_str())
            .cloned()
    });
    assert_eq!(report["level"], "site");
    assert_eq!(report["missing"][0], named.as_str(), "{report}");
    // The plate's own report follows its (5 s) timeout.
    wait_for("the plate reported incomplete", || {
        let detail = json(&format!("{url}/api/experiments/EXP-DEMO"));
        (detail["plate_list"][0]["state"] == "incomplete").then_some(())
    });

    // The plate map: its real geometry, the well with the hole incomplete, its site
    // naming the missing channel; the rest complete or dead-lettered.
    let plate = json(&format!("{url}/api/experiments/EXP-DEMO/plates/1"));
    assert_eq!(plate["geometry"]["wells"], 384, "{plate}");
    let wells = plate["wells"].as_array().unwrap();
    assert_eq!(wells.len(), 384);
    let not_in_use = wells.iter().filter(|w| w["state"] == "not_in_use").count();
    assert_eq!(not_in_use, 384 - 48);
    let hole = wells.iter().find(|w| w["well"] == well).unwrap();
    assert_eq!(hole["state"], "incomplete", "{hole}");
    let hole_site = hole["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["site"].as_u64() == site.parse().ok())
        .unwrap();
    assert_eq!(hole_site["state"], "incomplete", "{hole}");
    assert_eq!(
        hole_site["channels_missing"],
        serde_json::json!([channel.parse::<u8>().unwrap()]),
        "{hole}"
    );
    let complete = wells.iter().filter(|w| w["state"] == "complete").count();
    let dead = wells
        .iter()
        .filter(|w| w["state"] == "dead_lettered")
        .count();
    assert_eq!(complete + dead, 47, "{}", plate["wells_by_state"]);
    assert!(
        plate["qc_ranges"]["mean_intensity"]["max"].as_f64() > Some(0.0),
        "{plate}"
    );

    // Dead letters: the malformed record, and the failing service's calls that ran out
    // of retries, each with its reason; paged.
    let malformed = json(&format!("{url}/api/dead-letters?node=images-channel"));
    assert_eq!(malformed["total"], 1, "{malformed}");
    assert_eq!(
        malformed["dead_letters"][0]["source_topic"], "images_channel",
        "{malformed}"
    );
    let of_experiment = json(&format!("{url}/api/dead-letters?experiment=EXP-DEMO"));
    let total = of_experiment["total"].as_u64().unwrap();
    assert!(total >= 1, "{of_experiment}");
    let letter = &of_experiment["dead_letters"][0];
    assert!(!letter["reason"].as_str().unwrap().is_empty(), "{letter}");
    assert_eq!(letter["plate"], 1, "{letter}");
    assert!(dead >= 1, "a dead-lettered task shows on the map: {plate}");
    let page = json(&format!(
        "{url}/api/dead-letters?experiment=EXP-DEMO&limit=1&offset=0"
    ));
    assert_eq!(page["dead_letters"].as_array().unwrap().len(), 1);
    assert_eq!(page["total"], total);
    let (status, body) = get(&format!("{url}/api/dead-letters?colour=red"), None);
    assert_eq!(status, 400, "{body}");

    // The DAG with its counters: the failing service's retries.
    let dags = json(&format!("{url}/api/dags"));
    let nodes = dags["dags"][0]["nodes"].as_array().unwrap();
    let metrics = nodes.iter().find(|n| n["name"] == "image-metrics").unwrap();
    assert!(metrics["retries"].as_u64() > Some(0), "{metrics}");
    let published = nodes
        .iter()
        .find(|n| n["name"] == "images-site-output")
        .unwrap();
    assert_eq!(published["records"], 48 * 2 - 1, "{published}");
    assert!(
        dags["dags"][0]["edges"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!(["images-channel", "image-metrics"])),
        "{dags}"
    );

    // Live: the event stream told of the changes.
    wait_for("a plate event", || {
        events
            .lock()
            .iter()
            .any(|l| l == "event: plate")
            .then_some(())
    });

    // `wellspring status`: every experiment, one experiment, the plate map.
    let out = wellspring(&["status", "--url", &url], &[]);
    let said = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        said.contains("EXP-DEMO  incomplete") || said.contains("EXP-DEMO  partial"),
        "{said}"
    );
    assert!(said.contains(&format!("{:>9} / {:<9}", 287, 288)), "{said}");
    let out = wellspring(&["status", "EXP-DEMO", "--url", &url], &[]);
    let said = text(&out.stdout);
    assert!(said.contains(&named), "{said}");
    let out = wellspring(
        &[
            "status", "EXP-DEMO", "--plate", "1", "--url", &url, "--color", "never",
        ],
        &[],
    );
    let map = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let row = (well.as_bytes()[0] - b'A') as usize;
    let column: usize = well[1..].parse().unwrap();
    let lines: Vec<&str> = map.lines().collect();
    let map_row = lines[2 + row];
    assert!(map_row.starts_with(&format!("{:>3} ", &well[..1])), "{map}");
    assert_eq!(
        &map_row[4 + 3 * (column - 1)..4 + 3 * column],
        "  !",
        "{map}"
    );
    // The column header and one line per row.
    assert_eq!(
        lines.iter().filter(|l| l.len() == 4 + 3 * 24).count(),
        1 + 16,
        "{map}"
    );
    assert!(map.contains("legend: . waiting 0   o partial 0"), "{map}");
    assert!(map.contains("- not_in_use 336"), "{map}");
    assert!(
        map.contains(&format!(
            "{well} incomplete: site {site} channels [{channel}]"
        )),
        "{map}"
    );
    let out = wellspring(
        &[
            "status", "EXP-DEMO", "--plate", "1", "--url", &url, "--json",
        ],
        &[],
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["wells"].as_array().unwrap().len(), 384);
    let out = wellspring(&["status", "EXP-NONE", "--url", &url], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no experiment"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn the_status_api_needs_the_nodes_token_and_the_event_stream_takes_it_in_the_query() {
    let node = Process::start(
        &[
            "run",
            "--http-addr",
            "127.0.0.1:0",
            "--dag",
            "examples/reference-dag.yaml",
        ],
        &[("WELLSPRING_API_TOKEN", "s3cret")],
    );
    let url = node.url("serving the task-store API on");
    for path in [
        "/api/experiments",
        "/api/dags",
        "/api/dead-letters",
        "/api/events",
    ] {
        let (status, body) = get(&format!("{url}{path}"), None);
        assert_eq!(status, 401, "{path}: {body}");
    }
    let (status, body) = get(&format!("{url}/api/experiments"), Some("s3cret"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["experiments"],
        serde_json::json!([])
    );
    let (status, _) = get(&format!("{url}/api/experiments/EXP-X"), Some("s3cret"));
    assert_eq!(status, 404);
    let (status, _) = get(
        &format!("{url}/api/experiments/EXP-X/plates/one"),
        Some("s3cret"),
    );
    assert_eq!(status, 400);
    let events = listen_to_events(&url, "?token=s3cret");
    wait_for("the event stream's answer", || {
        events
            .lock()
            .first()
            .filter(|l| l.contains("200"))
            .map(|_| ())
    });
    let out = wellspring(
        &["status", "--url", &url],
        &[("WELLSPRING_API_TOKEN", "s3cret")],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("no experiments yet"));
    let out = wellspring(&["status", "--url", &url], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("401"), "{}", text(&out.stderr));
}

/// The reference DAG with every grouping's incomplete timeout at `timeout`, as a file.
fn reference_dag_timing_out_after(timeout: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/reference-dag.yaml"),
    )
    .unwrap();
    let mut changed = String::new();
    for line in text.lines() {
        match line.split_once("incomplete-timeout:") {
            Some((indent, _)) => {
                changed.push_str(&format!("{indent}incomplete-timeout: {timeout}"))
            }
            None => changed.push_str(line),
        }
        changed.push('\n');
    }
    let path = std::env::temp_dir().join(format!("status-dag-{}.yaml", std::process::id()));
    std::fs::write(&path, changed).unwrap();
    path
}

#[test]
fn on_a_broker_either_of_two_nodes_answers_for_the_whole_cluster() {
    let broker = Broker::start();
    // A failing service: most calls fail, some of them five retries in a row.
    let services = Services::start(ServiceConfig {
        error_rate: 0.7,
        ..ServiceConfig::quick()
    })
    .unwrap();
    let dag = reference_dag_timing_out_after("5s");
    let mut args: Vec<String> = vec![
        "--dag".into(),
        dag.display().to_string(),
        "--session-timeout".into(),
        "6s".into(),
    ];
    for (name, url) in services.variables() {
        args.extend(["--set".into(), format!("{name}={url}")]);
    }
    let a = NodeProcess::start(
        env!("CARGO_BIN_EXE_wellspring"),
        &broker.address,
        "node-a",
        &args,
    );
    let b = NodeProcess::start(
        env!("CARGO_BIN_EXE_wellspring"),
        &broker.address,
        "node-b",
        &args,
    );
    let out = wellspring(
        &[
            "generate",
            "--kafka",
            &broker.address,
            "--experiment",
            "EXP-STATUS",
            "--wells",
            "24",
            "--missing",
            "1",
            "--bad-records",
            "1",
            "--no-progress",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    let left_out = said
        .lines()
        .find_map(|l| l.strip_prefix("left out on purpose: image "))
        .unwrap_or_else(|| panic!("{said}"))
        .to_owned();
    let parts: Vec<&str> = left_out.split('/').collect();
    let (well, site, channel) = (parts[2], parts[3], parts[4]);
    let named = format!("channel {channel} of site {site} of well {well} of plate 1");
    let expected = 24 * 4 * 6 - 1;
    // Each node's view reads every partition, whichever node processed it.
    for node in [&a, &b] {
        let what = format!("every image and report on {}", node.id);
        let detail = wait_showing(&what, |seen| {
            let (status, body) = get(&format!("{}/api/experiments/EXP-STATUS", node.url), None);
            *seen = format!("{status} {body}");
            let detail: Value = serde_json::from_str(&body).ok()?;
            let metrics = level(&detail, "image-metrics");
            let tasks_done = metrics["present"].as_u64()? + metrics["dead_lettered"].as_u64()?;
            // The well grouping and its task follow the images through the broker, hops
            // behind the image metrics: they are waited for too (23: one well lacks an
            // image).
            let wells = level(&detail, "images-well")["present"].as_u64()?;
            let thumbnails = level(&detail, "well-thumbnails");
            let thumbnails_done =
                thumbnails["present"].as_u64()? + thumbnails["dead_lettered"].as_u64()?;
            let reports = detail["incomplete"].as_array()?;
            let reported = ["site", "well", "plate"]
                .iter()
                .all(|level| reports.iter().any(|r| r["level"] == *level));
            let settled = tasks_done >= expected && wells >= 23 && thumbnails_done >= 23;
            (status == 200 && settled && reported).then_some(detail)
        });
        assert_eq!(level(&detail, "images")["present"], expected, "{detail}");
        assert_eq!(level(&detail, "images-well")["present"], 23, "{detail}");
        assert_eq!(detail["state"], "incomplete", "{detail}");
        let report = detail["incomplete"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["level"] == "site")
            .unwrap();
        assert_eq!(report["missing"][0], named.as_str(), "{detail}");
        let plate = json(&format!("{}/api/experiments/EXP-STATUS/plates/1", node.url));
        let by_state = &plate["wells_by_state"];
        assert_eq!(by_state["incomplete"], 1, "{} {by_state}", node.id);
        assert_eq!(by_state["not_in_use"], 384 - 24, "{} {by_state}", node.id);
        let hole = plate["wells"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["well"] == well)
            .unwrap();
        assert_eq!(hole["state"], "incomplete", "{hole}");
        let malformed = json(&format!(
            "{}/api/dead-letters?node=images-channel",
            node.url
        ));
        assert_eq!(malformed["total"], 1, "{malformed}");
        let failed = json(&format!(
            "{}/api/dead-letters?experiment=EXP-STATUS",
            node.url
        ));
        assert!(failed["total"].as_u64() > Some(0), "{failed}");
    }
    // Both nodes answer the same, whoever processed what.
    let plate_a = json(&format!("{}/api/experiments/EXP-STATUS/plates/1", a.url));
    let plate_b = json(&format!("{}/api/experiments/EXP-STATUS/plates/1", b.url));
    assert_eq!(plate_a["wells_by_state"], plate_b["wells_by_state"]);
    // Either node sums both nodes' stage metrics, and names both owners of its shards.
    let task = |list: &Value| {
        list["dags"][0]["nodes"]
            .as_array()
            .and_then(|nodes| nodes.iter().find(|n| n["name"] == "image-metrics"))
            .cloned()
            .unwrap_or_else(|| panic!("no image-metrics node in {list}"))
    };
    let records_in = |list: &Value| task(list)["records_in"].as_u64().unwrap_or(0);
    let local_a = json(&format!("{}/api/dags?scope=local", a.url));
    let local_b = json(&format!("{}/api/dags?scope=local", b.url));
    assert_eq!(local_a["nodes_answered"].as_array().map(Vec::len), Some(1));
    for node in [&a, &b] {
        let all = json(&format!("{}/api/dags", node.url));
        assert_eq!(
            all["nodes_answered"].as_array().map(Vec::len),
            Some(2),
            "{all}"
        );
        assert_eq!(
            records_in(&all),
            records_in(&local_a) + records_in(&local_b),
            "{all}"
        );
        let owners = task(&all)["shards"].as_object().map(|o| o.len());
        assert_eq!(owners, Some(2), "{all}");
    }
    let _ = std::fs::remove_file(dag);
}
