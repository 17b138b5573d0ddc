//! The embedded log's group coordinator: who is in each consumer group, where the group
//! wants each partition (the assignment, balanced and sticky, as Kafka's
//! cooperative-sticky assignor), who holds each partition now, and the committed offsets.
//!
//! A partition moves only when its holder releases it (after revoking, with a commit) or
//! is presumed dead. The coordinator asserts (`debug_assert!`: test builds and the
//! simulation harness) what it keeps: no partition is in two members' assignments, every
//! holder is a member of the group, and a committed offset only grows.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;

use super::storage::Topics;
use crate::committed::CommittedOffsets;
use crate::{LogError, Offset, TopicPartition};

#[derive(Default)]
pub(super) struct GroupState {
    members: BTreeMap<u64, MemberState>,
    /// Who holds each partition now (one holder per partition). A partition moves only
    /// when its holder releases it (after revoking) or is presumed dead.
    owners: BTreeMap<TopicPartition, u64>,
    committed: CommittedOffsets,
    generation: u64,
    /// Counts the changes of who is a member and who holds what (see
    /// [`GroupState::holdings`]): a watcher of the holdings compares counts.
    holdings_changes: u64,
}

pub(super) struct MemberState {
    client_id: String,
    instance_id: Option<String>,
    topics: Vec<String>,
    session_timeout: Duration,
    /// When it was last heard from, plus its session timeout: past this it is presumed
    /// dead. (Kept rather than computed: every poll of every member checks it.)
    expires_at: Instant,
    /// Where the group wants this member's partitions to be.
    target: BTreeSet<TopicPartition>,
}

/// A snapshot of a consumer group, for tests, tools and the node API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupView {
    pub generation: u64,
    /// `(client id, instance id, partitions held)` per member.
    pub members: Vec<(String, Option<String>, Vec<TopicPartition>)>,
    pub committed: BTreeMap<TopicPartition, Offset>,
    /// The topics the members subscribe to.
    pub topics: BTreeSet<String>,
}

impl MemberState {
    pub fn new(
        client_id: String,
        instance_id: Option<String>,
        topics: Vec<String>,
        session_timeout: Duration,
        now: Instant,
    ) -> Self {
        Self {
            client_id,
            instance_id,
            topics,
            session_timeout,
            expires_at: now + session_timeout,
            target: BTreeSet::new(),
        }
    }
}

impl GroupState {
    pub fn view(&self) -> GroupView {
        GroupView {
            generation: self.generation,
            members: self.holdings(),
            committed: self.committed.iter().map(|(k, v)| (k.clone(), v)).collect(),
            topics: self
                .members
                .values()
                .flat_map(|m| m.topics.iter().cloned())
                .collect(),
        }
    }

    /// `(client id, instance id, partitions held)` per member, in member order.
    pub fn holdings(&self) -> Vec<(String, Option<String>, Vec<TopicPartition>)> {
        let mut held: BTreeMap<u64, Vec<TopicPartition>> = BTreeMap::new();
        for (tp, owner) in &self.owners {
            held.entry(*owner).or_default().push(tp.clone());
        }
        self.members
            .iter()
            .map(|(id, m)| {
                (
                    m.client_id.clone(),
                    m.instance_id.clone(),
                    held.remove(id).unwrap_or_default(),
                )
            })
            .collect()
    }

    /// A count that changes whenever [`GroupState::holdings`] may have.
    pub fn holdings_changes(&self) -> u64 {
        self.holdings_changes
    }

    /// Whether a member subscribes to `topic`.
    pub fn subscribes_to(&self, topic: &str) -> bool {
        self.members
            .values()
            .any(|m| m.topics.iter().any(|t| t == topic))
    }

    pub fn is_member(&self, id: u64) -> bool {
        self.members.contains_key(&id)
    }

