//! The whole engine on the embedded log: the hierarchical groupings, late metadata,
//! incomplete timeouts, bad input, contained panics, and a node dying mid-plate.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Harness, load, test_config};
use wellspring_actors::http::{ReqwestTransport, SharedRng};
use wellspring_actors::metrics::{Metrics, names};
use wellspring_actors::supervision::Health;
use wellspring_actors::{FunctionRegistry, Node, NodeEnv, RuntimeConfig};
use wellspring_log::{EmbeddedLog, SystemClock};
use wellspring_nodes::verify::{Expected, Tracker};
use wellspring_nodes::workload::{Message, Workload, WorkloadConfig};
use wellspring_protocol::{ChannelImage, ExperimentLayout, Value, synthetic};

/// The four groupings, each published; no tasks.
const HIERARCHY: &str = r#"
name: hierarchy
settings: {partitions: 4}
topics:
  images: {value-schema: channel_level, partitions: 3}
  metadata: {value-schema: experiment_metadata, partitions: 1}
  sites: {value-schema: site_level}
  wells: {value-schema: well_level}
  plates: {value-schema: plate_level}
  experiments: {value-schema: experiment_level}
graph:
  images: {type: topic-stream, topic-name: images}
  metadata: {type: topic-table, topic-name: metadata}
  site: {type: stream-operation, inputs: [images, metadata], function: aggregations/images-site-grouping, incomplete-timeout: TIMEOUT}
  well: {type: stream-operation, inputs: [site, metadata], function: aggregations/sites-well-grouping, incomplete-timeout: TIMEOUT}
  plate: {type: stream-operation, inputs: [well, metadata], function: aggregations/wells-plate-grouping}
  experiment: {type: stream-operation, inputs: [plate, metadata], function: aggregations/plates-experiment-grouping}
  sites-out: {type: publish, stream: site, topic-name: sites}
  wells-out: {type: publish, stream: well, topic-name: wells}
  plates-out: {type: publish, stream: plate, topic-name: plates}
  experiments-out: {type: publish, stream: experiment, topic-name: experiments}
"#;

fn hierarchy_dag(timeout: &str) -> String {
    HIERARCHY.replace("TIMEOUT", timeout)
}

/// What the hierarchy DAG should emit for a layout.
fn expectations(layout: &ExperimentLayout) -> Vec<Expected> {
    wellspring_nodes::verify::reference_expectations(layout)
        .into_iter()
        .filter(|e| e.aggregate)
        .map(|mut e| {
            e.topic = match e.topic.as_str() {
                "images_site" => "sites",
                "images_well" => "wells",
                "images_plate" => "plates",
                _ => "experiments",
            }
            .to_owned();
            e
        })
        .collect()
}

fn tally(h: &Harness, layout: &ExperimentLayout) -> Tracker {
    let mut tracker = Tracker::new(
        expectations(layout),
        "hierarchy.dead-letters",
        "hierarchy.incomplete",
    );
    let now = tokio::time::Instant::now();
    for topic in tracker.topics() {
        for record in h.read(&topic) {
            tracker.observe(&record, now);
        }
    }
    tracker
}

async fn publish_workload(h: &Harness, workload: &Workload) {
    for message in &workload.messages {
        h.publish(vec![wellspring_nodes::workload::record(
            message, "images", "metadata",
        )])
        .await;
    }
}

#[actix_rt::test]
async fn every_aggregate_exactly_once_for_shuffled_input_with_duplicates_and_late_metadata() {
    for seed in 1..=4u64 {
        let config = WorkloadConfig {
            experiment: format!("EXP-{seed}"),
            plates: 1 + (seed % 2) as u32,
            wells: 6,
            sites: 2,
            channels: 3,
            duplicates: 0.15,
            metadata_after: 10 * seed as usize,
            seed,
            ..WorkloadConfig::default()
        };
        let workload = Workload::build(&config).unwrap();
        let h = Harness::start(&hierarchy_dag("1h"), &[]).await;
        publish_workload(&h, &workload).await;
        h.wait_until("the experiment record", |h| h.count("experiments") == 1)
            .await;
        let report = tally(&h, &workload.layout).report();
        for level in &report {
            assert!(level.ok(), "seed {seed}: {level:?}");
        }
        assert!(
            h.metrics.get("hierarchy", "site", names::DUPLICATES) > 0,
            "duplicates were seen and dropped"
        );
        h.stop().await;
    }
}

