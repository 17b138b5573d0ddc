//! Behaviour of the embedded log, including its consumer groups.

use std::collections::{BTreeMap, BTreeSet};

use tokio::time::Instant;

use super::*;

fn tp(topic: &str, p: u32) -> TopicPartition {
    TopicPartition::new(topic, p)
}

fn record(topic: &str, key: &str, value: &str) -> ProducerRecord {
    ProducerRecord::new(
        topic,
        Some(Bytes::copy_from_slice(key.as_bytes())),
        Some(Bytes::copy_from_slice(value.as_bytes())),
    )
}

/// Records every callback, and commits the positions it was told about on revoke.
#[derive(Default)]
struct Recorder {
    assigned: Vec<TopicPartition>,
    revoked: Vec<TopicPartition>,
    lost: Vec<TopicPartition>,
    /// Offsets to commit when a partition is revoked.
    progress: BTreeMap<TopicPartition, Offset>,
}

#[async_trait(?Send)]
impl RebalanceListener for Recorder {
    async fn on_assigned(&mut self, partitions: &[Assigned]) {
        self.assigned
            .extend(partitions.iter().map(|a| a.partition.clone()));
    }
    async fn on_revoked(&mut self, partitions: &[TopicPartition]) -> CommitBatch {
        self.revoked.extend(partitions.iter().cloned());
        CommitBatch {
            outputs: Vec::new(),
            offsets: partitions
                .iter()
                .filter_map(|p| self.progress.get(p).map(|o| (p.clone(), *o)))
                .collect(),
        }
    }
    async fn on_lost(&mut self, partitions: &[TopicPartition]) {
        self.lost.extend(partitions.iter().cloned());
    }
}

async fn log_with_topic(partitions: u32) -> EmbeddedLog {
    let log = EmbeddedLog::new();
    log.ensure_topic(&TopicSpec::new("in", partitions, Cleanup::Delete))
        .await
        .unwrap();
    log.ensure_topic(&TopicSpec::new("out", 1, Cleanup::Delete))
        .await
        .unwrap();
    log
}

fn member(log: &EmbeddedLog, name: &str) -> Box<dyn Consumer> {
    let mut config = ConsumerConfig::group("g", name, vec!["in".into()]);
    config.session_timeout = Duration::from_secs(6);
    log.consumer(config).unwrap()
}

/// A member with static membership (its instance id is its name).
fn static_member(log: &EmbeddedLog, name: &str) -> Box<dyn Consumer> {
    let mut config = ConsumerConfig::group("g", name, vec!["in".into()]);
    config.instance_id = Some(name.to_owned());
    config.session_timeout = Duration::from_secs(6);
    log.consumer(config).unwrap()
}

fn held(log: &EmbeddedLog, client: &str) -> BTreeSet<TopicPartition> {
    log.group_view("g")
        .unwrap()
        .members
        .into_iter()
        .filter(|(c, _, _)| c == client)
        .flat_map(|(_, _, held)| held)
        .collect()
}

/// Polls two members in turn, three rounds: long enough for a group to settle.
async fn poll_both(
    (a, la): (&mut Box<dyn Consumer>, &mut Recorder),
    (b, lb): (&mut Box<dyn Consumer>, &mut Recorder),
) {
    for _ in 0..3 {
        a.poll(la, 10, Duration::from_millis(10)).await.unwrap();
        b.poll(lb, 10, Duration::from_millis(10)).await.unwrap();
    }
}

#[tokio::test]
async fn keyed_records_land_in_one_partition_in_order() {
    let log = log_with_topic(4).await;
    let producer = log.producer().unwrap();
    let placed = producer
        .send(
            (0..10)
                .map(|i| record("in", "same-key", &i.to_string()).with_header("h", "v"))
                .collect(),
        )
        .await
        .unwrap();
    let partition = placed[0].0.clone();
    assert!(placed.iter().all(|(p, _)| *p == partition));
    assert_eq!(
        placed.iter().map(|(_, o)| *o).collect::<Vec<_>>(),
        (0..10).collect::<Vec<_>>()
    );
    assert_eq!(partition.partition, partition_for_key(b"same-key", 4));
    let records = log.read(&partition, 3, 100).unwrap();
    assert_eq!(records.len(), 7);
    assert_eq!(records[0].value.as_deref(), Some(&b"3"[..]));
    assert_eq!(records[0].header("h").map(|v| &v[..]), Some(&b"v"[..]));
    assert_eq!(log.end_offset(&partition).await.unwrap(), 10);
}