    /// Recomputes where every partition should be: balanced, and sticky (a partition
    /// stays with its current holder whenever the balance allows).
    pub fn rebalance(&mut self, topics: &Topics) {
        self.generation += 1;
        let wanted: BTreeSet<&String> = self
            .members
            .values()
            .flat_map(|m| m.topics.iter())
            .collect();
        let partitions: Vec<TopicPartition> = wanted
            .iter()
            .filter_map(|t| topics.get(t).map(|log| (t, log.partition_count())))
            .flat_map(|(t, n)| (0..n).map(move |p| TopicPartition::new(t.as_str(), p)))
            .collect();
        let ids: Vec<u64> = self.members.keys().copied().collect();
        if ids.is_empty() {
            return;
        }
        let (base, extra) = (partitions.len() / ids.len(), partitions.len() % ids.len());
        let mut extra_left = extra;
        let mut new_target: BTreeMap<u64, BTreeSet<TopicPartition>> = BTreeMap::new();
        let mut taken = BTreeSet::new();
        // Keep what each member has, up to its quota.
        for id in &ids {
            let current: Vec<TopicPartition> = self
                .owners
                .iter()
                .filter(|(_, o)| *o == id)
                .map(|(tp, _)| tp.clone())
                .chain(self.members[id].target.iter().cloned())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .filter(|tp| partitions.contains(tp))
                .collect();
            let mut quota = base;
            if current.len() > base && extra_left > 0 {
                quota += 1;
                extra_left -= 1;
            }
            let keep: BTreeSet<TopicPartition> = current
                .into_iter()
                .filter(|tp| !taken.contains(tp))
                .take(quota)
                .collect();
            taken.extend(keep.iter().cloned());
            new_target.insert(*id, keep);
        }
        // Hand out the rest to the members with the fewest.
        for tp in partitions.iter().filter(|tp| !taken.contains(*tp)) {
            let Some(id) = ids
                .iter()
                .filter(|id| {
                    let have = new_target[id].len();
                    have < base || (have == base && extra_left > 0)
                })
                .min_by_key(|id| (new_target[id].len(), **id))
                .copied()
            else {
                continue;
            };
            if new_target[&id].len() == base {
                extra_left -= 1;
            }
            new_target.entry(id).or_default().insert(tp.clone());
        }
        for (id, target) in new_target {
            if let Some(m) = self.members.get_mut(&id) {
                m.target = target;
            }
        }
        self.assert_consistent();
    }

    /// Adds member `id`. A static member replacing its old self (same instance id, still
    /// registered) takes over its assignment quietly; any other join rebalances.
    pub fn join(&mut self, id: u64, mut member: MemberState, topics: &Topics) {
        let previous = member.instance_id.as_ref().and_then(|instance| {
            self.members
                .iter()
                .find(|(_, m)| m.instance_id.as_ref() == Some(instance))
                .map(|(old, _)| *old)
        });
        self.holdings_changes += 1;
        match previous.and_then(|old| self.members.remove(&old).map(|m| (old, m))) {
            Some((old, old_member)) => {
                member.target = old_member.target;
                // The old self may have died holding partitions it was asked to give up:
                // the new one never had them (it has nothing to commit for them), so they
                // are released at once rather than held by a member that does not know
                // it holds them (which would keep them from their new owner for good).
                let target = &member.target;
                self.owners
                    .retain(|tp, owner| *owner != old || target.contains(tp));
                for owner in self.owners.values_mut() {
                    if *owner == old {
                        *owner = id;
                    }
                }
                self.members.insert(id, member);
                self.assert_consistent();
            }
            None => {
                self.members.insert(id, member);
                self.rebalance(topics);
            }
        }
    }

    /// Member `id` is alive at `now`: where the group wants its partitions, or `None` if
    /// it is not a member (any more).
    pub fn heartbeat(&mut self, id: u64, now: Instant) -> Option<&BTreeSet<TopicPartition>> {
        let member = self.members.get_mut(&id)?;
        member.expires_at = now + member.session_timeout;
        Some(&member.target)
    }

    /// Makes member `id` the holder of `partition` if no other member holds it; whether
    /// it holds it now.
    pub fn claim(&mut self, id: u64, partition: &TopicPartition) -> bool {
        let free = self.owners.get(partition).is_none_or(|owner| *owner == id);
        if free && self.owners.insert(partition.clone(), id).is_none() {
            self.holdings_changes += 1;
        }
        free
    }

    pub fn committed(&self, partition: &TopicPartition) -> Option<Offset> {
        self.committed.get(partition)
    }

    /// Every committed offset (what a snapshot of the durable log keeps).
    pub fn committed_offsets(&self) -> impl Iterator<Item = (&TopicPartition, Offset)> {
        self.committed.iter()
    }

    /// Checks that member `id` may commit `offsets`: it is a member and holds every
    /// partition of them. (In debug builds, also that none moves a committed offset
    /// back.)
    pub fn check_commit(
        &self,
        id: Option<u64>,
        offsets: &[(TopicPartition, Offset)],
    ) -> Result<(), LogError> {
        for (tp, offset) in offsets {
            let owns = id.is_some_and(|id| {
                self.members.contains_key(&id) && self.owners.get(tp) == Some(&id)
            });
            if !owns {
                return Err(LogError::NotAssigned(tp.clone()));
            }
            self.committed.check(tp, *offset);
        }
        Ok(())
    }

    /// Commits offsets [`GroupState::check_commit`] accepted.
    pub fn commit(&mut self, offsets: Vec<(TopicPartition, Offset)>) {
        for (tp, offset) in offsets {
            self.committed.advance(tp, offset);
        }
    }

