//! Removing a lost static member from a Kafka consumer group.
//!
//! A static member (`group.instance.id`) that dies keeps its partitions until its session
//! times out: that is what lets a restarted pod get them back without a rebalance. When
//! the node is known to be gone for good (Kubernetes deleted its pod), waiting out the
//! session only delays the failover. Kafka's admin API can remove a static member
//! (KIP-345's RemoveMembersFromConsumerGroup), but librdkafka does not offer that call.
//! What librdkafka does offer is the protocol itself: a consumer that joins with the lost
//! member's instance id takes its place (the coordinator fences the old member id), and
//! an unsubscribe then sends a LeaveGroup for that instance id, so the group rebalances
//! at once. The stand-in never commits, and reads nothing it keeps.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;

use super::leave::leave_group;

/// A consumer group this log's static members joined, as they joined it.
#[derive(Debug, Clone)]
pub(super) struct StaticGroup {
    pub topics: Vec<String>,
    /// The members' group settings (`session.timeout.ms`, assignment strategy, ...): the
    /// stand-in must join with the same protocol or the coordinator refuses it.
    pub properties: Vec<(String, String)>,
    pub session: Duration,
}

/// What happened to one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Evicted {
    Removed,
    /// The broker does not list the instance among the group's members (it left cleanly,
    /// was never there, or the broker does not list members: then nothing is done).
    NotAMember,
}

/// Notices the stand-in's join (an assignment, possibly empty, after the join).
struct JoinWatch {
    joined: Arc<AtomicBool>,
}

impl ClientContext for JoinWatch {}

impl ConsumerContext for JoinWatch {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if matches!(rebalance, Rebalance::Assign(_)) {
            self.joined.store(true, Ordering::Release);
        }
    }
}

/// Whether the group lists a member of node `instance` (its client ids are
/// `NODE/STAGE`). A group the broker does not list has no such member: a member that left
/// cleanly is not listed either, and then nothing must disturb the group.
fn is_member(
    client: &ClientConfig,
    group: &str,
    instance: &str,
    timeout: Duration,
) -> Result<bool, KafkaError> {
    let probe: BaseConsumer = client.create()?;
    let list = probe.fetch_group_list(Some(group), timeout)?;
    let prefix = format!("{instance}/");
    Ok(list.groups().iter().filter(|g| g.name() == group).any(|g| {
        g.members()
            .iter()
            .any(|m| m.client_id() == instance || m.client_id().starts_with(&prefix))
    }))
}

/// Takes the place of static member `instance` in `group` and leaves in its name.
/// Blocking: run it on a blocking thread.
pub(super) fn evict(
    base: ClientConfig,
    group: &str,
    spec: &StaticGroup,
    instance: &str,
    timeout: Duration,
) -> Result<Evicted, KafkaError> {
    if !is_member(&base, group, instance, timeout)? {
        return Ok(Evicted::NotAMember);
    }
    let joined = Arc::new(AtomicBool::new(false));
    let mut client = base;
    client
        .set("group.id", group)
        .set("group.instance.id", instance)
        .set("client.id", format!("{instance}/evicted"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Nothing it fetches is used: start at the end where nothing was committed.
        .set("auto.offset.reset", "latest");
    for (key, value) in &spec.properties {
        client.set(key, value);
    }
    let consumer: BaseConsumer<JoinWatch> = client.create_with_context(JoinWatch {
        joined: joined.clone(),
    })?;
    let topics: Vec<&str> = spec.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    // A static member's rejoin is answered at once by a stable group; a group that
    // rebalances answers when the round ends (bounded by the rebalance timeout).
    let deadline = Instant::now() + timeout.max(spec.session * 2);
    while !joined.load(Ordering::Acquire) && Instant::now() < deadline {
        if let Some(Err(e)) = consumer.poll(Duration::from_millis(50))
            && matches!(e, KafkaError::MessageConsumption(code) if is_fatal(code))
        {
            return Err(e);
        }
    }
    if !joined.load(Ordering::Acquire) {
        return Err(KafkaError::Subscription(format!(
            "could not join group {group} as {instance} within {:?}",
            timeout.max(spec.session * 2)
        )));
    }
    leave_group(&consumer);
    Ok(Evicted::Removed)
}

fn is_fatal(code: rdkafka::types::RDKafkaErrorCode) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    matches!(
        code,
        Code::FencedInstanceId | Code::InconsistentGroupProtocol | Code::GroupAuthorizationFailed
    )
}
