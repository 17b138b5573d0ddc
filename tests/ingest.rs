//! `wellspring ingest` as a lab runs it: the real binary over folders of tiny real TIFF
//! and PNG files in every convention, with malformed names, rescans, refused batches and
//! files appearing (and still being written) during `--watch`; publishing to a real node
//! (`run --data-dir`) over HTTP, to a loopback server keeping the node's contract
//! (`RecordSink`, which can refuse records on demand), and as a dry run's JSON lines.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use wellspring_test_support::images::{write_png_gray8, write_tiff_gray16};
use wellspring_test_support::record_sink::{Received, RecordSink};

const WAIT: Duration = Duration::from_secs(60);

fn folder(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wellspring-ingest-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn tiff(path: &Path) {
    let pixels: Vec<u16> = (0..16).map(|i| i * 100).collect();
    write_tiff_gray16(path, 4, 4, &pixels);
}

fn png(path: &Path) {
    let pixels: Vec<u8> = (0..16).map(|i| i * 10).collect();
    write_png_gray8(path, 4, 4, &pixels);
}

fn command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wellspring"));
    command
        .arg("ingest")
        .args(args)
        .env("RUST_LOG", "error")
        .env_remove("WELLSPRING_KAFKA")
        .env_remove("WELLSPRING_API_TOKEN");
    command
}