#[tokio::test]
async fn topics_are_checked_on_ensure() {
    let log = log_with_topic(4).await;
    let err = log
        .ensure_topic(&TopicSpec::new("in", 8, Cleanup::Delete))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("exists with 4 partitions but Wellspring needs 8 partitions"),
        "{err}"
    );
    let err = log
        .ensure_topic(&TopicSpec::new("in", 4, Cleanup::Compact))
        .await
        .unwrap_err();
    assert!(matches!(err, LogError::TopicMismatch { .. }));
    let producer = log.producer().unwrap();
    assert!(matches!(
        producer.send(vec![record("nope", "k", "v")]).await,
        Err(LogError::UnknownTopic(_))
    ));
    assert!(matches!(
        producer
            .send(vec![record("in", "k", "v").to_partition(9)])
            .await,
        Err(LogError::UnknownPartition { .. })
    ));
}

#[tokio::test]
async fn a_lone_member_gets_every_partition_and_commits_atomically() {
    let log = log_with_topic(3).await;
    let producer = log.producer().unwrap();
    producer
        .send(
            (0..30)
                .map(|i| record("in", &format!("k{i}"), "v"))
                .collect(),
        )
        .await
        .unwrap();
    let mut consumer = member(&log, "a");
    let mut listener = Recorder::default();
    let mut seen = Vec::new();
    while seen.len() < 30 {
        seen.extend(
            consumer
                .poll(&mut listener, 7, Duration::from_millis(100))
                .await
                .unwrap(),
        );
    }
    assert_eq!(listener.assigned.len(), 3);
    // Commit outputs and offsets together.
    let batch = CommitBatch {
        outputs: vec![record("out", "k", "result")],
        offsets: listener.assigned.iter().map(|p| (p.clone(), 5)).collect(),
    };
    consumer.commit(batch).await.unwrap();
    assert_eq!(log.read(&tp("out", 0), 0, 10).unwrap().len(), 1);
    assert_eq!(
        consumer.committed(&listener.assigned[0]).await.unwrap(),
        Some(5)
    );
    // A commit for a partition it does not own is refused, outputs and all.
    let bad = CommitBatch {
        outputs: vec![record("out", "k", "zombie")],
        offsets: vec![(tp("in", 7), 1)],
    };
    assert!(consumer.commit(bad).await.is_err());
    assert_eq!(log.read(&tp("out", 0), 0, 10).unwrap().len(), 1);
}

/// A commit that would move a committed offset back is a bug of the caller: debug builds
/// (the tests, the simulation harness) stop at it, before anything is applied.
#[cfg(debug_assertions)]
#[tokio::test]
#[should_panic(expected = "the committed offset of in[0] went back from 5 to 4")]
async fn a_commit_that_moves_an_offset_back_is_caught() {
    let log = log_with_topic(1).await;
    let mut consumer = member(&log, "a");
    let mut listener = Recorder::default();
    consumer
        .poll(&mut listener, 10, Duration::from_millis(10))
        .await
        .unwrap();
    assert_eq!(listener.assigned, vec![tp("in", 0)]);
    let commit = |offset| CommitBatch {
        outputs: Vec::new(),
        offsets: vec![(tp("in", 0), offset)],
    };
    consumer.commit(commit(5)).await.unwrap();
    consumer.commit(commit(5)).await.unwrap();
    let _ = consumer.commit(commit(4)).await;
}

