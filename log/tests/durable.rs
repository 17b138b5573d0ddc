//! The durable embedded log on real files: what a reopened log restores, a torn tail
//! after a crash, a corrupt segment, and retention and compaction bounding the disk.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use wellspring_log::{
    Cleanup, CommitBatch, ConsumerConfig, DurableOptions, EmbeddedLog, Fsync, Log, NoListener,
    ProducerRecord, Retention, StorageError, TopicPartition, TopicSpec,
};

/// A fresh directory of this test's own under the system's temporary directory.
fn fresh_dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("wellspring-durable-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn record(topic: &str, key: &str, value: &str) -> ProducerRecord {
    ProducerRecord::new(
        topic,
        Some(Bytes::copy_from_slice(key.as_bytes())),
        Some(Bytes::copy_from_slice(value.as_bytes())),
    )
}

fn open(dir: &Path) -> EmbeddedLog {
    EmbeddedLog::open(DurableOptions::new(dir)).unwrap()
}

/// The newest journal segment of a data directory.
fn last_journal(dir: &Path) -> PathBuf {
    let mut journals: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    journals.sort();
    journals.pop().expect("a journal segment")
}

/// What the files of a data directory hold (a file deleted while listed counts nothing:
/// snapshots delete older files in the background).
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum()
}

fn values(log: &EmbeddedLog, tp: &TopicPartition) -> Vec<String> {
    log.read(tp, 0, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|r| String::from_utf8(r.value.unwrap_or_default().to_vec()).unwrap())
        .collect()
}

async fn prepare(log: &EmbeddedLog) {
    log.ensure_topic(&TopicSpec::new("in", 1, Cleanup::Delete))
        .await
        .unwrap();
    log.ensure_topic(&TopicSpec::new("out", 1, Cleanup::Delete))
        .await
        .unwrap();
}

/// A group member that reads `in` and commits one output per input with its offset.
async fn consume_and_commit(log: &EmbeddedLog, count: usize) {
    let mut consumer = log
        .consumer(ConsumerConfig::group("g", "c", vec!["in".into()]))
        .unwrap();
    let mut done = 0;
    while done < count {
        let records = consumer
            .poll(&mut NoListener, 1, Duration::from_secs(5))
            .await
            .unwrap();
        for r in records {
            let batch = CommitBatch {
                outputs: vec![record("out", "k", &format!("out-{}", r.offset))],
                offsets: vec![(r.topic_partition(), r.offset + 1)],
            };
            consumer.commit(batch).await.unwrap();
            done += 1;
        }
    }
    consumer.close(&mut NoListener).await.unwrap();
}

#[tokio::test]
async fn a_reopened_log_has_its_topics_records_and_committed_offsets() {
    let dir = fresh_dir("reopen");
    {
        let log = open(&dir);
        prepare(&log).await;
        let producer = log.producer().unwrap();
        for i in 0..5 {
            producer
                .send(vec![record("in", &format!("k{i}"), &format!("in-{i}"))])
                .await
                .unwrap();
        }
        consume_and_commit(&log, 3).await;
        assert!(log.describe().contains(&dir.display().to_string()));
    }
    let log = open(&dir);
    let input = TopicPartition::new("in", 0);
    assert_eq!(log.topics(), vec![("in".into(), 1), ("out".into(), 1)]);
    assert_eq!(
        values(&log, &input),
        (0..5).map(|i| format!("in-{i}")).collect::<Vec<_>>()
    );
    assert_eq!(
        values(&log, &TopicPartition::new("out", 0)),
        vec!["out-0", "out-1", "out-2"]
    );
    assert_eq!(log.committed("g").get(&input), Some(&3));
    // The group resumes where it committed, and topics are checked as before.
    consume_and_commit(&log, 2).await;
    assert_eq!(log.committed("g").get(&input), Some(&5));
    assert!(
        log.ensure_topic(&TopicSpec::new("in", 2, Cleanup::Delete))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_torn_tail_is_truncated_to_the_last_complete_commit() {
    let dir = fresh_dir("torn");
    {
        let log = open(&dir);
        prepare(&log).await;
        let producer = log.producer().unwrap();
        producer
            .send(vec![record("in", "a", "1"), record("in", "b", "2")])
            .await
            .unwrap();
        producer
            .send(vec![record("in", "c", "3"), record("in", "d", "4")])
            .await
            .unwrap();
    }
    let journal = last_journal(&dir);
    let whole = std::fs::metadata(&journal).unwrap().len();
    // A crash in the middle of writing the second batch: cut it anywhere inside.
    for cut in [1, 5, 9, 20] {
        let copy = fresh_dir(&format!("torn-{cut}"));
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, copy.join(path.file_name().unwrap())).unwrap();
        }
        let torn = copy.join(journal.file_name().unwrap());
        let file = std::fs::OpenOptions::new().write(true).open(&torn).unwrap();
        file.set_len(whole - cut).unwrap();
        drop(file);
        let log = open(&copy);
        assert_eq!(
            values(&log, &TopicPartition::new("in", 0)),
            vec!["1", "2"],
            "cut {cut}"
        );
        // The log goes on from the last complete commit, and reopens cleanly after.
        log.producer()
            .unwrap()
            .send(vec![record("in", "e", "5")])
            .await
            .unwrap();
        drop(log);
        let log = open(&copy);
        assert_eq!(
            values(&log, &TopicPartition::new("in", 0)),
            vec!["1", "2", "5"]
        );
    }
}

