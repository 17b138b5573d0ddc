//! The web UI in a real headless browser (Debian's Chromium through chromedriver) against
//! real `wellspring demo --serve` processes: a 384-well and a 1536-well plate, every well
//! cell and its state read from the rendered page and compared with the API, the well
//! detail, the QC heatmap, the other pages, no error in the page or its console, and
//! screenshots kept under `target/ui-artifacts/`; and the dead letters' redrive buttons on
//! a node whose service was down.
#![allow(clippy::unwrap_used)]

#[path = "ui/browser.rs"]
mod browser;
mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use browser::Browser;
use serde_json::Value;

const EXPERIMENT: &str = "EXP-DEMO";
const LIMIT: Duration = Duration::from_secs(180);

/// `wellspring demo --serve` on a free loopback port, killed when dropped.
struct Demo {
    child: Child,
    url: String,
    over: mpsc::Receiver<()>,
    http: reqwest::Client,
}

impl Demo {
    fn start(args: &[&str]) -> Demo {
        let mut all = vec![
            "demo",
            "--serve",
            "--http-addr",
            "127.0.0.1:0",
            "--no-progress",
        ];
        all.extend(args);
        Demo::spawn(&all, None)
    }

    /// `wellspring ARGS` (with `WELLSPRING_API_TOKEN` when given), once it says where it
    /// serves.
    fn spawn(args: &[&str], token: Option<&str>) -> Demo {
        let mut command = Command::new(env!("CARGO_BIN_EXE_wellspring"));
        if let Some(token) = token {
            command.env("WELLSPRING_API_TOKEN", token);
        }
        let mut child = command
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("RUST_LOG", "error")
            .env_remove("WELLSPRING_KAFKA")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let line = lines
            .find_map(|l| l.ok().filter(|l| l.contains("http://")))
            .expect("demo --serve never said where it serves");
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap()
            .trim_end_matches(|c: char| !c.is_ascii_digit())
            .to_owned();
        let (tell, over) = mpsc::channel();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if line.contains("the run is over") {
                    let _ = tell.send(());
                }
            }
        });
        Demo {
            child,
            url,
            over,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        }
    }

    fn wait_until_the_run_is_over(&self) {
        self.over
            .recv_timeout(LIMIT)
            .expect("the demo's run never ended");
    }

    async fn fetch(&self, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut request = self.http.get(format!("{}{path}", self.url));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.unwrap()
    }

    async fn get(&self, path: &str) -> Value {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        serde_json::from_str(&response.text().await.unwrap()).unwrap()
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the screenshots go: `target/ui-artifacts/`.
fn artifact(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("ui-artifacts")
        .join(name)
}

/// Every well cell of the rendered plate map: well name -> data-state.
const CELLS: &str = "return Object.fromEntries(Array.from(\
    document.querySelectorAll('.plate [data-well]'), c => [c.dataset.well, c.dataset.state]))";

fn states(plate: &Value) -> BTreeMap<String, String> {
    plate["wells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["well"].as_str().unwrap().to_owned(),
                w["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn as_states(value: &Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .map(|cells| {
            cells
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// The page shows exactly the plate the API describes: one cell per well of its geometry,
/// each with the API's state (waits while the live page catches up).
async fn plate_matches_the_api(browser: &Browser, demo: &Demo, wells: usize) -> Value {
    let path = format!("/api/experiments/{EXPERIMENT}/plates/1");
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        let plate = demo.get(&path).await;
        let expected = states(&plate);
        let shown = as_states(&browser.run(CELLS).await);
        if shown == expected {
            assert_eq!(shown.len(), wells, "cells on the page");
            assert_eq!(plate["geometry"]["wells"], wells);
            return plate;
        }
        if std::time::Instant::now() > deadline {
            let differ: Vec<_> = expected
                .iter()
                .filter(|(k, v)| shown.get(*k) != Some(v))
                .take(10)
                .collect();
            panic!(
                "the page shows {} cells, the API {} wells; first differences (API state): {differ:?}",
                shown.len(),
                expected.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Nothing went wrong in the page: its error list is empty and the console has no error.
async fn no_errors(browser: &Browser, page: &str) {
    let listed = browser
        .run("const e = document.getElementById('page-errors'); return [e.dataset.count, e.textContent]")
        .await;
    assert_eq!(
        listed[0], "0",
        "{page}: the page listed errors: {}",
        listed[1]
    );
    let severe: Vec<_> = browser
        .console()
        .await
        .into_iter()
        .filter(|(level, _)| level == "SEVERE")
        .collect();
    assert!(
        severe.is_empty(),
        "{page}: errors in the console: {severe:?}"
    );
}

fn count(states: &BTreeMap<String, String>, state: &str) -> usize {
    states.values().filter(|s| *s == state).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_384_well_plate_map_its_well_detail_heatmap_and_the_other_pages() {
    // 308 wells in the interior of a 384-well plate, two images left out, three
    // malformed records (dead letters).
    let demo = Demo::start(&["--plates", "1", "--missing", "2", "--bad-records", "3"]);
    demo.wait_until_the_run_is_over();
    let browser = Browser::start(1600, 1000, true).await;
    browser
        .open(&format!("{}/#/experiments/{EXPERIMENT}/plates/1", demo.url))
        .await;
    let plate = plate_matches_the_api(&browser, &demo, 384).await;
    let shown = states(&plate);
    assert_eq!(count(&shown, "not_in_use"), 384 - 308);
    assert_eq!(count(&shown, "incomplete"), 2, "{shown:?}");
    assert_eq!(count(&shown, "complete"), 306);
    no_errors(&browser, "the 384-well plate").await;

    // The well detail of a well with a missing image names the channel and site.
    let well = plate["wells"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["state"] == "incomplete")
        .unwrap();
    let name = well["well"].as_str().unwrap();
    let site = well["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| !s["channels_missing"].as_array().unwrap().is_empty())
        .unwrap();
    let missing = format!(
        "channel {} of site {}",
        site["channels_missing"][0], site["site"]
    );
    browser
        .open(&format!(
            "{}/#/experiments/{EXPERIMENT}/plates/1/wells/{name}",
            demo.url
        ))
        .await;
    let detail = browser
        .wait_for(
            "the well's detail",
            LIMIT,
            "return document.querySelector('aside.detail')?.innerText ?? ''",
            |text| {
                text.as_str()
                    .is_some_and(|t| t.contains(&format!("Well {name}")))
            },
        )
        .await;
    let detail = detail.as_str().unwrap();
    assert!(detail.contains(&missing), "{missing:?} not in:\n{detail}");
    assert!(detail.contains("image-metrics"), "{detail}");
    plate_matches_the_api(&browser, &demo, 384).await;
    browser.screenshot(&artifact("plate-384-dark.png")).await;

    // The QC heatmap: every well with the metric coloured, its scale shown.
    let metric = plate["qc_ranges"]
        .as_object()
        .unwrap()
        .keys()
        .find(|k| *k == "mean_intensity")
        .expect("the plate has mean intensities")
        .clone();
    let with_metric = plate["wells"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["qc"].get(&metric).is_some())
        .count();
    assert!(with_metric > 300, "{with_metric} wells with {metric}");
    browser
        .run(
            "document.querySelector('button[aria-pressed=\"false\"]').click(); \
             const s = document.querySelector('select[aria-label=\"QC metric\"]'); \
             s.value = 'mean_intensity'; s.dispatchEvent(new Event('change')); return 1",
        )
        .await;
    let coloured = browser
        .wait_for(
            "the heatmap",
            LIMIT,
            "const p = document.querySelector('.plate'); return [p.dataset.mode, \
             p.querySelectorAll('[data-well][data-qc]').length, \
             document.querySelector('.scale')?.innerText ?? '']",
            |v| v[0] == "qc" && v[1].as_u64() == Some(with_metric as u64),
        )
        .await;
    assert!(
        coloured[2].as_str().unwrap().contains("mean intensity"),
        "{coloured}"
    );
    no_errors(&browser, "the heatmap").await;
    browser.screenshot(&artifact("plate-384-heatmap.png")).await;

    // The other pages render what the API has, without errors.
    let dags = demo.get("/api/dags").await;
    let nodes = dags["dags"][0]["nodes"].as_array().unwrap().len();
    browser.open(&format!("{}/#/dags", demo.url)).await;
    browser
        .wait_for(
            "the DAG's nodes in the graph",
            LIMIT,
            "return document.querySelectorAll('svg [data-node]').length",
            |v| v.as_u64() == Some(nodes as u64),
        )
        .await;
    no_errors(&browser, "the DAG").await;
    browser.screenshot(&artifact("dag.png")).await;
    let dead_letters = demo.get("/api/dead-letters").await["total"]
        .as_u64()
        .unwrap();
    assert!(dead_letters >= 3, "{dead_letters} dead letters");
    let experiment_page = format!("experiments/{EXPERIMENT}");
    let dead_letters_shown = format!("{dead_letters} matching");
    for (page, shows, picture) in [
        ("experiments", EXPERIMENT, "experiments.png"),
        (
            &experiment_page as &str,
            "Incomplete reports",
            "experiment.png",
        ),
        (
            "dead-letters",
            &dead_letters_shown as &str,
            "dead-letters.png",
        ),
        ("tasks", "does not run the task store", "tasks.png"),
    ] {
        browser.open(&format!("{}/#/{page}", demo.url)).await;
        browser
            .wait_for(
                page,
                LIMIT,
                "return document.getElementById('view').textContent",
                |t| t.as_str().is_some_and(|t| t.contains(shows)),
            )
            .await;
        no_errors(&browser, page).await;
        browser.screenshot(&artifact(picture)).await;
    }
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1536_well_plate_filling_live() {
    // 1,400 wells fill a 1536-well plate; the page is open while the images come in.
    let demo = Demo::start(&[
        "--plates",
        "1",
        "--wells",
        "1400",
        "--sites",
        "2",
        "--channels",
        "3",
        "--rate",
        "2000",
        "--missing",
        "1",
    ]);
    let browser = Browser::start(1600, 1000, false).await;
    browser
        .open(&format!("{}/#/experiments/{EXPERIMENT}/plates/1", demo.url))
        .await;
    // Frame times while the plate fills (a figure for the report, not a pass mark).
    browser
        .run(
            "window.frames_ms = []; let last = performance.now(); \
             const tick = (t) => { window.frames_ms.push(t - last); last = t; requestAnimationFrame(tick); }; \
             requestAnimationFrame(tick); return 1",
        )
        .await;
    demo.wait_until_the_run_is_over();
    let plate = plate_matches_the_api(&browser, &demo, 1536).await;
    let shown = states(&plate);
    assert_eq!(count(&shown, "not_in_use"), 1536 - 1400);
    assert_eq!(count(&shown, "incomplete"), 1, "{shown:?}");
    assert_eq!(count(&shown, "complete"), 1399);
    no_errors(&browser, "the 1536-well plate").await;
    let frames = browser
        .run(
            "const f = window.frames_ms.slice(1).sort((a, b) => a - b); \
             const q = (p) => f[Math.min(f.length - 1, Math.floor(p * f.length))]; \
             return [f.length, q(0.5), q(0.99), f[f.length - 1]]",
        )
        .await;
    eprintln!(
        "1536-well plate filling live: {} frames, frame time p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        frames[0],
        frames[1].as_f64().unwrap_or_default(),
        frames[2].as_f64().unwrap_or_default(),
        frames[3].as_f64().unwrap_or_default()
    );
    browser.screenshot(&artifact("plate-1536-light.png")).await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_loads_without_the_token_and_its_calls_send_the_one_given() {
    // A node with a token on the embedded log: no data, but every API the UI calls.
    let node = Demo::spawn(
        &[
            "run",
            "--dag",
            "examples/reference-dag.yaml",
            "--http-addr",
            "127.0.0.1:0",
        ],
        Some("s3cret"),
    );

    // The files: their types, revalidation by ETag, no token needed; the API needs it.
    let page = node.fetch("/", &[]).await;
    assert_eq!(page.status(), 200);
    let header = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(header(&page, "content-type"), "text/html; charset=utf-8");
    assert_eq!(header(&page, "cache-control"), "no-cache");
    assert!(header(&page, "content-security-policy").contains("default-src 'self'"));
    let etag = header(&page, "etag");
    assert!(etag.starts_with('"'), "{etag:?}");
    let again = node.fetch("/", &[("if-none-match", &etag)]).await;
    assert_eq!(again.status(), 304);
    for (path, content_type) in [
        ("/ui/js/app.js", "text/javascript; charset=utf-8"),
        ("/ui/app.css", "text/css; charset=utf-8"),
        ("/ui/favicon.svg", "image/svg+xml"),
        ("/ui/served.json", "application/json"),
    ] {
        let answer = node.fetch(path, &[]).await;
        assert_eq!(answer.status(), 200, "{path}");
        assert_eq!(header(&answer, "content-type"), content_type, "{path}");
    }
    assert_eq!(node.fetch("/ui/nothing.js", &[]).await.status(), 404);
    assert_eq!(node.fetch("/api/experiments", &[]).await.status(), 401);

    // In the browser: refused until the operator gives the token, then every view loads.
    let browser = Browser::start(1280, 800, true).await;
    browser.open(&format!("{}/#/experiments", node.url)).await;
    browser
        .wait_for(
            "the token asked for",
            LIMIT,
            "return [document.getElementById('notice').textContent, \
             document.getElementById('live').dataset.live]",
            |v| v[0].as_str().is_some_and(|t| t.contains("token")) && v[1] == "refused",
        )
        .await;
    browser
        .run(
            "document.getElementById('token').value = 's3cret'; \
             document.getElementById('login').requestSubmit(); return 1",
        )
        .await;
    browser
        .wait_for(
            "the experiments with the token",
            LIMIT,
            "return [document.getElementById('view').textContent, \
             document.getElementById('live').dataset.live, \
             document.getElementById('notice').hidden]",
            |v| {
                v[0].as_str()
                    .is_some_and(|t| t.contains("No experiment has sent an image yet"))
                    && v[1] == "open"
                    && v[2] == true
            },
        )
        .await;
    for (page, shows) in [
        ("tasks", "No task groups yet"),
        ("dags", "microscopy-reference"),
    ] {
        browser.open(&format!("{}/#/{page}", node.url)).await;
        browser
            .wait_for(
                page,
                LIMIT,
                "return document.getElementById('view').textContent",
                |t| t.as_str().is_some_and(|t| t.contains(shows)),
            )
            .await;
    }
    let stored = browser
        .run("return sessionStorage.getItem('wellspring.token')")
        .await;
    assert_eq!(stored, "s3cret");
    // The refusals before the token are the console's only errors.
    let listed = browser
        .run("return document.getElementById('page-errors').dataset.count")
        .await;
    assert_eq!(listed, "0");
    let unexpected: Vec<_> = browser
        .console()
        .await
        .into_iter()
        .filter(|(level, message)| level == "SEVERE" && !message.contains("401"))
        .collect();
    assert!(unexpected.is_empty(), "{unexpected:?}");
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_well_lists_its_dead_letters_with_their_reasons() {
    // A failing service: calls that run out of retries dead-letter their wells' outputs.
    let demo = Demo::start(&[
        "--plates",
        "1",
        "--wells",
        "48",
        "--sites",
        "2",
        "--channels",
        "3",
        "--error-rate",
        "0.7",
    ]);
    demo.wait_until_the_run_is_over();
    let browser = Browser::start(1600, 1000, true).await;
    browser
        .open(&format!("{}/#/experiments/{EXPERIMENT}/plates/1", demo.url))
        .await;
    let plate = plate_matches_the_api(&browser, &demo, 384).await;
    let dead: Vec<String> = states(&plate)
        .into_iter()
        .filter(|(_, s)| s == "dead_lettered")
        .map(|(w, _)| w)
        .collect();
    assert!(
        !dead.is_empty(),
        "no dead-lettered well: {:?}",
        states(&plate)
    );

    // With no well picked, the panel lists every well that needs attention.
    let listed = browser
        .wait_for(
            "the wells that need attention",
            LIMIT,
            "return document.querySelector('aside.detail')?.textContent ?? ''",
            |t| {
                t.as_str()
                    .is_some_and(|t| t.contains("Wells that need attention"))
            },
        )
        .await;
    for well in &dead {
        assert!(
            listed.as_str().unwrap().contains(well.as_str()),
            "{well} not in {listed}"
        );
    }

    // A dead-lettered well's detail: its dead letters, each with its DAG node and reason.
    let well = &dead[0];
    let letters = demo
        .get(&format!(
            "/api/dead-letters?experiment={EXPERIMENT}&plate=1&limit=1000"
        ))
        .await;
    let mine: Vec<&Value> = letters["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["well"] == well.as_str())
        .collect();
    assert!(!mine.is_empty(), "the API lists no dead letter of {well}");
    browser
        .open(&format!(
            "{}/#/experiments/{EXPERIMENT}/plates/1/wells/{well}",
            demo.url
        ))
        .await;
    let heading = format!("Dead letters ({})", mine.len());
    let detail = browser
        .wait_for(
            "the well's dead letters",
            LIMIT,
            "return document.querySelector('aside.detail')?.textContent ?? ''",
            |t| t.as_str().is_some_and(|t| t.contains(&heading)),
        )
        .await;
    let detail = detail.as_str().unwrap();
    for letter in mine {
        let (node, reason) = (
            letter["node"].as_str().unwrap(),
            letter["reason"].as_str().unwrap(),
        );
        assert!(
            detail.contains(&format!("{node} — {reason}")),
            "{node}: {reason} not in {detail}"
        );
    }
    no_errors(&browser, "a dead-lettered well").await;
    browser
        .screenshot(&artifact("well-dead-lettered.png"))
        .await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dead_letters_page_redrives_one_then_the_matching_ones_after_confirmation() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use wellspring_log::{EmbeddedLog, Log, ProducerRecord, TopicPartition};

    // A node whose features service answers 503 past the task's retries.
    let down = Arc::new(AtomicBool::new(true));
    let service = {
        let down = down.clone();
        common::ScriptedServer::start(move |_| {
            if down.load(Ordering::SeqCst) {
                common::Answer::status(503)
            } else {
                common::Answer::ok(r#"{"cell_count": 3}"#)
            }
        })
    };
    let registry = wellspring_actors::FunctionRegistry::with_builtins();
    let dag = common::load(
        common::SITE_FEATURES_DAG,
        &registry,
        &[("svc", service.url.clone())],
    );
    let log = EmbeddedLog::new();
    let mut options = wellspring_nodes::run::RunOptions::new("127.0.0.1:0".parse().unwrap());
    options.dags = vec![dag];
    options.node_id = "ui-redrive".into();
    let node =
        wellspring_nodes::run::start(options, Some(Arc::new(log.clone()) as Arc<dyn Log>)).unwrap();
    let layout = wellspring_protocol::synthetic::layout("EXP-UI", 1, 2, 2, 2).unwrap();
    let mut records = vec![ProducerRecord::new(
        "metadata",
        Some(layout.experiment.as_str().to_owned().into()),
        Some(layout.to_value().to_json_string().into()),
    )];
    for image in wellspring_protocol::synthetic::images(&layout, "HUVEC") {
        records.push(ProducerRecord::new(
            "images",
            Some(image.key.to_string().into()),
            Some(image.to_value().to_json_string().into()),
        ));
    }
    log.producer().unwrap().send(records).await.unwrap();
    let outputs = || {
        (0..)
            .map_while(|p| {
                log.read(&TopicPartition::new("features", p), 0, usize::MAX)
                    .ok()
            })
            .map(|r| r.len())
            .sum::<usize>()
    };

    let browser = Browser::start(1400, 900, false).await;
    browser
        .open(&format!("{}/#/dead-letters?node=features", node.url()))
        .await;
    browser
        .wait_for(
            "a redrive button per dead letter",
            LIMIT,
            "return document.querySelectorAll('button.redrive-one').length",
            |n| n.as_u64() == Some(4),
        )
        .await;
    down.store(false, Ordering::SeqCst);

    // One dead letter: its button asks first (a dry run), then redrives on confirmation.
    browser
        .run("document.querySelector('button.redrive-one').click()")
        .await;
    let asked = browser
        .wait_for(
            "the confirmation",
            LIMIT,
            "const d = document.querySelector('.redrive-dialog'); return d.hidden ? '' : d.textContent",
            |t| t.as_str().is_some_and(|t| t.contains("1 would go back")),
        )
        .await;
    assert!(asked.as_str().unwrap().contains("Redrive 1"), "{asked}");
    assert_eq!(outputs(), 0, "asking sends nothing");
    browser
        .run("document.querySelector('button.confirm-redrive').click()")
        .await;
    let shown = browser
        .wait_for(
            "the redrive's result",
            LIMIT,
            "const r = document.querySelector('.redrive-result'); return r.hidden ? null : [r.dataset.redriven, r.dataset.skipped, r.textContent]",
            |v| v.is_array(),
        )
        .await;
    assert_eq!(
        (shown[0].as_str(), shown[1].as_str()),
        (Some("1"), Some("0")),
        "{shown}"
    );
    assert!(
        shown[2]
            .as_str()
            .unwrap()
            .contains("wellspring.lab.features.input"),
        "{shown}"
    );
    let deadline = std::time::Instant::now() + LIMIT;
    while outputs() < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the redriven output never came"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    browser
        .screenshot(&artifact("dead-letters-redriven-one.png"))
        .await;

    // The filtered list: the other three go, the one redriven before is skipped.
    browser
        .run("document.querySelector('button.redrive-all').click()")
        .await;
    browser
        .wait_for(
            "the confirmation of the matching ones",
            LIMIT,
            "const d = document.querySelector('.redrive-dialog'); return d.hidden ? '' : d.textContent",
            |t| {
                t.as_str()
                    .is_some_and(|t| t.contains("3 would go back") && t.contains("redriven before"))
            },
        )
        .await;
    browser
        .run("document.querySelector('button.confirm-redrive').click()")
        .await;
    let shown = browser
        .wait_for(
            "the second result",
            LIMIT,
            "const r = document.querySelector('.redrive-result'); return r.hidden ? null : [r.dataset.redriven, r.dataset.skipped]",
            |v| v.is_array(),
        )
        .await;
    assert_eq!(
        (shown[0].as_str(), shown[1].as_str()),
        (Some("3"), Some("1")),
        "{shown}"
    );
    let deadline = std::time::Instant::now() + LIMIT;
    while outputs() < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "the redriven outputs never came"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Asked again, nothing is left to redrive: the button says so and is disabled.
    browser
        .run("document.querySelector('button.redrive-all').click()")
        .await;
    browser
        .wait_for(
            "nothing left to redrive",
            LIMIT,
            "const b = document.querySelector('button.confirm-redrive'); return b && !b.closest('[hidden]') ? [b.disabled, b.textContent] : null",
            |v| v[0] == true && v[1] == "Nothing to redrive",
        )
        .await;
    assert_eq!(outputs(), 4, "each site's output once");
    no_errors(&browser, "the dead letters' redrive").await;
    browser.close().await;
    node.stop().unwrap();
}