#[actix_rt::test]
async fn images_before_their_metadata_wait_for_it() {
    let layout = synthetic::layout("EXP-LATE", 1, 3, 2, 2).unwrap();
    let images = synthetic::images(&layout, "HUVEC");
    let h = Harness::start(&hierarchy_dag("1h"), &[]).await;
    h.publish_images("images", &images).await;
    h.wait_until("every image at the site grouping", |h| {
        h.metrics.get("hierarchy", "site", names::IN) == images.len() as u64
    })
    .await;
    assert_eq!(
        h.count("sites"),
        0,
        "no site can complete before its layout is known"
    );
    h.publish_layout("metadata", &layout).await;
    h.wait_until("the experiment record", |h| h.count("experiments") == 1)
        .await;
    assert!(tally(&h, &layout).report().iter().all(|l| l.ok()));
    h.stop().await;
}

#[actix_rt::test]
async fn the_incomplete_timeout_names_the_missing_image_and_a_late_image_still_completes() {
    let layout = synthetic::layout("EXP-MISSING", 1, 2, 3, 6).unwrap();
    let mut images = synthetic::images(&layout, "HUVEC");
    let missing_at = images
        .iter()
        .position(|i| i.key.to_string() == "EXP-MISSING/1/B02/3/5")
        .unwrap();
    let missing: ChannelImage = images.remove(missing_at);
    // Stages that would wait an hour for records: the report comes on the groupings'
    // own timers (each shard says when its next scan is due), not on a poll cadence.
    let config = RuntimeConfig {
        max_wait: Duration::from_secs(3600),
        ..test_config()
    };
    let h = Harness::start_with(
        &hierarchy_dag("300ms"),
        &[],
        FunctionRegistry::with_builtins(),
        config,
    )
    .await;
    h.publish_layout("metadata", &layout).await;
    h.publish_images("images", &images).await;
    h.wait_until("incomplete reports for the site and the well", |h| {
        h.count("hierarchy.incomplete") >= 2
    })
    .await;
    let reports = h.read_json("hierarchy.incomplete");
    let site = reports.iter().find(|r| r["level"] == "site").unwrap();
    assert_eq!(site["key"], "EXP-MISSING/1/B02/3");
    assert_eq!(
        site["missing"],
        serde_json::json!(["channel 5 of site 3 of well B02 of plate 1"])
    );
    assert_eq!(
        (site["present"].as_i64(), site["expected"].as_i64()),
        (Some(5), Some(6))
    );
    let well = reports.iter().find(|r| r["level"] == "well").unwrap();
    assert_eq!(
        well["missing"],
        serde_json::json!(["site 3 of well B02 of plate 1"])
    );
    assert_eq!(h.count("experiments"), 0);

    h.publish_images("images", &[missing]).await;
    h.wait_until("the experiment record", |h| h.count("experiments") == 1)
        .await;
    assert!(tally(&h, &layout).report().iter().all(|l| l.ok()));
    h.stop().await;
}

