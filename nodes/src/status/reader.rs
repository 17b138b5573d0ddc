//! Reading the DAGs' topics into the model: every partition from the start, outside the
//! consumer groups (as `verify` reads them), so that every node sees the whole cluster's
//! records, whoever produced them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use wellspring_log::{ConsumerConfig, Log, LogError, LogRecord, NoListener, TopicPartition};
use wellspring_protocol::status::{DeadLetterEntry, IncompleteReport, StatusEvent};
use wellspring_protocol::{ExperimentLayout, Value};

use super::StatusView;
use super::model::{Changes, Model};

/// What a topic carries, for which DAG.
#[derive(Debug, Clone, Copy)]
enum Role {
    Images(usize),
    Metadata(usize),
    Output(usize, usize, bool),
    DeadLetters,
    Incomplete,
}

fn roles(model: &Model) -> HashMap<String, Vec<Role>> {
    let mut roles: HashMap<String, Vec<Role>> = HashMap::new();
    for (d, shape) in model.dags.iter().enumerate() {
        let mut add = |topic: &str, role| roles.entry(topic.to_owned()).or_default().push(role);
        if let Some(t) = &shape.images_topic {
            add(t, Role::Images(d));
        }
        if let Some(t) = &shape.metadata_topic {
            add(t, Role::Metadata(d));
        }
        for (i, o) in shape.outputs.iter().enumerate() {
            add(&o.topic, Role::Output(d, i, o.task));
        }
        add(&shape.dag.settings.dead_letter_topic, Role::DeadLetters);
        add(&shape.dag.settings.incomplete_topic, Role::Incomplete);
    }
    for list in roles.values_mut() {
        // A topic shared by DAGs (the dead letters) is read once.
        list.dedup_by(|a, b| {
            matches!(
                (a, b),
                (Role::DeadLetters, Role::DeadLetters) | (Role::Incomplete, Role::Incomplete)
            )
        });
    }
    roles
}

/// Topics the view reads by key alone: the images (present or not) and the aggregates.
/// Values are read only where the view shows what is in them (QC values of tasks'
/// outputs, layouts, dead letters, incomplete reports).
fn keys_only(roles: &HashMap<String, Vec<Role>>) -> Vec<String> {
    let mut topics: Vec<String> = roles
        .iter()
        .filter(|(_, roles)| {
            roles
                .iter()
                .all(|role| matches!(role, Role::Images(_) | Role::Output(_, _, false)))
        })
        .map(|(topic, _)| topic.clone())
        .collect();
    topics.sort();
    topics
}

/// How often changes go out as events, and counters are sampled for rates.
const EVENT_INTERVAL: Duration = Duration::from_millis(250);
const RATE_INTERVAL: Duration = Duration::from_secs(1);
/// Records read at most per poll, and how long to wait once caught up. (Smaller fetches,
/// 2,000 at a time, cost the pipeline more: measured.)
const BATCH: usize = 20_000;
const GATHER: Duration = Duration::from_millis(50);
/// How long the brokers may hold the reader's fetch that finds nothing new.
const STATUS_IDLE_WAIT: Duration = Duration::from_millis(250);

/// Reads until the view is stopped; waits for topics that do not exist yet.
pub async fn run(view: StatusView, log: Arc<dyn Log>, client_id: String) {
    if let Err(e) = read(&view, log.as_ref(), &client_id).await {
        tracing::error!("the status view stopped reading: {e}");
        view.set_error(e.to_string());
    }
}