#[tokio::test]
async fn a_corrupt_segment_stops_the_log_with_a_message_naming_the_file() {
    let dir = fresh_dir("corrupt");
    {
        let log = open(&dir);
        prepare(&log).await;
        let producer = log.producer().unwrap();
        for i in 0..3 {
            producer
                .send(vec![record("in", "k", &format!("value-{i}"))])
                .await
                .unwrap();
        }
    }
    let journal = last_journal(&dir);
    let mut bytes = std::fs::read(&journal).unwrap();
    // Flip a byte of the first record's value: a frame in the middle fails its checksum.
    let at = bytes
        .windows(7)
        .position(|w| w == b"value-0")
        .expect("the first value is in the journal");
    bytes[at] ^= 0x20;
    std::fs::write(&journal, &bytes).unwrap();
    let error = EmbeddedLog::open(DurableOptions::new(&dir))
        .err()
        .expect("a corrupt segment stops the log");
    assert!(matches!(error, StorageError::Corrupt { .. }), "{error}");
    let message = error.to_string();
    assert!(
        message.contains(&journal.display().to_string()),
        "{message}"
    );
    // Nothing was thrown away: the damaged file is as it was, for someone to look at.
    assert_eq!(std::fs::read(&journal).unwrap(), bytes);
}

#[tokio::test]
async fn a_data_directory_is_used_by_one_log_at_a_time() {
    let dir = fresh_dir("locked");
    let _log = open(&dir);
    let error = EmbeddedLog::open(DurableOptions::new(&dir))
        .err()
        .expect("a second open is refused");
    assert!(matches!(error, StorageError::Locked { .. }), "{error}");
}

#[tokio::test]
async fn every_fsync_policy_keeps_what_a_clean_stop_left() {
    for (name, fsync) in [
        ("interval", Fsync::Interval(Duration::from_millis(5))),
        ("never", Fsync::Never),
    ] {
        let dir = fresh_dir(name);
        {
            let mut options = DurableOptions::new(&dir);
            options.fsync = fsync;
            let log = EmbeddedLog::open(options).unwrap();
            prepare(&log).await;
            log.producer()
                .unwrap()
                .send(vec![record("in", "a", "1")])
                .await
                .unwrap();
        }
        assert_eq!(
            values(&open(&dir), &TopicPartition::new("in", 0)),
            vec!["1"]
        );
    }
}