#[actix_rt::test]
async fn bad_records_go_to_the_dead_letter_topic_with_the_reason_and_the_pipeline_goes_on() {
    let layout = synthetic::layout("EXP-GOOD", 1, 2, 2, 2).unwrap();
    let images = synthetic::images(&layout, "HUVEC");
    let h = Harness::start(&hierarchy_dag("1h"), &[]).await;
    h.publish_layout("metadata", &layout).await;
    let good = r#""experiment_id": "EXP-GOOD", "cell_type": "HUVEC", "plate_number": 1, "plate_barcode": "B", "site": 1, "channel": 1, "location": "s3://x""#;
    let bad = [
        ("wrong-type", r#"{"experiment_id": 12, "cell_type": "HUVEC", "plate_number": "one", "plate_barcode": "B", "well": "B02", "site": 1, "channel": 1, "location": "s3://x"}"#.to_owned(), "plate_number: expected int, found string"),
        ("missing-field", r#"{"experiment_id": "EXP-GOOD", "well": "B02"}"#.to_owned(), "location: missing"),
        ("bad-well", format!("{{{good}, \"well\": \"Z99\"}}"), "well \"Z99\" is not a well name"),
        ("outside-layout", format!("{{{good}, \"well\": \"P24\"}}"), "well P24 of plate 1 is not in the layout"),
        ("not-json", "{{{{".to_owned(), "not JSON"),
    ];
    for (key, json, _) in &bad {
        h.publish_json("images", key, json).await;
    }
    h.publish_json("metadata", "EXP-BROKEN", r#"{"experiment_id": "EXP-BROKEN", "channels_per_site": 0, "sites_per_well": 1, "plates": []}"#).await;
    h.publish_images("images", &images).await;
    h.wait_until("the good experiment's record", |h| {
        h.count("experiments") == 1
    })
    .await;
    h.wait_until("six dead letters", |h| {
        h.count("hierarchy.dead-letters") == 6
    })
    .await;
    let letters = h.read_json("hierarchy.dead-letters");
    for (key, _, reason) in &bad {
        // Rejected at the grouping, a record is filed under the key that node saw (its
        // site key); where it came from is in source_topic/partition/offset.
        let letter = letters
            .iter()
            .find(|l| {
                l["key"] == *key || (*key == "outside-layout" && l["record"]["well"] == "P24")
            })
            .unwrap_or_else(|| panic!("no dead letter for {key}: {letters:?}"));
        assert!(
            letter["reason"].as_str().unwrap().contains(reason),
            "{key}: {}",
            letter["reason"]
        );
        assert_eq!(letter["source_topic"], "images", "{key}");
        assert!(
            letter["source_partition"].is_number() && letter["source_offset"].is_number(),
            "{key}"
        );
    }
    let broken = letters.iter().find(|l| l["key"] == "EXP-BROKEN").unwrap();
    assert!(
        broken["reason"]
            .as_str()
            .unwrap()
            .contains("channels_per_site 0 is out of range"),
        "{}",
        broken["reason"]
    );
    assert!(tally(&h, &layout).report().iter().all(|l| l.ok()));
    h.stop().await;
}

const CUSTOM: &str = r#"
name: custom
settings: {partitions: 2}
topics:
  images: {value-schema: channel_level, partitions: 2}
  tagged: {value-schema: json}
graph:
  images: {type: topic-stream, topic-name: images}
  tag: {type: stream-operation, inputs: [images], function: test/tag}
  out: {type: publish, stream: tag, topic-name: tagged}
"#;

#[actix_rt::test]
async fn a_function_registered_from_rust_runs_and_a_panic_in_it_is_contained() {
    let mut registry = FunctionRegistry::with_builtins();
    registry.register_map("test/tag", "channel_level", "json", |key, record| {
        let location = record
            .get("location")
            .and_then(Value::as_str)
            .unwrap_or_default();
        assert!(!location.contains("poison"), "cannot tag {location}");
        Ok(vec![(
            key.to_owned(),
            Value::record([("tagged", Value::from(location))]),
        )])
    });
    let h = Harness::start_with(CUSTOM, &[], registry, test_config()).await;
    let layout = synthetic::layout("EXP-FN", 1, 2, 1, 5).unwrap();
    let mut images = synthetic::images(&layout, "HUVEC");
    images[3].location = "s3://poison".into();
    h.publish_images("images", &images).await;
    h.wait_until("nine tagged records and one dead letter", |h| {
        h.count("tagged") == 9 && h.count("custom.dead-letters") == 1
    })
    .await;
    let letter = &h.read_json("custom.dead-letters")[0];
    assert!(
        letter["reason"]
            .as_str()
            .unwrap()
            .contains("panic: cannot tag s3://poison"),
        "{}",
        letter["reason"]
    );
    assert_eq!(h.metrics.get("custom", "tag", names::PANICS), 1);
    assert!(h.metrics.get("custom", "tag", names::SHARD_RESTARTS) >= 1);
    // The process, and the partition, go on.
    let more = synthetic::images(&synthetic::layout("EXP-FN2", 1, 1, 1, 4).unwrap(), "HUVEC");
    h.publish_images("images", &more).await;
    h.wait_until("the later records", |h| h.count("tagged") == 13)
        .await;
    assert!(h.health.failed().is_empty());
    h.stop().await;
}

/// Runs a node in its own actor system on its own thread, so the test can kill it.
struct NodeThread {
    stop: Option<std::sync::mpsc::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NodeThread {
    fn start(log: EmbeddedLog, yaml: String, node_id: &str) -> NodeThread {
        Self::start_with(log, yaml, node_id, Metrics::default(), 0)
    }

    /// A node with the given metrics (to read them from the test) and standby replicas.
    fn start_with(
        log: EmbeddedLog,
        yaml: String,
        node_id: &str,
        metrics: Metrics,
        standby_replicas: u32,
    ) -> NodeThread {
        let (stop, stopped) = std::sync::mpsc::channel::<bool>();
        let node_id = node_id.to_owned();
        let thread = std::thread::spawn(move || {
            let system = actix_rt::System::new();
            system.block_on(async move {
                let registry = FunctionRegistry::with_builtins();
                let dag = load(&yaml, &registry, &[]);
                let env = NodeEnv {
                    log: Arc::new(log),
                    clock: Arc::new(SystemClock),
                    transport: Arc::new(ReqwestTransport::new().unwrap()),
                    registry: Arc::new(registry),
                    metrics,
                    health: Health::default(),
                    rng: SharedRng::seeded(1),
                    task_store: None,
                    config: RuntimeConfig {
                        node_id,
                        session_timeout: Duration::from_secs(2),
                        standby_replicas,
                        ..test_config()
                    },
                };
                let node = Node::start(env, vec![dag]).await.unwrap();
                loop {
                    match stopped.try_recv() {
                        Ok(true) => {
                            node.shutdown().await;
                            return;
                        }
                        // Killed: return without shutting down; dropping the system drops
                        // every actor mid-flight, as a crash would.
                        Ok(false) | Err(std::sync::mpsc::TryRecvError::Disconnected) => return,
                        Err(std::sync::mpsc::TryRecvError::Empty) => {
                            tokio::time::sleep(Duration::from_millis(5)).await
                        }
                    }
                }
            });
        });
        NodeThread {
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Kills the node (its actors dropped mid-flight, as a crash would), or stops it
    /// cleanly.
    fn end(mut self, graceful: bool) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(graceful);
        }
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

/// Waits (up to a generous bound) until `done` holds; `what` names it if it never does.
async fn wait_for(what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn count(log: &EmbeddedLog, topic: &str) -> usize {
    (0..)
        .map_while(|p| {
            log.read(
                &wellspring_log::TopicPartition::new(topic, p),
                0,
                usize::MAX,
            )
            .ok()
        })
        .map(|r| r.len())
        .sum()
}

/// Two plates of 24 wells, no repeats, the metadata first.
fn two_plates(experiment: &str) -> (ExperimentLayout, Workload) {
    let layout = synthetic::layout(experiment, 2, 24, 4, 6).unwrap();
    let workload = Workload::build(&WorkloadConfig {
        experiment: experiment.into(),
        plates: 2,
        wells: 24,
        duplicates: 0.0,
        metadata_after: 0,
        ..WorkloadConfig::default()
    })
    .unwrap();
    (layout, workload)
}

/// Waits until the first node has created the DAG's topics.
async fn wait_for_topics(log: &EmbeddedLog) {
    wait_for("the first node creating its topics", || {
        log.read(&wellspring_log::TopicPartition::new("metadata", 0), 0, 1)
            .is_ok()
    })
    .await;
}

/// Publishes `messages` one by one (without the metadata records when `metadata` is off:
/// those were published with the first half).
async fn publish(log: &EmbeddedLog, messages: &[Message], metadata: bool) {
    let producer = wellspring_log::Log::producer(log).unwrap();
    for message in messages {
        if metadata || !matches!(message, Message::Metadata(_)) {
            producer
                .send(vec![wellspring_nodes::workload::record(
                    message, "images", "metadata",
                )])
                .await
                .unwrap();
        }
    }
}

#[actix_rt::test]
async fn a_node_killed_mid_plate_is_replaced_from_the_changelog_with_nothing_lost_or_repeated() {
    let (layout, workload) = two_plates("EXP-KILL");
    let log = EmbeddedLog::new();
    let dag = hierarchy_dag("1h");
    let first = NodeThread::start(log.clone(), dag.clone(), "node-a");
    wait_for_topics(&log).await;
    let (before, after) = workload.messages.split_at(workload.messages.len() / 2);
    publish(&log, before, true).await;
    wait_for("the first node's first 50 sites", || {
        count(&log, "sites") >= 50
    })
    .await;
    first.end(false);
    let sites_before = count(&log, "sites");
    assert!(sites_before < 4 * 48, "killed mid-experiment");

    // A different node takes over once the dead one's session expires, restoring the
    // open aggregates from the changelogs.
    let second = NodeThread::start(log.clone(), dag, "node-b");
    publish(&log, after, false).await;
    wait_for("the experiment record after the takeover", || {
        count(&log, "experiments") >= 1
    })
    .await;
    second.end(true);
    every_aggregate_once(&log, &layout);
}

/// Every aggregate of `layout` is on its topic exactly once, nothing incomplete.
fn every_aggregate_once(log: &EmbeddedLog, layout: &ExperimentLayout) {
    let mut tracker = Tracker::new(
        expectations(layout),
        "hierarchy.dead-letters",
        "hierarchy.incomplete",
    );
    let now = tokio::time::Instant::now();
    for topic in tracker.topics() {
        for p in 0.. {
            let Ok(records) = log.read(
                &wellspring_log::TopicPartition::new(topic.as_str(), p),
                0,
                usize::MAX,
            ) else {
                break;
            };
            for record in records {
                tracker.observe(&record, now);
            }
        }
    }
    for level in tracker.report() {
        assert!(level.ok(), "{level:?}");
    }
}

/// With standby replicas, the node that inherits a killed node's groupings starts their
/// shards from its warm copies (not by replaying their changelogs), and the result is the
/// same: every aggregate once.
#[actix_rt::test]
async fn a_node_with_standbys_takes_over_from_its_warm_copies_with_nothing_lost_or_repeated() {
    const GROUPINGS: [&str; 4] = ["site", "well", "plate", "experiment"];
    let (layout, workload) = two_plates("EXP-STANDBY");
    let log = EmbeddedLog::new();
    let dag = hierarchy_dag("1h");
    let heir_metrics = Metrics::default();
    let doomed = NodeThread::start(log.clone(), dag.clone(), "node-a");
    wait_for_topics(&log).await;
    let heir = NodeThread::start_with(log.clone(), dag, "node-b", heir_metrics.clone(), 1);
    // Each of the four groupings has 4 partitions; the heir follows those it does not own.
    let warm = |m: &Metrics| {
        GROUPINGS
            .iter()
            .map(|node| m.gauge_value("hierarchy", node, names::STANDBY_PARTITIONS))
            .sum::<i64>()
    };
    let owned = |m: &Metrics| {
        m.owned_partitions()
            .iter()
            .filter(|(_, node, _)| GROUPINGS.contains(&node.as_str()))
            .map(|(_, _, partitions)| partitions.len() as i64)
            .sum::<i64>()
    };
    wait_for(
        "the heir owning some shards and following the others",
        || {
            let owned = owned(&heir_metrics);
            owned > 0 && owned < 16 && warm(&heir_metrics) == 16 - owned
        },
    )
    .await;
    let (before, after) = workload.messages.split_at(workload.messages.len() / 2);
    publish(&log, before, true).await;
    wait_for("50 sites", || count(&log, "sites") >= 50).await;
    doomed.end(false);
    publish(&log, after, false).await;
    wait_for("the experiment record after the takeover", || {
        count(&log, "experiments") >= 1
    })
    .await;
    let from_standby: u64 = GROUPINGS
        .iter()
        .map(|node| heir_metrics.get("hierarchy", node, names::RESTORES_FROM_STANDBY))
        .sum();
    assert!(
        owned(&heir_metrics) == 16 && warm(&heir_metrics) == 0,
        "the heir owns every shard now, and follows none"
    );
    assert!(
        from_standby > 0,
        "the heir started the inherited shards from its warm copies"
    );
    heir.end(true);
    every_aggregate_once(&log, &layout);
}

/// During a roll an older node may meet a record a newer node wrote in a newer format:
/// it must stop before it (nothing dead-lettered, nothing misread, the DAG given up with
/// the versions named) rather than guess, at a grouping's shard and at a task's alike.
#[actix_rt::test]
async fn a_record_in_a_newer_format_stops_the_dag_with_both_versions_named() {
    use wellspring_protocol::{Envelope, MessageId, wire};
    for node in ["site", "features"] {
        let h = Harness::start(common::SITE_FEATURES_DAG, &[]).await;
        let mut bytes = wire::encode(&Envelope::new(
            MessageId::derive("lab", node, "EXP-1/1/B02/1"),
            "EXP-1/1/B02/1",
            Value::Null,
        ));
        bytes[0] = wire::FORMAT_VERSION + 1;
        h.publish(vec![
            wellspring_log::ProducerRecord::new(
                format!("wellspring.lab.{node}.input"),
                Some(bytes::Bytes::from_static(b"EXP-1/1/B02/1")),
                Some(bytes::Bytes::from(bytes)),
            )
            .to_partition(0),
        ])
        .await;
        h.wait_until("the DAG given up", |h| !h.health.gave_up().is_empty())
            .await;
        let (component, reason) = h.health.gave_up().remove(0);
        assert!(
            reason.contains(&format!(
                "is in format version {}, written by a newer Wellspring, and this node reads format version {}",
                wire::FORMAT_VERSION + 1,
                wire::FORMAT_VERSION
            )) && reason.contains(&format!("wellspring.lab.{node}.input[0]")),
            "{node}: {component}: {reason}"
        );
        assert_eq!(
            h.count("lab.dead-letters"),
            0,
            "{node}: nothing dead-lettered"
        );
        assert_eq!(
            h.count("features"),
            0,
            "{node}: nothing misread into an output"
        );
        h.stop().await;
    }
}

/// State a newer node wrote (a grouping's changelog entry in a newer format) is not
/// skipped on restore, which would lose or repeat its aggregate: the shard does not
/// start, and the DAG is given up with both versions named.
#[actix_rt::test]
async fn a_changelog_entry_in_a_newer_format_is_not_skipped_on_restore() {
    use wellspring_log::{Cleanup, Log, ProducerRecord, TopicSpec};
    use wellspring_protocol::wire;
    let log = EmbeddedLog::new();
    let changelog = "wellspring.lab.site.changelog";
    log.ensure_topic(&TopicSpec::new(changelog, 2, Cleanup::Compact))
        .await
        .unwrap();
    let entry = vec![wire::FORMAT_VERSION + 1, 0, 0];
    log.producer()
        .unwrap()
        .send(vec![
            ProducerRecord::new(
                changelog,
                Some(bytes::Bytes::from_static(b"EXP-1/1/B02/1")),
                Some(bytes::Bytes::from(entry)),
            )
            .to_partition(1),
        ])
        .await
        .unwrap();
    let h = Harness::start_on(
        log,
        common::SITE_FEATURES_DAG,
        &[],
        FunctionRegistry::with_builtins(),
        test_config(),
    )
    .await;
    h.wait_until("the DAG given up", |h| !h.health.gave_up().is_empty())
        .await;
    let (_, reason) = h.health.gave_up().remove(0);
    assert!(
        reason.contains("record 0 of wellspring.lab.site.changelog[1] is in format version 2")
            && reason.contains("this node reads format version 1"),
        "{reason}"
    );
    h.stop().await;
}
