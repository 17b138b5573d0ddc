//! Topics on Kafka: created with their partitions and cleanup policy, or checked when
//! they exist (a changelog partitioned differently would restore state into the wrong
//! shards); partition counts and end offsets from the metadata consumer.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::consumer::Consumer as _;
use rdkafka::error::RDKafkaErrorCode;

use super::call::blocking;
use super::connection::Connection;
use crate::{Cleanup, LogError, Offset, TopicPartition, TopicSpec};

/// Creates the topic, or checks that an existing one has the partitions and cleanup
/// policy asked for.
pub(super) async fn ensure_topic(
    connection: &Arc<Connection>,
    spec: &TopicSpec,
) -> Result<(), LogError> {
    match partitions(connection, &spec.name).await {
        Ok(found) => check_topic(connection, spec, found).await,
        Err(LogError::UnknownTopic(_)) => create_topic(connection, spec).await,
        Err(e) => Err(e),
    }
}

async fn check_topic(
    connection: &Connection,
    spec: &TopicSpec,
    found: u32,
) -> Result<(), LogError> {
    if found != spec.partitions {
        return Err(LogError::TopicMismatch {
            topic: spec.name.clone(),
            expected: format!("{} partitions", spec.partitions),
            found: format!("{found} partitions"),
            fix: "its shards are its partitions: recreate it, or set Wellspring's partitions to match".into(),
        });
    }
    let (policy, compacted) = cleanup_policies(
        connection,
        &[spec.name.as_str()],
        connection.settings.timeout,
    )
    .await?
    .pop()
    .flatten()
    .unwrap_or_else(|| ("delete".into(), false));
    if compacted != (spec.cleanup == Cleanup::Compact) {
        return Err(LogError::TopicMismatch {
            topic: spec.name.clone(),
            expected: format!("cleanup.policy {}", cleanup_policy(spec.cleanup)),
            found: format!("cleanup.policy {policy}"),
            fix: "a changelog must be compacted and a stream must not be: change the topic's cleanup.policy".into(),
        });
    }
    connection
        .compacted
        .lock()
        .insert(spec.name.clone(), compacted);
    Ok(())
}

async fn create_topic(connection: &Arc<Connection>, spec: &TopicSpec) -> Result<(), LogError> {
    let settings = &connection.settings;
    let topic = NewTopic::new(
        &spec.name,
        spec.partitions as i32,
        TopicReplication::Fixed(settings.replication_factor),
    )
    .set("cleanup.policy", cleanup_policy(spec.cleanup));
    let results = connection
        .admin
        .create_topics(
            &[topic],
            &AdminOptions::new().operation_timeout(Some(settings.timeout)),
        )
        .await
        .map_err(|e| connection.explain(&e))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(LogError::Other(format!("creating topic {topic}: {code}")));
            }
        }
    }
    // Creation is asynchronous on the brokers: wait until metadata shows it.
    let deadline = tokio::time::Instant::now() + settings.timeout;
    loop {
        match partitions(connection, &spec.name).await {
            Ok(n) if n == spec.partitions => break,
            Ok(_) | Err(LogError::UnknownTopic(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(n) => {
                return Err(LogError::Other(format!(
                    "topic {} was created with {n} partitions, not {}",
                    spec.name, spec.partitions
                )));
            }
            Err(e) => return Err(e),
        }
    }
    connection
        .partitions
        .lock()
        .insert(spec.name.clone(), spec.partitions);
    connection
        .compacted
        .lock()
        .insert(spec.name.clone(), spec.cleanup == Cleanup::Compact);
    Ok(())
}

/// Whether each topic compacts, in the order asked: as remembered, else asked of the
/// brokers (and remembered). A topic the brokers do not describe (not created yet) is
/// taken as not compacted, and asked again next time.
pub(super) async fn compacted(
    connection: &Connection,
    topics: &[&str],
    timeout: Duration,
) -> Result<Vec<bool>, LogError> {
    let unknown: Vec<&str> = {
        let known = connection.compacted.lock();
        topics
            .iter()
            .copied()
            .filter(|t| !known.contains_key(*t))
            .collect()
    };
    if !unknown.is_empty() {
        let policies = cleanup_policies(connection, &unknown, timeout).await?;
        let mut known = connection.compacted.lock();
        for (topic, policy) in unknown.iter().zip(policies) {
            if let Some((_, compacted)) = policy {
                known.insert((*topic).to_owned(), compacted);
            }
        }
    }
    let known = connection.compacted.lock();
    Ok(topics
        .iter()
        .map(|t| known.get(*t).copied().unwrap_or(false))
        .collect())
}

/// Each topic's `cleanup.policy` (Kafka's default, `delete`, when not reported) and
/// whether it compacts, in the order asked; `None` for a topic the brokers did not
/// describe.
async fn cleanup_policies(
    connection: &Connection,
    topics: &[&str],
    timeout: Duration,
) -> Result<Vec<Option<(String, bool)>>, LogError> {
    let resources: Vec<ResourceSpecifier<'_>> =
        topics.iter().map(|t| ResourceSpecifier::Topic(t)).collect();
    let configs = connection
        .admin
        .describe_configs(
            &resources,
            &AdminOptions::new().request_timeout(Some(timeout)),
        )
        .await
        .map_err(|e| connection.explain(&e))?;
    Ok(configs
        .into_iter()
        .map(|config| {
            let policy = config
                .ok()?
                .entries
                .into_iter()
                .find(|e| e.name == "cleanup.policy")
                .and_then(|e| e.value)
                .unwrap_or_else(|| "delete".into());
            let compacted = policy.split(',').any(|p| p.trim() == "compact");
            Some((policy, compacted))
        })
        .collect())
}

fn cleanup_policy(cleanup: Cleanup) -> &'static str {
    match cleanup {
        Cleanup::Compact => "compact",
        Cleanup::Delete => "delete",
    }
}

/// The topic's partition count, asked of the brokers.
pub(super) async fn partitions(connection: &Arc<Connection>, topic: &str) -> Result<u32, LogError> {
    let shared = connection.clone();
    let name = topic.to_owned();
    let metadata = blocking(move || {
        shared
            .meta
            .fetch_metadata(Some(&name), shared.settings.timeout)
    })
    .await?
    .map_err(|e| connection.explain(&e))?;
    let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Err(LogError::UnknownTopic(topic.to_owned()));
    };
    match found.error() {
        None if !found.partitions().is_empty() => Ok(found.partitions().len() as u32),
        _ => Err(LogError::UnknownTopic(topic.to_owned())),
    }
}

/// The topic's partition count, asked once and remembered (a topic's partitions never
/// change under Wellspring: [`ensure_topic`] refuses a topic that has other).
pub(super) async fn known_partitions(
    connection: &Arc<Connection>,
    topic: &str,
) -> Result<u32, LogError> {
    if let Some(n) = connection.partitions.lock().get(topic) {
        return Ok(*n);
    }
    let n = partitions(connection, topic).await?;
    connection.partitions.lock().insert(topic.to_owned(), n);
    Ok(n)
}

/// The partition's high watermark (its last stable offset, read_committed).
pub(super) async fn end_offset(
    connection: &Arc<Connection>,
    partition: &TopicPartition,
) -> Result<Offset, LogError> {
    let shared = connection.clone();
    let (topic, p) = (partition.topic.to_string(), partition.partition as i32);
    let (_, high) = blocking(move || {
        shared
            .meta
            .fetch_watermarks(&topic, p, shared.settings.timeout)
    })
    .await?
    .map_err(|e| connection.explain(&e))?;
    Ok(high.max(0) as Offset)
}