    /// Member `id` gives up `partitions` (those it holds).
    pub fn release(&mut self, id: u64, partitions: &[TopicPartition]) {
        for tp in partitions {
            if self.owners.get(tp) == Some(&id) {
                self.owners.remove(tp);
                self.holdings_changes += 1;
            }
        }
    }

    /// Member `id` leaves: what it holds is free, and the group rebalances.
    pub fn leave(&mut self, id: u64, topics: &Topics) {
        self.remove(id);
        self.rebalance(topics);
    }

    /// Removes every member that joined as `instance_id`; true if any.
    pub fn evict(&mut self, instance_id: &str) -> bool {
        let gone: Vec<u64> = self
            .members
            .iter()
            .filter(|(_, m)| m.instance_id.as_deref() == Some(instance_id))
            .map(|(id, _)| *id)
            .collect();
        for id in &gone {
            self.remove(*id);
        }
        !gone.is_empty()
    }

    /// The first moment a member not heard from again would be presumed dead (members
    /// expire lazily, when another member looks: this is when to look).
    pub fn next_expiry(&self) -> Option<Instant> {
        self.members
            .values()
            .map(|m| m.expires_at + Duration::from_millis(1))
            .min()
    }

    /// Removes members not heard from within their session timeout; true if any.
    pub fn expire(&mut self, now: Instant) -> bool {
        let dead: Vec<u64> = self
            .members
            .iter()
            .filter(|(_, m)| now > m.expires_at)
            .map(|(id, _)| *id)
            .collect();
        for id in &dead {
            if let Some(m) = self.members.get(id) {
                tracing::info!(client = %m.client_id, "consumer group member timed out; its partitions move");
            }
            self.remove(*id);
        }
        !dead.is_empty()
    }

    fn remove(&mut self, id: u64) {
        self.holdings_changes += 1;
        self.members.remove(&id);
        self.owners.retain(|_, owner| *owner != id);
        self.assert_consistent();
    }

    /// Asserts (in debug builds) what the coordinator keeps: every holder of a partition
    /// is a member, and no partition is in two members' assignments.
    fn assert_consistent(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        for (tp, owner) in &self.owners {
            debug_assert!(
                self.members.contains_key(owner),
                "partition {tp} is held by member {owner}, which is not in the group (generation {})",
                self.generation
            );
        }
        let mut assigned: BTreeMap<&TopicPartition, u64> = BTreeMap::new();
        for (id, member) in &self.members {
            for tp in &member.target {
                let other = assigned.insert(tp, *id);
                debug_assert!(
                    other.is_none(),
                    "partition {tp} is assigned to members {} and {id} (generation {}): an assignment holds a partition once",
                    other.unwrap_or_default(),
                    self.generation
                );
            }
        }
    }
}

#[cfg(all(test, debug_assertions))]
mod tests {
    use super::*;

    fn member(client: &str, target: &[TopicPartition]) -> MemberState {
        let mut m = MemberState::new(
            client.into(),
            None,
            vec!["in".into()],
            Duration::from_secs(10),
            Instant::now(),
        );
        m.target = target.iter().cloned().collect();
        m
    }

    #[test]
    #[should_panic(expected = "partition in[1] is assigned to members 1 and 2")]
    fn a_partition_in_two_assignments_is_caught() {
        let mut group = GroupState::default();
        let shared = TopicPartition::new("in", 1);
        group.members.insert(
            1,
            member("a", &[TopicPartition::new("in", 0), shared.clone()]),
        );
        group.members.insert(2, member("b", &[shared]));
        group.assert_consistent();
    }

    #[test]
    #[should_panic(expected = "partition in[0] is held by member 7, which is not in the group")]
    fn a_partition_held_by_a_member_that_is_gone_is_caught() {
        let mut group = GroupState::default();
        group.members.insert(7, member("a", &[]));
        group.members.insert(8, member("b", &[]));
        group.owners.insert(TopicPartition::new("in", 0), 7);
        // Removing a member without releasing what it holds would strand the partition.
        group.members.remove(&7);
        group.assert_consistent();
    }

    #[test]
    fn a_rebalanced_group_is_consistent() {
        let mut topics = Topics::default();
        topics.create(&crate::TopicSpec::new("in", 5, crate::Cleanup::Delete));
        let mut group = GroupState::default();
        for id in 1..=3 {
            group.join(id, member(&format!("m{id}"), &[]), &topics);
        }
        group.assert_consistent();
        let targets: usize = group.members.values().map(|m| m.target.len()).sum();
        assert_eq!(targets, 5);
    }
}