#[tokio::test(start_paused = true)]
async fn a_joining_member_gets_partitions_only_after_the_owner_revokes_them() {
    let log = log_with_topic(4).await;
    let mut a = member(&log, "a");
    let mut la = Recorder::default();
    a.poll(&mut la, 10, Duration::from_millis(10))
        .await
        .unwrap();
    assert_eq!(held(&log, "a").len(), 4);
    for p in 0..4 {
        la.progress.insert(tp("in", p), 10 + u64::from(p));
    }

    let mut b = member(&log, "b");
    let mut lb = Recorder::default();
    // b joins; nothing is free yet because a still holds everything.
    b.poll(&mut lb, 10, Duration::from_millis(10))
        .await
        .unwrap();
    assert!(lb.assigned.is_empty());
    // a's next poll revokes two partitions (committing their progress) and releases them.
    a.poll(&mut la, 10, Duration::from_millis(10))
        .await
        .unwrap();
    assert_eq!(la.revoked.len(), 2);
    b.poll(&mut lb, 10, Duration::from_millis(10))
        .await
        .unwrap();
    assert_eq!(lb.assigned.len(), 2);
    let a_held = held(&log, "a");
    let b_held = held(&log, "b");
    assert_eq!(a_held.len(), 2);
    assert!(a_held.is_disjoint(&b_held));
    // b starts where a committed.
    for p in &lb.assigned {
        assert_eq!(
            b.committed(p).await.unwrap(),
            Some(10 + u64::from(p.partition))
        );
    }
    // Sticky: a kept the partitions it still holds, and was never asked to give them up.
    assert!(la.revoked.iter().all(|p| !a_held.contains(p)));
}

#[tokio::test(start_paused = true)]
async fn a_silent_member_is_presumed_dead_and_its_partitions_move() {
    let log = log_with_topic(4).await;
    let mut a = member(&log, "a");
    let mut b = member(&log, "b");
    let (mut la, mut lb) = (Recorder::default(), Recorder::default());
    poll_both((&mut a, &mut la), (&mut b, &mut lb)).await;
    assert_eq!(held(&log, "a").len(), 2);
    assert_eq!(held(&log, "b").len(), 2);
    let b_had = held(&log, "b");

    // b goes silent (a crashed process); a keeps polling and inherits after the timeout.
    let start = Instant::now();
    while held(&log, "a").len() < 4 {
        a.poll(&mut la, 10, Duration::from_millis(500))
            .await
            .unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "never reassigned"
        );
    }
    assert!(
        start.elapsed() >= Duration::from_secs(6),
        "moved before the session timeout"
    );
    // b comes back: it learns it lost everything, and its commits are refused.
    let refused = b
        .commit(CommitBatch {
            outputs: vec![],
            offsets: vec![(b_had.iter().next().unwrap().clone(), 1)],
        })
        .await;
    assert!(matches!(refused, Err(LogError::NotAssigned(_))));
    b.poll(&mut lb, 10, Duration::from_millis(10))
        .await
        .unwrap();
    assert_eq!(lb.lost.iter().cloned().collect::<BTreeSet<_>>(), b_had);
}

#[tokio::test(start_paused = true)]
async fn a_long_poll_takes_over_a_silent_members_partitions_as_its_session_ends() {
    let log = log_with_topic(4).await;
    let mut a = member(&log, "a");
    let mut b = member(&log, "b");
    let (mut la, mut lb) = (Recorder::default(), Recorder::default());
    poll_both((&mut a, &mut la), (&mut b, &mut lb)).await;
    let b_had = held(&log, "b");
    assert_eq!(b_had.len(), 2);
    let producer = log.producer().unwrap();
    for tp in &b_had {
        let mut r = record("in", "k", "v");
        r.partition = Some(tp.partition);
        producer.send(vec![r]).await.unwrap();
    }
    // b falls silent; a waits in one poll far longer than the session. It must not sleep
    // on to its next heartbeat (a quarter of the session) once b's session is over.
    let silent_since = Instant::now();
    let records = a.poll(&mut la, 10, Duration::from_secs(60)).await.unwrap();
    let waited = silent_since.elapsed();
    assert_eq!(records.len(), 2, "b's records, read by a");
    assert!(
        waited >= Duration::from_secs(6) && waited < Duration::from_millis(6_100),
        "took over after {waited:?}, the session being 6 s"
    );
}