async fn read(view: &StatusView, log: &dyn Log, client_id: &str) -> Result<(), LogError> {
    let roles = roles(&view.shared.model.lock());
    let mut topics: Vec<&String> = roles.keys().collect();
    topics.sort();
    let mut assignment = Vec::new();
    for topic in topics {
        loop {
            if view.stopped() {
                return Ok(());
            }
            match log.partitions(topic).await {
                Ok(n) => {
                    assignment
                        .extend((0..n).map(|p| (TopicPartition::new(topic.as_str(), p), Some(0))));
                    break;
                }
                // The DAG's node creates its topics; an input topic may come later.
                Err(LogError::UnknownTopic(_)) => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
    if assignment.is_empty() {
        // A node without DAGs: nothing to show.
        return Ok(());
    }
    let mut config = ConsumerConfig::assign(client_id, assignment);
    config.keys_only = keys_only(&roles);
    // It follows every topic for as long as the node runs, one Kafka client per topic:
    // at the restores' 25 ms, a topic with nothing new cost the brokers up to 40 fetches
    // a second (440 for the reference DAG's topics, from every node, idle or not). At
    // 250 ms: 4 a topic; on brokers that hold a fetch in full (tansu, nisshi) the view
    // may be a quarter of a second late, which a page refreshed by events can afford.
    config.idle_wait = Some(STATUS_IDLE_WAIT);
    let mut consumer = log.consumer(config)?;
    let mut last_events = Instant::now();
    let mut last_rates = Instant::now();
    let mut sampled: HashMap<String, u64> = HashMap::new();
    let mut failing = false;
    while !view.stopped() {
        let records = match consumer
            .poll(&mut NoListener, BATCH, Duration::from_millis(100))
            .await
        {
            Ok(records) => {
                if failing {
                    failing = false;
                    *view.shared.error.lock() = None;
                }
                records
            }
            // A broker that does not answer for a while: the view waits and goes on
            // where it was (it is stale meanwhile, and says so).
            Err(e) => {
                if !failing {
                    tracing::warn!("the status view cannot read the log: {e}; retrying");
                }
                failing = true;
                view.set_error(e.to_string());
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if !records.is_empty() {
            let mut model = view.shared.model.lock();
            for record in &records {
                observe(&mut model, &roles, record);
            }
        }
        if records.len() < BATCH {
            // Caught up: let records gather instead of waking for each append (the view
            // is a dashboard; a few tens of milliseconds do not matter, the pipeline's
            // throughput does).
            tokio::time::sleep(GATHER).await;
        }
        if last_events.elapsed() >= EVENT_INTERVAL {
            last_events = Instant::now();
            let (changes, version) = {
                let mut model = view.shared.model.lock();
                (std::mem::take(&mut model.changes), model.version)
            };
            send_events(view, changes, version);
        }
        if last_rates.elapsed() >= RATE_INTERVAL {
            let elapsed = last_rates.elapsed().as_secs_f64();
            last_rates = Instant::now();
            let counts = view.shared.model.lock().records.clone();
            let mut rates = view.shared.rates.lock();
            let mut moved = false;
            for (topic, n) in &counts {
                let before = sampled.get(topic).copied().unwrap_or(0);
                moved |= *n != before;
                rates.insert(topic.clone(), (n - before) as f64 / elapsed);
            }
            drop(rates);
            sampled = counts;
            if moved {
                let version = view.shared.model.lock().version;
                let _ = view.shared.events.send(event("dags", None, None, version));
            }
        }
    }
    consumer.close(&mut NoListener).await
}

fn event(kind: &str, experiment: Option<String>, plate: Option<u32>, version: u64) -> StatusEvent {
    StatusEvent {
        kind: kind.into(),
        experiment,
        plate,
        wells: Vec::new(),
        version,
    }
}

fn send_events(view: &StatusView, changes: Changes, version: u64) {
    if changes.is_empty() || view.shared.events.receiver_count() == 0 {
        return;
    }
    let events = &view.shared.events;
    for (experiment, plates) in changes.experiments {
        let _ = events.send(event("experiment", Some(experiment.clone()), None, version));
        for (plate, wells) in plates {
            let mut e = event("plate", Some(experiment.clone()), Some(plate), version);
            e.wells = wells.iter().map(ToString::to_string).collect();
            let _ = events.send(e);
        }
    }
    if changes.dead_letters {
        let _ = events.send(event("dead_letter", None, None, version));
    }
    for key in changes.incomplete.into_iter().take(100) {
        let experiment = key.split('/').next().map(str::to_owned);
        let _ = events.send(event("incomplete", experiment, None, version));
    }
}

fn key_of(record: &LogRecord) -> Option<&str> {
    record
        .key
        .as_deref()
        .and_then(|k| std::str::from_utf8(k).ok())
}

fn json_of(record: &LogRecord) -> Option<serde_json::Value> {
    record
        .value
        .as_deref()
        .and_then(|v| serde_json::from_slice(v).ok())
}

fn observe(model: &mut Model, roles: &HashMap<String, Vec<Role>>, record: &LogRecord) {
    let Some(roles) = roles.get(&*record.topic) else {
        return;
    };
    model.count_record(&record.topic);
    for role in roles {
        match *role {
            Role::Images(dag) => {
                if let Some(key) = key_of(record) {
                    model.observe_image(dag, key, record.timestamp_ms);
                }
            }
            Role::Metadata(dag) => {
                let layout = json_of(record)
                    .and_then(|json| ExperimentLayout::from_value(&Value::from(&json)).ok());
                if let Some(layout) = layout {
                    model.observe_layout(dag, layout);
                }
            }
            Role::Output(dag, output, task) => {
                let Some(key) = key_of(record) else {
                    continue;
                };
                // Only a task's outputs carry QC values; aggregates are read by key alone.
                let value = if task { json_of(record) } else { None };
                model.observe_output(dag, output, key, value.as_ref());
            }
            Role::DeadLetters => {
                if let Some(json) = json_of(record) {
                    let entry = dead_letter(&json, record);
                    let dag = model
                        .dags
                        .iter()
                        .position(|d| d.dag.name == entry.dag)
                        .unwrap_or(0);
                    model.observe_dead_letter(dag, entry);
                }
            }
            Role::Incomplete => {
                if let Some(json) = json_of(record) {
                    let report = incomplete(&json);
                    let dag = json
                        .get("dag")
                        .and_then(|d| d.as_str())
                        .and_then(|name| model.dags.iter().position(|d| d.dag.name == name))
                        .unwrap_or(0);
                    if let Some(report) = report {
                        model.observe_incomplete(dag, report);
                    }
                }
            }
        }
    }
}

fn text(json: &serde_json::Value, field: &str) -> Option<String> {
    json.get(field).and_then(|v| v.as_str()).map(str::to_owned)
}

fn number(json: &serde_json::Value, field: &str) -> Option<u64> {
    json.get(field).and_then(serde_json::Value::as_u64)
}

/// A dead letter as the view and the redrive list it, from its record on the dead-letter
/// topic (its experiment, plate, well and site are filled from its key by whoever knows
/// the hierarchy: [`super::shape::KeyPath`]).
pub(crate) fn dead_letter(json: &serde_json::Value, record: &LogRecord) -> DeadLetterEntry {
    DeadLetterEntry {
        id: wellspring_protocol::redrive::dead_letter_id(
            &record.topic,
            record.partition,
            record.offset,
        ),
        dag: text(json, "dag").unwrap_or_default(),
        node: text(json, "node").unwrap_or_default(),
        reason: text(json, "reason").unwrap_or_default(),
        key: text(json, "key").or_else(|| key_of(record).map(str::to_owned)),
        experiment: None,
        plate: None,
        well: None,
        site: None,
        attempts: number(json, "attempts").unwrap_or(0) as u32,
        source_topic: text(json, "source_topic"),
        source_partition: number(json, "source_partition").map(|p| p as u32),
        source_offset: number(json, "source_offset"),
        trace_id: record
            .header("traceparent")
            .and_then(|t| std::str::from_utf8(t).ok())
            .and_then(|t| t.split('-').nth(1))
            .map(str::to_owned),
        timestamp_ms: record.timestamp_ms,
    }
}

fn incomplete(json: &serde_json::Value) -> Option<IncompleteReport> {
    Some(IncompleteReport {
        level: text(json, "level")?,
        key: text(json, "key")?,
        present: number(json, "present").unwrap_or(0) as u32,
        expected: number(json, "expected").map(|n| n as u32),
        missing: json
            .get("missing")
            .and_then(|m| m.as_array())
            .map(|list| {
                list.iter()
                    .filter_map(|m| m.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        description: text(json, "description").unwrap_or_default(),
    })
}