fn ingest(args: &[&str]) -> Output {
    command(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The dry run's lines: (topic, key, value).
fn lines(out: &Output) -> Vec<(String, String, Value)> {
    text(&out.stdout)
        .lines()
        .map(|line| {
            let record: Value = serde_json::from_str(line).unwrap();
            (
                record["topic"].as_str().unwrap().to_owned(),
                record["key"].as_str().unwrap().to_owned(),
                record["value"].clone(),
            )
        })
        .collect()
}

fn image_keys(records: &[(String, String, Value)]) -> BTreeSet<String> {
    records
        .iter()
        .filter(|(topic, _, _)| topic == "images_channel")
        .map(|(_, key, _)| key.clone())
        .collect()
}

/// The keys of two wells (B03, C04) × two sites × two channels of `plate`.
fn expected(plate: u32) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for well in ["B03", "C04"] {
        for site in 1..=2 {
            for channel in 1..=2 {
                keys.insert(format!("EXP-1/{plate}/{well}/{site}/{channel}"));
            }
        }
    }
    keys
}

/// Every (row number, column, site, channel) of [`expected`].
fn images() -> Vec<(u32, u32, u32, u32)> {
    let mut all = Vec::new();
    for (row, column) in [(2, 3), (3, 4)] {
        for site in 1..=2 {
            for channel in 1..=2 {
                all.push((row, column, site, channel));
            }
        }
    }
    all
}

fn letter(row: u32) -> char {
    char::from(b'A' + row as u8 - 1)
}

/// A folder in the ImageXpress layout: plate folder, `TimePoint_1/` (and a second time
/// point, which is not taken), a thumbnail, the plate's .HTD and one malformed name.
fn imagexpress_folder(root: &Path) {
    for (row, column, site, channel) in images() {
        let well = format!("{}{column:02}", letter(row));
        for t in 1..=2 {
            tiff(&root.join(format!(
                "PLATE-X/TimePoint_{t}/{well}_s{site}_w{channel}.tif"
            )));
        }
    }
    tiff(&root.join("PLATE-X/TimePoint_1/B03_s1_w1_thumb.tif"));
    std::fs::write(root.join("PLATE-X/PLATE-X.HTD"), "htd").unwrap();
    tiff(&root.join("PLATE-X/TimePoint_1/scan-notes.tif"));
}

#[test]
fn every_convention_reads_its_folder() {
    // Opera/Phenix: a Harmony export, two z-planes (the second not taken).
    let phenix = folder("phenix");
    let measurement = phenix.join("BC-PH__2024-01-31T10_00_00-Measurement 1/Images");
    for (row, column, site, channel) in images() {
        for plane in 1..=2 {
            tiff(&measurement.join(format!(
                "r{row:02}c{column:02}f{site:02}p{plane:02}-ch{channel}sk1fk1fl1.tiff"
            )));
        }
    }
    std::fs::write(measurement.join("Index.idx.xml"), "<xml/>").unwrap();
    tiff(&measurement.join("r02c03f01-ch1.tiff"));
    let imagexpress = folder("imagexpress");
    imagexpress_folder(&imagexpress);
    let cv8000 = folder("cv8000");
    for (row, column, site, channel) in images() {
        let well = format!("{}{column:02}", letter(row));
        tiff(&cv8000.join(format!(
            "BC-CV_{well}_T0001F{site:03}L01A01Z01C{channel:02}.tif"
        )));
    }
    tiff(&cv8000.join("BC-CV_B03_T0001F001.tif"));
    let rxrx = folder("rxrx");
    for (row, column, site, channel) in images() {
        // rxrx writes wells unpadded as often as padded.
        let well = format!("{}{column}", letter(row));
        png(&rxrx.join(format!("HEPG2-01/Plate2/{well}_s{site}_w{channel}.png")));
    }
    png(&rxrx.join("HEPG2-01/Plate2/B03_w1.png"));
    let pattern = folder("pattern");
    for (row, column, site, channel) in images() {
        tiff(&pattern.join(format!(
            "run/{}{column}-field{site}-ch{channel}.tif",
            letter(row).to_ascii_lowercase()
        )));
    }
    tiff(&pattern.join("run/overview.tif"));
    let custom = r"(?i)^(?P<well>[a-p]\d+)-field(?P<site>\d+)-ch(?P<channel>\d+)\.tif$";
    let cases: [(&Path, &[&str], u32, &str, &str); 5] = [
        (
            &phenix,
            &["--convention", "phenix"],
            1,
            "BC-PH",
            "r02c03f01-ch1.tiff",
        ),
        (
            &imagexpress,
            &["--convention", "imagexpress"],
            1,
            "PLATE-X",
            "scan-notes.tif",
        ),
        (
            &cv8000,
            &["--convention", "cv8000"],
            1,
            "BC-CV",
            "BC-CV_B03_T0001F001.tif",
        ),
        (
            &rxrx,
            &["--convention", "rxrx"],
            2,
            "HEPG2-01_Plate2",
            "B03_w1.png",
        ),
        (
            &pattern,
            &["--pattern", custom, "--barcode", "BC-P"],
            1,
            "BC-P",
            "overview.tif",
        ),
    ];
    for (dir, convention, plate, barcode, malformed) in cases {
        let mut args = vec![dir.to_str().unwrap(), "--experiment", "EXP-1", "--dry-run"];
        args.extend_from_slice(convention);
        args.extend_from_slice(&["--settle", "0s", "--no-progress"]);
        let out = ingest(&args);
        let stderr = text(&out.stderr);
        assert!(out.status.success(), "{convention:?}: {stderr}");
        let records = lines(&out);
        assert_eq!(
            image_keys(&records),
            expected(plate),
            "{convention:?}: {stderr}"
        );
        assert_eq!(
            records.len(),
            8,
            "{convention:?}: one record per image, no layout"
        );
        for (_, _, value) in &records {
            assert_eq!(value["plate_barcode"], barcode, "{convention:?}");
            let location = value["location"].as_str().unwrap();
            let path = location
                .strip_prefix("file://")
                .unwrap()
                .replace("%20", " ");
            assert!(Path::new(&path).is_file(), "{location}");
        }
        assert!(
            stderr.contains("1 names that fit no convention"),
            "{convention:?}: {stderr}"
        );
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with("skipped: ") && l.contains(malformed)),
            "{stderr}"
        );
        // A dry run leaves no state: the same dry run prints the same records.
        assert!(!dir.join(".wellspring-ingest").exists());
    }
    // The second time point and z-plane were passed over, and can be asked for.
    let out = ingest(&[
        imagexpress.to_str().unwrap(),
        "--convention",
        "imagexpress",
        "--experiment",
        "EXP-1",
        "--dry-run",
        "--settle",
        "0s",
        "--timepoint",
        "2",
    ]);
    assert_eq!(
        image_keys(&lines(&out)),
        expected(1),
        "{}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("8 of other time points"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_name_of_no_convention_fails_a_scan_that_finds_nothing() {
    let dir = folder("wrong-convention");
    imagexpress_folder(&dir);
    let out = ingest(&[
        dir.to_str().unwrap(),
        "--convention",
        "phenix",
        "--experiment",
        "EXP-1",
        "--dry-run",
        "--settle",
        "0s",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("is --convention right?"), "{stderr}");
    assert!(
        stderr.contains("18 names that fit no convention"),
        "{stderr}"
    );
}

#[test]
fn a_plate_map_gives_the_layout_and_numbers_the_barcodes() {
    let dir = folder("platemap");
    for barcode in ["BC-1", "BC-2"] {
        for (row, column, site, channel) in images() {
            let well = format!("{}{column:02}", letter(row));
            tiff(&dir.join(format!(
                "{barcode}/{barcode}_{well}_T0001F{site:03}L01A01Z01C{channel:02}.tif"
            )));
        }
    }
    let map = dir.join("loaddata.csv");
    let mut csv =
        String::from("Metadata_Plate,Metadata_Well,Metadata_Site,FileName_DNA,FileName_Actin\n");
    for barcode in ["BC-2", "BC-1"] {
        for well in ["b3", "C4"] {
            for site in 1..=2 {
                csv.push_str(&format!("{barcode},{well},{site},a.tif,b.tif\n"));
            }
        }
    }
    std::fs::write(&map, csv).unwrap();
    let out = ingest(&[
        dir.to_str().unwrap(),
        "--convention",
        "cv8000",
        "--experiment",
        "EXP-1",
        "--dry-run",
        "--settle",
        "0s",
        "--plate-map",
        map.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let records = lines(&out);
    let (topic, key, layout) = &records[0];
    assert_eq!(
        (topic.as_str(), key.as_str()),
        ("experiment_metadata", "EXP-1")
    );
    assert_eq!(layout["channels_per_site"], 2);
    assert_eq!(layout["sites_per_well"], 2);
    let plates = layout["plates"].as_array().unwrap();
    assert_eq!(plates.len(), 2);
    assert_eq!(plates[1]["plate_barcode"], "BC-2");
    assert_eq!(plates[1]["wells"], serde_json::json!(["B03", "C04"]));
    let keys = image_keys(&records);
    let both: BTreeSet<String> = expected(1).union(&expected(2)).cloned().collect();
    assert_eq!(keys, both);
    let plate_two = records
        .iter()
        .find(|(_, k, _)| k.starts_with("EXP-1/2/"))
        .unwrap();
    assert_eq!(plate_two.2["plate_barcode"], "BC-2");
    // The not a CSV plate map is refused with what is wrong with it.
    std::fs::write(&map, "a,b\n1,2\n").unwrap();
    let out = ingest(&[
        dir.to_str().unwrap(),
        "--convention",
        "cv8000",
        "--experiment",
        "EXP-1",
        "--dry-run",
        "--plate-map",
        map.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("Metadata_Plate"),
        "{}",
        text(&out.stderr)
    );
}

fn images_received(received: &[Received]) -> Vec<&Received> {
    received
        .iter()
        .filter(|r| r.topic == "images_channel")
        .collect()
}

#[test]
fn a_rescan_over_http_publishes_nothing_new() {
    let dir = folder("rescan");
    imagexpress_folder(&dir);
    let sink = RecordSink::start(Some("s3cret"));
    let args = [
        dir.to_str().unwrap(),
        "--convention",
        "imagexpress",
        "--experiment",
        "EXP-1",
        "--url",
        sink.url(),
        "--settle",
        "0s",
        "--wells",
        "B03,C04",
        "--sites",
        "2",
        "--channels",
        "2",
        "--batch",
        "4",
    ];
    let unauthorized = ingest(&args);
    assert_eq!(unauthorized.status.code(), Some(1));
    assert!(
        text(&unauthorized.stderr).contains("WELLSPRING_API_TOKEN"),
        "{}",
        text(&unauthorized.stderr)
    );
    // A batch the node refuses is reported and not marked published.
    sink.refuse_keys_containing(Some("C04"));
    let out = command(&args)
        .env("WELLSPRING_API_TOKEN", "s3cret")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("refused 4 record(s)") && stderr.contains("EXP-1/1/C04/1/1"),
        "{stderr}"
    );
    let received = sink.received();
    assert_eq!(received[0].topic, "experiment_metadata");
    assert_eq!(received[0].key, "EXP-1");
    assert_eq!(
        images_received(&received).len(),
        4,
        "the first batch (B03) was taken"
    );
    // Run again: only what was not taken is sent.
    sink.refuse_keys_containing(None);
    let out = command(&args)
        .env("WELLSPRING_API_TOKEN", "s3cret")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let received = sink.received();
    let keys: Vec<&str> = images_received(&received)
        .iter()
        .map(|r| r.key.as_str())
        .collect();
    assert_eq!(keys.len(), 8, "{keys:?}");
    assert_eq!(
        keys.iter().copied().collect::<BTreeSet<_>>().len(),
        8,
        "no image twice"
    );
    assert_eq!(
        keys.iter().map(|k| k.to_string()).collect::<BTreeSet<_>>(),
        expected(1)
    );
    let image = images_received(&received)[0];
    assert_eq!(image.value["plate_barcode"], "PLATE-X");
    assert_eq!(image.value["cell_type"], "unknown");
    // And again: nothing new at all, not even the layout.
    let batches = sink.batches();
    let out = command(&args)
        .env("WELLSPRING_API_TOKEN", "s3cret")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(sink.batches(), batches);
    assert_eq!(sink.received().len(), 9);
    assert!(
        text(&out.stdout).contains("0 channel images published"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stdout).contains("8 already published"),
        "{}",
        text(&out.stdout)
    );
}

/// Stops the watching process with SIGTERM when dropped (or kills it).
struct Watching(std::process::Child);

impl Watching {
    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.0.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let status = self.0.wait().unwrap();
        std::mem::forget(self);
        status
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn watch_publishes_files_as_they_appear_and_waits_for_those_being_written() {
    let dir = folder("watch");
    let sink = RecordSink::start(None);
    let child = command(&[
        dir.to_str().unwrap(),
        "--convention",
        "rxrx",
        "--experiment",
        "EXP-1",
        "--url",
        sink.url(),
        "--watch",
        "--poll",
        "100ms",
        "--settle",
        "1s",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let watching = Watching(child);
    let has = |key: &'static str| move |r: &[Received]| r.iter().any(|r| r.key == key);
    png(&dir.join("Plate1/B03_s1_w1.png"));
    assert!(
        sink.wait_for(WAIT, has("EXP-1/1/B03/1/1")),
        "a new file is published"
    );
    // A file being written (growing every 20 ms) waits while a finished one goes through.
    let growing = dir.join("Plate1/B03_s1_w2.png");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let growing = growing.clone();
        std::thread::spawn(move || {
            let mut file = std::fs::File::create(&growing).unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                file.write_all(b"partial").unwrap();
                file.flush().unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    png(&dir.join("Plate1/B03_s2_w1.png"));
    assert!(sink.wait_for(WAIT, has("EXP-1/1/B03/2/1")));
    assert!(
        !sink.received().iter().any(|r| r.key == "EXP-1/1/B03/1/2"),
        "a file still being written is not published"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    png(&growing);
    assert!(
        sink.wait_for(WAIT, has("EXP-1/1/B03/1/2")),
        "published once it is done"
    );
    // A malformed name is reported, and the watch goes on.
    png(&dir.join("Plate1/B03.png"));
    png(&dir.join("Plate1/B03_s2_w2.png"));
    assert!(sink.wait_for(WAIT, has("EXP-1/1/B03/2/2")));
    let status = watching.terminate();
    assert!(status.success(), "{status:?}");
    let keys: Vec<String> = sink.received().iter().map(|r| r.key.clone()).collect();
    assert_eq!(keys.len(), 4, "each image once: {keys:?}");
}

#[test]
fn an_unreadable_folder_is_reported_and_the_rest_ingested() {
    let dir = folder("unreadable");
    imagexpress_folder(&dir);
    // A link that loops back on the folder: walking it would never end.
    std::os::unix::fs::symlink(&dir, dir.join("PLATE-X/loop")).unwrap();
    let out = ingest(&[
        dir.to_str().unwrap(),
        "--convention",
        "imagexpress",
        "--experiment",
        "EXP-1",
        "--dry-run",
        "--settle",
        "0s",
    ]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(image_keys(&lines(&out)), expected(1));
    assert!(stderr.contains("1 unreadable folders or files"), "{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("skipped: ") && l.contains("loop")),
        "{stderr}"
    );
}

#[test]
fn a_layout_from_flags_takes_the_plates_the_images_name() {
    let dir = folder("flag-layout");
    for plate in [1, 3] {
        for (row, column, site, channel) in images() {
            let well = format!("{}{column:02}", letter(row));
            png(&dir.join(format!(
                "HEPG2-07/Plate{plate}/{well}_s{site}_w{channel}.png"
            )));
        }
    }
    let out = ingest(&[
        dir.to_str().unwrap(),
        "--convention",
        "rxrx",
        "--experiment",
        "EXP-1",
        "--dry-run",
        "--settle",
        "0s",
        "--wells",
        "B03,c4",
        "--sites",
        "2",
        "--channels",
        "2",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let records = lines(&out);
    let (topic, _, layout) = &records[0];
    assert_eq!(topic, "experiment_metadata");
    assert_eq!(
        layout["plates"],
        serde_json::json!([
            {"plate_number": 1, "plate_barcode": "HEPG2-07_Plate1", "wells": ["B03", "C04"]},
            {"plate_number": 3, "plate_barcode": "HEPG2-07_Plate3", "wells": ["B03", "C04"]},
        ])
    );
    assert_eq!(records.len(), 17);
    // Flags that cannot make a layout are refused before anything is scanned.
    let out = ingest(&[
        dir.to_str().unwrap(),
        "--convention",
        "rxrx",
        "--experiment",
        "EXP-1",
        "--dry-run",
        "--wells",
        "B03",
        "--sites",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--channels N"),
        "{}",
        text(&out.stderr)
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn an_unreachable_node_is_reported_as_such() {
    let dir = folder("unreachable");
    imagexpress_folder(&dir);
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let out = ingest(&[
        dir.to_str().unwrap(),
        "--convention",
        "imagexpress",
        "--experiment",
        "EXP-1",
        "--settle",
        "0s",
        "--url",
        &url,
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("is a node running there?"), "{stderr}");
    assert!(
        stderr.contains("/api/topics/images_channel/records"),
        "{stderr}"
    );
    let out = ingest(&[
        dir.to_str().unwrap(),
        "--convention",
        "imagexpress",
        "--experiment",
        "EXP-1",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--url NODE"),
        "{}",
        text(&out.stderr)
    );
}

/// A counter of the node's `/metrics` for one DAG node (0 while it has none).
fn counter(url: &str, family: &str, node: &str) -> f64 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let text = runtime.block_on(async {
        reqwest::get(format!("{url}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    text.lines()
        .filter(|l| l.starts_with(family) && l.contains(&format!("node=\"{node}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn a_folder_goes_into_a_real_node_over_http_once() {
    use wellspring_nodes::services::{ServiceConfig, Services};
    use wellspring_test_support::node_process::{NodeProcess, reference_dag_args};

    let services = Services::start(ServiceConfig::quick()).unwrap();
    let data = folder("real-node-data");
    let node = NodeProcess::start_on_disk(
        env!("CARGO_BIN_EXE_wellspring"),
        &data,
        "wellspring-0",
        &reference_dag_args(services.variables(), "3s"),
    );
    let dir = folder("real-node");
    imagexpress_folder(&dir);
    let args = [
        dir.to_str().unwrap(),
        "--convention",
        "imagexpress",
        "--experiment",
        "EXP-1",
        "--url",
        &node.url,
        "--settle",
        "0s",
        "--wells",
        "B03,C04",
        "--sites",
        "2",
        "--channels",
        "2",
    ];
    let out = ingest(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("8 channel images published"),
        "{}",
        text(&out.stdout)
    );
    // The node took every image into its DAG (answered once durable, so they are there).
    let deadline = std::time::Instant::now() + WAIT;
    while counter(&node.url, "wellspring_in_total", "images-channel") < 8.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the node never read the 8 images"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A rescan sends nothing again.
    let again = ingest(&args);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert!(
        text(&again.stdout).contains("0 channel images published")
            && text(&again.stdout).contains("8 already published"),
        "{}",
        text(&again.stdout)
    );
}