#[tokio::test(start_paused = true)]
async fn a_static_member_that_returns_in_time_keeps_its_partitions_without_a_rebalance() {
    let log = log_with_topic(4).await;
    let mut a = static_member(&log, "node-0");
    let mut b = static_member(&log, "node-1");
    let (mut la, mut lb) = (Recorder::default(), Recorder::default());
    poll_both((&mut a, &mut la), (&mut b, &mut lb)).await;
    let b_had = held(&log, "node-1");
    let generation = log.group_view("g").unwrap().generation;
    let revoked_before = la.revoked.len();
    drop(b); // crash
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut b2 = static_member(&log, "node-1");
    let mut lb2 = Recorder::default();
    b2.poll(&mut lb2, 10, Duration::from_millis(10))
        .await
        .unwrap();
    assert_eq!(lb2.assigned.iter().cloned().collect::<BTreeSet<_>>(), b_had);
    assert_eq!(
        log.group_view("g").unwrap().generation,
        generation,
        "no rebalance"
    );
    a.poll(&mut la, 10, Duration::from_millis(10))
        .await
        .unwrap();
    assert_eq!(la.revoked.len(), revoked_before, "a gave nothing up");
    assert!(la.lost.is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_evicted_static_member_loses_its_partitions_at_once_and_others_never() {
    let log = log_with_topic(4).await;
    let mut a = static_member(&log, "node-0");
    let mut b = static_member(&log, "node-1");
    let (mut la, mut lb) = (Recorder::default(), Recorder::default());
    poll_both((&mut a, &mut la), (&mut b, &mut lb)).await;
    assert_eq!(held(&log, "node-1").len(), 2);
    let revoked_before = la.revoked.len();
    drop(b); // crash: no leave; its session would keep its partitions for 6 s
    assert_eq!(
        log.evict_static_member("node-9").await.unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(log.evict_static_member("node-1").await.unwrap(), ["g"]);
    a.poll(&mut la, 10, Duration::from_millis(10))
        .await
        .unwrap();
    assert_eq!(
        held(&log, "node-0").len(),
        4,
        "well within the session timeout"
    );
    assert_eq!(
        la.revoked.len(),
        revoked_before,
        "the survivor kept its own"
    );
    assert!(la.lost.is_empty());
}

/// Found by the simulation harness (seed 22): a static member that died while asked to
/// give a partition up, and came back in time, held it for good without knowing.
#[tokio::test(start_paused = true)]
async fn a_static_member_back_from_a_crash_releases_what_it_was_giving_up() {
    let log = log_with_topic(2).await;
    let mut a = static_member(&log, "node-0");
    let mut la = Recorder::default();
    a.poll(&mut la, 10, Duration::from_millis(10))
        .await
        .unwrap();
    assert_eq!(held(&log, "node-0").len(), 2);
    // node-1 joins: node-0 should give one partition up, but dies before it polls again.
    let mut b = static_member(&log, "node-1");
    let mut lb = Recorder::default();
    b.poll(&mut lb, 10, Duration::from_millis(10))
        .await
        .unwrap();
    drop(a);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut a2 = static_member(&log, "node-0");
    let mut la2 = Recorder::default();
    poll_both((&mut a2, &mut la2), (&mut b, &mut lb)).await;
    let (mine, theirs) = (held(&log, "node-0"), held(&log, "node-1"));
    assert_eq!((mine.len(), theirs.len()), (1, 1), "{mine:?} {theirs:?}");
    assert_eq!(la2.assigned.iter().cloned().collect::<BTreeSet<_>>(), mine);
    assert_eq!(lb.assigned.iter().cloned().collect::<BTreeSet<_>>(), theirs);
}

#[tokio::test(start_paused = true)]
async fn close_hands_partitions_over_at_once() {
    let log = log_with_topic(2).await;
    let mut a = member(&log, "a");
    let mut b = member(&log, "b");
    let (mut la, mut lb) = (Recorder::default(), Recorder::default());
    poll_both((&mut a, &mut la), (&mut b, &mut lb)).await;
    for p in held(&log, "b") {
        lb.progress.insert(p, 42);
    }
    b.close(&mut lb).await.unwrap();
    a.poll(&mut la, 10, Duration::from_millis(10))
        .await
        .unwrap();
    assert_eq!(held(&log, "a").len(), 2);
    let view = log.group_view("g").unwrap();
    assert_eq!(view.committed.values().filter(|o| **o == 42).count(), 1);
}

#[tokio::test]
async fn compacted_topics_keep_the_latest_value_per_key() {
    let log = EmbeddedLog::new();
    log.ensure_topic(&TopicSpec::new("changelog", 1, Cleanup::Compact))
        .await
        .unwrap();
    let producer = log.producer().unwrap();
    for round in 0..5 {
        producer
            .send(
                (0..1000)
                    .map(|k| record("changelog", &format!("k{k}"), &format!("v{round}")))
                    .collect(),
            )
            .await
            .unwrap();
    }
    producer
        .send(vec![ProducerRecord::new(
            "changelog",
            Some(Bytes::from_static(b"k0")),
            None,
        )])
        .await
        .unwrap();
    let records = log.read(&tp("changelog", 0), 0, usize::MAX).unwrap();
    assert!(records.len() < 3000, "compaction ran: {}", records.len());
    let mut latest = BTreeMap::new();
    for r in records {
        latest.insert(r.key.unwrap(), r.value);
    }
    assert_eq!(latest.len(), 1000);
    assert_eq!(latest[&Bytes::from_static(b"k0")], None, "tombstone kept");
    assert_eq!(
        latest[&Bytes::from_static(b"k1")].as_deref(),
        Some(&b"v4"[..])
    );
}

#[tokio::test(start_paused = true)]
async fn poll_waits_for_data_and_can_be_woken() {
    let log = log_with_topic(1).await;
    let mut reader = log
        .consumer(ConsumerConfig::assign("r", vec![(tp("in", 0), None)]))
        .unwrap();
    let producer = log.producer().unwrap();
    let started = Instant::now();
    let mut none = NoListener;
    let (records, _) = tokio::join!(reader.poll(&mut none, 10, Duration::from_secs(5)), async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        producer.send(vec![record("in", "k", "v")]).await.unwrap();
    });
    assert_eq!(records.unwrap().len(), 1);
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    let waker = reader.waker();
    waker.notify_one();
    let records = reader
        .poll(&mut NoListener, 10, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(records.is_empty());
    assert_eq!(started.elapsed(), Duration::from_secs(1), "woken at once");
}

#[tokio::test]
async fn a_keys_only_topic_is_read_without_values_and_the_others_with_them() {
    let log = log_with_topic(1).await;
    let producer = log.producer().unwrap();
    producer
        .send(vec![record("in", "a", "1"), record("out", "b", "2")])
        .await
        .unwrap();
    let mut config = ConsumerConfig::assign("r", vec![(tp("in", 0), None), (tp("out", 0), None)]);
    config.keys_only = vec!["in".into()];
    let mut reader = log.consumer(config).unwrap();
    let records = reader
        .poll(&mut NoListener, 10, Duration::from_secs(1))
        .await
        .unwrap();
    let by_topic: BTreeMap<&str, &LogRecord> = records.iter().map(|r| (&*r.topic, r)).collect();
    assert_eq!(by_topic["in"].key.as_deref(), Some(&b"a"[..]));
    assert_eq!(
        by_topic["in"].value, None,
        "the key-only topic comes without values"
    );
    assert_eq!(by_topic["out"].value.as_deref(), Some(&b"2"[..]));
}

/// A consumer that has read everything skips its reads until the log wakes it: what it
/// then reads must still be all there is, after an append, a rewind or a fetch cut short
/// by `max_records`.
#[tokio::test(start_paused = true)]
async fn a_consumer_that_read_everything_still_reads_what_comes_after_and_what_it_rewinds_to() {
    let log = log_with_topic(2).await;
    let producer = log.producer().unwrap();
    let mut consumer = member(&log, "a");
    let mut listener = Recorder::default();
    producer
        .send(
            (0..6)
                .map(|i| record("in", &format!("k{i}"), "v"))
                .collect(),
        )
        .await
        .unwrap();
    let mut read = 0;
    // Four at a time: the first poll is cut short, the next ones read the rest.
    for _ in 0..4 {
        read += consumer
            .poll(&mut listener, 4, Duration::from_millis(10))
            .await
            .unwrap()
            .len();
    }
    assert_eq!(read, 6, "every record, over polls cut short by max_records");
    assert!(
        consumer
            .poll(&mut listener, 4, Duration::from_millis(10))
            .await
            .unwrap()
            .is_empty()
    );
    producer
        .send(vec![record("in", "k9", "late")])
        .await
        .unwrap();
    let late = consumer
        .poll(&mut listener, 100, Duration::from_millis(10))
        .await
        .unwrap();
    assert_eq!(late.len(), 1, "an append after everything was read");
    // Rewound with nothing appended: the records are read again.
    let partitions = consumer.assignment();
    for tp in &partitions {
        consumer.seek(tp, 0).unwrap();
    }
    let again = consumer
        .poll(&mut listener, 100, Duration::from_millis(10))
        .await
        .unwrap();
    assert_eq!(again.len(), 7, "a rewind reads again what is there");
}
