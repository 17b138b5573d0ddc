//! `wellspring ingest` files per second: the real binary (this build's) over a generated
//! folder of tiny real TIFF files in the ImageXpress layout (20,000 by default: 1,000
//! wells of a 1536-well plate × 5 sites × 4 channels), as a dry run to /dev/null and
//! published over HTTP to a node's record ingest (the loopback stand-in of the tests,
//! or a running node with `--url`). Each round starts from an empty state file; the
//! settle time is 0 s, so the figure is the scan and publish rate, not the wait.
//!
//! Run: `cargo bench --bench ingest` (`-- --files N`, `--rounds N` (default 3), `--url
//! NODE` to publish to a node instead of the stand-in, its token in WELLSPRING_API_TOKEN).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wellspring_test_support::images::write_tiff_gray16;
use wellspring_test_support::record_sink::RecordSink;

fn flag(name: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != name).nth(1)
}

fn well_name(index: usize) -> String {
    let (row, column) = (index / 48, index % 48 + 1);
    let row = if row < 26 {
        char::from(b'A' + row as u8).to_string()
    } else {
        format!("A{}", char::from(b'A' + (row - 26) as u8))
    };
    format!("{row}{column:02}")
}

/// Writes `files` images (sites × channels per well, as many wells as it takes).
fn generate(dir: &Path, files: usize) -> usize {
    let plate = dir.join("PLATE-B/TimePoint_1");
    std::fs::create_dir_all(&plate).expect("the bench folder");
    let pixels: Vec<u16> = (0..16).collect();
    let mut written = 0;
    'wells: for well in 0..1536 {
        for site in 1..=5 {
            for channel in 1..=4 {
                if written == files {
                    break 'wells;
                }
                let name = format!("{}_s{site}_w{channel}.tif", well_name(well));
                write_tiff_gray16(&plate.join(name), 4, 4, &pixels);
                written += 1;
            }
        }
    }
    written
}

fn ingest(dir: &Path, state: &Path, target: &[&str]) -> Duration {
    let _ = std::fs::remove_file(state);
    let started = Instant::now();
    let status = Command::new(env!("CARGO_BIN_EXE_wellspring"))
        .arg("ingest")
        .arg(dir)
        .args(["--convention", "imagexpress", "--experiment", "EXP-BENCH"])
        .args(["--settle", "0s", "--no-progress", "--state"])
        .arg(state)
        .args(target)
        .env_remove("WELLSPRING_KAFKA")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run wellspring ingest");
    let elapsed = started.elapsed();
    assert!(
        status.success(),
        "wellspring ingest {target:?} failed: {status}"
    );
    elapsed
}

fn report(what: &str, files: usize, mut times: Vec<Duration>) {
    times.sort();
    let rate = |d: &Duration| files as f64 / d.as_secs_f64();
    println!(
        "ingest {what}: {files} files, best {:.0} files/s ({:.2} s), median {:.0} files/s, over {} rounds",
        rate(&times[0]),
        times[0].as_secs_f64(),
        rate(&times[times.len() / 2]),
        times.len()
    );
}

fn main() {
    let files: usize = flag("--files")
        .and_then(|f| f.parse().ok())
        .unwrap_or(20_000);
    let rounds: usize = flag("--rounds")
        .and_then(|r| r.parse().ok())
        .unwrap_or(3)
        .max(1);
    let dir = std::env::temp_dir().join(format!("wellspring-bench-ingest-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let started = Instant::now();
    let files = generate(&dir.join("plate"), files);
    println!(
        "generated {files} TIFF files in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let state = dir.join("state");
    let root = dir.join("plate");
    let dry: Vec<Duration> = (0..rounds)
        .map(|_| ingest(&root, &state, &["--dry-run"]))
        .collect();
    report("--dry-run > /dev/null", files, dry);
    let sink = flag("--url").is_none().then(|| RecordSink::start(None));
    let url = flag("--url").unwrap_or_else(|| {
        sink.as_ref()
            .map(|s| s.url().to_owned())
            .unwrap_or_default()
    });
    let http: Vec<Duration> = (0..rounds)
        .map(|_| ingest(&root, &state, &["--url", &url]))
        .collect();
    if let Some(sink) = &sink {
        let received = sink.received().len();
        assert_eq!(received, files * rounds, "every round publishes every file");
    }
    let what = if sink.is_some() {
        "--url (the loopback stand-in of a node's record ingest)".to_owned()
    } else {
        format!("--url {url}")
    };
    report(&what, files, http);
    let _ = std::fs::remove_dir_all(&dir);
}
