//! The example image-metrics service (examples/image-metrics, Python) over real images:
//! tiny TIFF and PNG files with known pixels, their records made by `wellspring ingest
//! --dry-run`, each posted to the service as the reference DAG's image-metrics task
//! does, and its statistics checked against the pixels. The service's packages come
//! from `scripts/install-example-deps` (a virtual environment under .tools/).
//!
//! And the whole path a lab runs: `wellspring ingest --kafka` a folder → `wellspring run`
//! with the reference DAG (the image-metrics task pointed at this service, the other
//! tasks at the simulated ones) → real metrics on the `image_metrics` topic, every
//! aggregate exactly once (`wellspring verify`); and the same on one server without a
//! broker: `ingest --url` a node on `run --data-dir`, verified and read from its directory.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use wellspring_log::{
    ConsumerConfig, DurableOptions, EmbeddedLog, KafkaLog, KafkaSettings, Log, NoListener,
    TopicPartition,
};
use wellspring_nodes::services::{ServiceConfig, Services};
use wellspring_test_support::broker::Broker;
use wellspring_test_support::images::{write_png_gray8, write_tiff_gray16};
use wellspring_test_support::node_process::{NodeProcess, reference_dag_args};
use wellspring_test_support::repository_root;

struct Service {
    child: Child,
    url: String,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python() -> PathBuf {
    let out = Command::new(repository_root().join("scripts/install-example-deps"))
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "scripts/install-example-deps failed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn start(root: &Path) -> Service {
    let mut child = Command::new(python())
        .arg(repository_root().join("examples/image-metrics/service.py"))
        .args(["--port", "0", "--root"])
        .arg(root)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("the service said {line:?}"))
        .to_owned();
    Service { child, url }
}

/// Mean, standard deviation (population) and saturated fraction of `pixels`.
fn statistics(pixels: &[f64], top: f64) -> (f64, f64, f64) {
    let n = pixels.len() as f64;
    let mean = pixels.iter().sum::<f64>() / n;
    let variance = pixels.iter().map(|p| (p - mean).powi(2)).sum::<f64>() / n;
    let saturated = pixels.iter().filter(|p| **p >= top).count() as f64 / n;
    (mean, variance.sqrt(), saturated)
}