#[tokio::test]
async fn retention_and_compaction_bound_the_disk_over_a_long_run() {
    let dir = fresh_dir("bounded");
    let options = || {
        let mut options = DurableOptions::new(&dir);
        options.retention = Retention {
            max_age: None,
            max_bytes: Some(64 << 10),
        };
        options.snapshot_after_bytes = 256 << 10;
        options.fsync = Fsync::Never;
        options
    };
    let batches = 2_000;
    let per_batch = 50;
    let value = "x".repeat(100);
    let mut largest = 0;
    let mut written = 0u64;
    {
        let log = EmbeddedLog::open(options()).unwrap();
        log.ensure_topic(&TopicSpec::new("images", 2, Cleanup::Delete))
            .await
            .unwrap();
        log.ensure_topic(&TopicSpec::new("changelog", 2, Cleanup::Compact))
            .await
            .unwrap();
        let producer = log.producer().unwrap();
        for b in 0..batches {
            let mut records = Vec::new();
            for i in 0..per_batch {
                let n = b * per_batch + i;
                records.push(record("images", &format!("image-{n}"), &value));
                // 100 keys, each written again and again.
                records.push(record(
                    "changelog",
                    &format!("key-{}", n % 100),
                    &format!("{n}"),
                ));
                written += 2 * (value.len() as u64 + 10);
            }
            producer.send(records).await.unwrap();
            largest = largest.max(dir_bytes(&dir));
        }
    }
    // About 11 MB went in; the directory never held more than a small bound of it.
    assert!(written > 10_000_000, "{written}");
    assert!(
        largest < 2_000_000,
        "the data directory grew to {largest} bytes"
    );
    let log = EmbeddedLog::open(options()).unwrap();
    let total = (batches * per_batch) as u64;
    let images: u64 = [0, 1]
        .into_iter()
        .map(|p| {
            let tp = TopicPartition::new("images", p);
            let kept = log.read(&tp, 0, usize::MAX).unwrap();
            // The newest records are kept, in order, up to the retention's size.
            assert!(!kept.is_empty() && kept.len() < 1_000, "{}", kept.len());
            assert!(kept.windows(2).all(|w| w[0].offset < w[1].offset));
            kept.last().unwrap().offset + 1
        })
        .sum();
    assert_eq!(images, total, "every partition keeps its high watermark");
    // The changelog keeps the latest value of every key.
    let mut latest = std::collections::BTreeMap::new();
    for p in [0, 1] {
        for r in log
            .read(&TopicPartition::new("changelog", p), 0, usize::MAX)
            .unwrap()
        {
            latest.insert(r.key.unwrap(), r.value.unwrap());
        }
    }
    assert_eq!(latest.len(), 100);
    for (key, value) in latest {
        let k: u64 = std::str::from_utf8(&key).unwrap()[4..].parse().unwrap();
        let n: u64 = std::str::from_utf8(&value).unwrap().parse().unwrap();
        assert_eq!(n % 100, k);
        assert!(n >= total - 100, "key {k} has an old value {n}");
    }
}

#[tokio::test]
async fn retention_never_drops_what_a_group_has_yet_to_read() {
    let dir = fresh_dir("unread");
    let options = || {
        let mut options = DurableOptions::new(&dir);
        options.retention = Retention {
            max_age: None,
            max_bytes: Some(4 << 10),
        };
        options.snapshot_after_bytes = 64 << 10;
        options.fsync = Fsync::Never;
        options
    };
    let value = "y".repeat(200);
    {
        let log = EmbeddedLog::open(options()).unwrap();
        prepare(&log).await;
        let producer = log.producer().unwrap();
        for i in 0..20 {
            producer
                .send(vec![record("in", &format!("k{i}"), &value)])
                .await
                .unwrap();
        }
        // The group has read 10 of them; the rest wait for it, however much comes after.
        consume_and_commit(&log, 10).await;
        for i in 20..2_000 {
            producer
                .send(vec![record("in", &format!("k{i}"), &value)])
                .await
                .unwrap();
        }
    }
    let log = EmbeddedLog::open(options()).unwrap();
    let kept = log
        .read(&TopicPartition::new("in", 0), 0, usize::MAX)
        .unwrap();
    assert_eq!(
        kept.first().unwrap().offset,
        10,
        "nothing from the group's offset on is dropped"
    );
    assert_eq!(kept.len(), 1_990);
    // Once the group has read them, retention takes them (at the next snapshot, or open).
    consume_and_commit(&log, 1_990).await;
    drop(log);
    let log = EmbeddedLog::open(options()).unwrap();
    let kept = log
        .read(&TopicPartition::new("in", 0), 0, usize::MAX)
        .unwrap();
    assert!(kept.len() < 30, "{}", kept.len());
    assert_eq!(kept.last().unwrap().offset, 1_999);
}