fn close(a: &Value, b: f64) -> bool {
    a.as_f64()
        .is_some_and(|a| (a - b).abs() <= 1e-9 * b.abs().max(1.0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_service_measures_real_images() {
    let dir = std::env::temp_dir().join(format!("wellspring-image-metrics-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // Two 16-bit TIFFs (ImageXpress names) and their known pixels, some saturated.
    let mut expected = Vec::new();
    for (site, scale) in [(1u16, 7u16), (2, 300)] {
        let pixels: Vec<u16> = (0..48u16)
            .map(|i| if i % 11 == 0 { u16::MAX } else { i * scale })
            .collect();
        let path = dir.join(format!("PLATE/TimePoint_1/B02_s{site}_w1.tif"));
        write_tiff_gray16(&path, 8, 6, &pixels);
        let values: Vec<f64> = pixels.iter().map(|p| f64::from(*p)).collect();
        expected.push((
            format!("EXP-M/1/B02/{site}/1"),
            statistics(&values, 65535.0),
        ));
    }
    let out = Command::new(env!("CARGO_BIN_EXE_wellspring"))
        .arg("ingest")
        .arg(&dir)
        .args([
            "--convention",
            "imagexpress",
            "--experiment",
            "EXP-M",
            "--dry-run",
        ])
        .args(["--settle", "0s"])
        .env_remove("WELLSPRING_KAFKA")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .collect();
    assert_eq!(records.len(), 2);
    // An 8-bit PNG (the RxRx datasets').
    let png_pixels: Vec<u8> = (0..30u8).map(|i| if i < 3 { 255 } else { i * 8 }).collect();
    let png = dir.join("rxrx/Plate1/C03_s1_w2.png");
    write_png_gray8(&png, 6, 5, &png_pixels);
    let service = start(&dir);
    let http = reqwest::Client::new();
    let post = |body: Value| {
        let http = http.clone();
        let url = format!("{}/v1/image-metrics", service.url);
        async move {
            let response = http
                .post(url)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let function_error = response
                .headers()
                .get("x-function-error")
                .map(|v| v.to_str().unwrap().to_owned());
            let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
            (status, function_error, body)
        }
    };
    for (record, (key, (mean, std, saturated))) in records.iter().zip(&expected) {
        assert_eq!(record["key"], key.as_str());
        let (status, _, answer) = post(record["value"].clone()).await;
        assert_eq!(status, 200, "{answer}");
        assert!(
            close(&answer["mean_intensity"], *mean),
            "{answer} vs {mean}"
        );
        assert!(close(&answer["std_intensity"], *std), "{answer} vs {std}");
        assert!(close(&answer["saturated_fraction"], *saturated), "{answer}");
        assert!(*saturated > 0.0);
        for field in ["experiment_id", "plate_number", "well", "site", "channel"] {
            assert_eq!(answer[field], record["value"][field], "{field}");
        }
    }
    let location = format!("file://{}", png.display());
    let (status, _, answer) = post(json!({
        "experiment_id": "EXP-M", "plate_number": 1, "well": "C03", "site": 1, "channel": 2,
        "cell_type": "HEPG2", "plate_barcode": "P1", "location": location,
    }))
    .await;
    assert_eq!(status, 200, "{answer}");
    let values: Vec<f64> = png_pixels.iter().map(|p| f64::from(*p)).collect();
    let (mean, std, saturated) = statistics(&values, 255.0);
    assert!(close(&answer["mean_intensity"], mean), "{answer}");
    assert!(close(&answer["std_intensity"], std), "{answer}");
    assert!(close(&answer["saturated_fraction"], saturated), "{answer}");
    // What cannot be measured is refused, not retried.
    let missing = format!("file://{}/PLATE/none.tif", dir.display());
    let (status, function_error, answer) = post(json!({"location": missing})).await;
    assert_eq!(
        (status, function_error.as_deref()),
        (422, Some("Handled")),
        "{answer}"
    );
    let torn = dir.join("PLATE/torn.tif");
    std::fs::write(&torn, b"II*\0garbage").unwrap();
    let (status, _, answer) = post(json!({"location": torn.display().to_string()})).await;
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("cannot read"),
        "{answer}"
    );
    let (status, _, _) = post(json!({"location": "file:///etc/hostname"})).await;
    assert_eq!(status, 403, "outside --root");
    let (status, _, _) = post(json!({"well": "B02"})).await;
    assert_eq!(status, 400);
}

/// A fresh folder `name` holding a plate of EXP-REAL in ImageXpress names: 2 wells × 2
/// sites × 2 channels of 16-bit TIFFs, each image with pixels of its own; and each image's
/// statistics by its channel key.
fn real_plate(name: &str) -> (PathBuf, BTreeMap<String, (f64, f64, f64)>) {
    let dir = std::env::temp_dir().join(format!("wellspring-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut expected = BTreeMap::new();
    for (w, well) in ["B02", "B03"].iter().enumerate() {
        for site in 1..=2u16 {
            for channel in 1..=2u16 {
                let base = 1000 * (w as u16 + 1) + 100 * site + 10 * channel;
                let pixels: Vec<u16> = (0..64u16).map(|i| base + i * 3).collect();
                let path = dir.join(format!("PLATE-R/TimePoint_1/{well}_s{site}_w{channel}.tif"));
                write_tiff_gray16(&path, 8, 8, &pixels);
                let values: Vec<f64> = pixels.iter().map(|p| f64::from(*p)).collect();
                let key = format!("EXP-REAL/1/{well}/{site}/{channel}");
                expected.insert(key, statistics(&values, 65535.0));
            }
        }
    }
    (dir, expected)
}

/// `run` arguments for the reference DAG with its image-metrics task on `metrics` and
/// its other tasks on the `simulated` services.
fn reference_dag_on(metrics: &Service, simulated: &Services) -> Vec<String> {
    let mut variables = simulated.variables();
    variables.insert("image-metrics-url".into(), metrics.url.clone());
    reference_dag_args(variables, "6s")
}

/// `wellspring ingest` of [`real_plate`]'s folder `dir`, with its layout by flags, to
/// `sink` (`--kafka BROKERS` or `--url NODE`).
fn ingest_plate(dir: &Path, sink: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_wellspring"))
        .arg("ingest")
        .arg(dir)
        .args(["--convention", "imagexpress", "--experiment", "EXP-REAL"])
        .args(["--wells", "B02,B03", "--sites", "2", "--channels", "2"])
        .args(["--settle", "0s", "--no-progress"])
        .args(sink)
        .env("RUST_LOG", "error")
        .env_remove("WELLSPRING_KAFKA")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("8 channel images published"), "{said}");
}

/// `wellspring verify` of EXP-REAL on the log `log` names (`--kafka BROKERS`,
/// `--data-dir DIR`), with `extra` arguments: every aggregate exactly once.
fn verify(log: &[&str], extra: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_wellspring"))
        .arg("verify")
        .args(log)
        .args(["--experiment", "EXP-REAL", "--no-progress"])
        .args(extra)
        .current_dir(repository_root())
        .env("RUST_LOG", "error")
        .env_remove("WELLSPRING_KAFKA")
        .env_remove("WELLSPRING_DATA_DIR")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("every aggregate exactly once"), "{report}");
}

/// The metrics are the images' own: the `image_metrics` records on `log` (read for up to
/// a minute until there is one for each image) are the `expected` statistics.
async fn assert_real_metrics(log: &dyn Log, expected: &BTreeMap<String, (f64, f64, f64)>) {
    let partitions = log.partitions("image_metrics").await.unwrap();
    let assigned = (0..partitions)
        .map(|p| (TopicPartition::new("image_metrics", p), Some(0)))
        .collect();
    let mut reader = log
        .consumer(ConsumerConfig::assign("metrics-check", assigned))
        .unwrap();
    let mut seen = BTreeMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while seen.len() < expected.len() && std::time::Instant::now() < deadline {
        for record in reader
            .poll(&mut NoListener, 100, Duration::from_millis(200))
            .await
            .unwrap()
        {
            let value: Value = serde_json::from_slice(record.value.as_deref().unwrap()).unwrap();
            let key = format!(
                "{}/{}/{}/{}/{}",
                value["experiment_id"].as_str().unwrap(),
                value["plate_number"],
                value["well"].as_str().unwrap(),
                value["site"],
                value["channel"]
            );
            seen.insert(key, value);
        }
    }
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (key, (mean, std, saturated)) in expected {
        let answer = &seen[key];
        assert!(
            close(&answer["mean_intensity"], *mean),
            "{key}: {answer} vs {mean}"
        );
        assert!(
            close(&answer["std_intensity"], *std),
            "{key}: {answer} vs {std}"
        );
        assert!(
            close(&answer["saturated_fraction"], *saturated),
            "{key}: {answer}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_a_folder_then_run_the_reference_dag_on_real_metrics() {
    let (dir, expected) = real_plate("whole-path");
    let broker = Broker::start();
    let simulated = Services::start(ServiceConfig::quick()).unwrap();
    let metrics = start(&dir);
    let mut node = NodeProcess::start(
        env!("CARGO_BIN_EXE_wellspring"),
        &broker.address,
        "whole-path",
        &reference_dag_on(&metrics, &simulated),
    );
    ingest_plate(&dir, &["--kafka", &broker.address]);
    verify(&["--kafka", &broker.address], &["--wait", "3m"]);
    let log = KafkaLog::connect(KafkaSettings::new(broker.address.clone()))
        .await
        .unwrap();
    assert_real_metrics(&log, &expected).await;
    node.terminate();
}

/// The one-server path of issue 17, without a broker: `ingest --url` a folder into `run
/// --data-dir`, stopped with SIGTERM once done, then its directory verified and read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_a_folder_into_a_node_on_disk_then_real_metrics_without_a_broker() {
    let (dir, expected) = real_plate("whole-path-on-disk");
    let data = dir.with_extension("log");
    let _ = std::fs::remove_dir_all(&data);
    let simulated = Services::start(ServiceConfig::quick()).unwrap();
    let metrics = start(&dir);
    let mut node = NodeProcess::start_on_disk(
        env!("CARGO_BIN_EXE_wellspring"),
        &data,
        "whole-path-on-disk",
        &reference_dag_on(&metrics, &simulated),
    );
    ingest_plate(&dir, &["--url", &node.url]);
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    while !node.reference_dag_finished().await {
        assert!(
            std::time::Instant::now() < deadline,
            "the node never finished EXP-REAL"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(node.terminate().success(), "a SIGTERMed node exits cleanly");
    verify(&["--data-dir", data.to_str().unwrap()], &[]);
    let log = EmbeddedLog::open(DurableOptions::new(&data)).unwrap();
    assert_real_metrics(&log, &expected).await;
}
