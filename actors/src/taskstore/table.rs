//! The tasks of one shard and the rules of their leases.
//!
//! A task is `available` (claimable, or waiting out a back-off), `leased` to one client,
//! `succeeded` or `dead-lettered`. Every change bumps its version; clients name the
//! version they hold, so a report from a client whose lease expired (and whose task was
//! claimed again) is refused instead of clobbering the new holder. A lease that is not
//! extended expires; a task running longer than its group's maximum run time is halted.
//! Both count as a failed attempt: the task is retried after a back-off, or dead-lettered
//! with the last error once its group's attempts are spent.
//!
//! Plain data, no I/O: every operation takes the time and returns the task states that
//! changed, which the caller makes durable before it answers.

use std::collections::{BTreeMap, BTreeSet};

use rustc_hash::FxHashMap;
use uuid::Uuid;
use wellspring_protocol::Value;
use wellspring_protocol::taskstore::{
    DagTaskOrigin, GroupSettings, GroupStats, Lease, NewTask, Report, TaskState, TaskStatus,
    TaskView,
};

/// Why an operation was refused: maps to an HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    #[error("group {0:?} does not exist; create it with POST /groups")]
    UnknownGroup(String),
    #[error("task {0} does not exist")]
    NotFound(Uuid),
    /// A stale version, another client's lease, a task no longer leased.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    /// The shard cannot serve right now (moved to another node, shutting down).
    #[error("{0}")]
    Unavailable(String),
    /// Another node answered a forwarded call with this status.
    #[error("{message}")]
    Remote { status: u16, message: String },
}

impl TaskError {
    /// The HTTP status the API answers with (in-process peers give the same as over HTTP).
    pub fn http_status(&self) -> u16 {
        match self {
            TaskError::UnknownGroup(_) | TaskError::NotFound(_) => 404,
            TaskError::Conflict(_) => 409,
            TaskError::Invalid(_) => 400,
            TaskError::Unavailable(_) => 503,
            TaskError::Remote { status, .. } => *status,
        }
    }
}

/// A change to make durable: a task's new state, or its removal.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Put(Box<TaskState>),
    Delete(Uuid),
}

/// How long finished tasks stay readable before they are forgotten.
pub const DEFAULT_TERMINAL_RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;

/// The tasks of one shard, every group.
#[derive(Debug, Default)]
pub struct TaskTable {
    tasks: FxHashMap<Uuid, TaskState>,
    /// Per group, claimable tasks in queue order: `(not before, seq, id)`.
    queues: BTreeMap<String, BTreeSet<(i64, u64, Uuid)>>,
    /// Leased tasks by lease expiry.
    leases: BTreeSet<(i64, Uuid)>,
    /// Leased tasks by claim time: which may have run past their group's max run time.
    running: BTreeSet<(i64, Uuid)>,
    /// Finished tasks by their last change: which are past the retention. With these
    /// indexes a tick costs what is due, not every task the shard keeps (a tick per
    /// commit used to scan them all: 39% of a node's time under load).
    finished: BTreeSet<(i64, Uuid)>,
    /// `(group, idempotency key)` → task.
    by_key: FxHashMap<(String, String), Uuid>,
}

impl TaskTable {
    pub fn get(&self, id: &Uuid) -> Option<&TaskState> {
        self.tasks.get(id)
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    fn index(&mut self, task: &TaskState) {
        match task.status {
            TaskStatus::Available => {
                self.queues.entry(task.group.clone()).or_default().insert((
                    task.not_before_ms,
                    task.seq,
                    task.id,
                ));
            }
            TaskStatus::Leased => {
                if let Some(lease) = &task.lease {
                    self.leases.insert((lease.expires_ms, task.id));
                    self.running.insert((lease.claimed_ms, task.id));
                }
            }
            TaskStatus::Succeeded | TaskStatus::DeadLettered => {
                self.finished.insert((task.updated_ms, task.id));
            }
        }
        if let Some(key) = &task.idempotency_key {
            self.by_key
                .insert((task.group.clone(), key.clone()), task.id);
        }
    }

    fn unindex(&mut self, task: &TaskState) {
        if let Some(queue) = self.queues.get_mut(&task.group) {
            queue.remove(&(task.not_before_ms, task.seq, task.id));
        }
        if let Some(lease) = &task.lease {
            self.leases.remove(&(lease.expires_ms, task.id));
            self.running.remove(&(lease.claimed_ms, task.id));
        }
        if task.status.is_terminal() {
            self.finished.remove(&(task.updated_ms, task.id));
        }
    }

    /// Replaces a task's state (keeping the indexes right) and returns it for the log.
    fn put(&mut self, task: TaskState) -> TaskState {
        if let Some(old) = self.tasks.remove(&task.id) {
            self.unindex(&old);
        }
        self.index(&task);
        self.tasks.insert(task.id, task.clone());
        task
    }

    /// Restores one state read from the log; the highest version wins.
    pub fn apply(&mut self, state: TaskState) {
        if self
            .tasks
            .get(&state.id)
            .is_some_and(|t| t.version >= state.version)
        {
            return;
        }
        self.put(state);
    }

    /// Forgets a task (a tombstone read from the log).
    pub fn remove(&mut self, id: &Uuid) {
        if let Some(task) = self.tasks.remove(id) {
            self.unindex(&task);
            if let Some(key) = &task.idempotency_key {
                self.by_key.remove(&(task.group.clone(), key.clone()));
            }
        }
    }

    /// Adds a task, or finds the one already submitted under the same idempotency key.
    /// Returns the task and whether it is new.
    pub fn submit(
        &mut self,
        id: Uuid,
        new: NewTask,
        dag: Option<DagTaskOrigin>,
        seq: u64,
        now_ms: i64,
    ) -> Result<(TaskState, bool), TaskError> {
        if new.cmd.is_empty() {
            return Err(TaskError::Invalid(
                "cmd must list at least the program to run".into(),
            ));
        }
        if let Some(key) = &new.idempotency_key
            && let Some(existing) = self
                .by_key
                .get(&(new.group.clone(), key.clone()))
                .and_then(|id| self.tasks.get(id))
        {
            return Ok((existing.clone(), false));
        }
        if let Some(existing) = self.tasks.get(&id) {
            return Ok((existing.clone(), false));
        }
        let task = TaskState {
            id,
            group: new.group,
            cmd: new.cmd,
            labels: new.labels,
            idempotency_key: new.idempotency_key,
            version: 0,
            status: TaskStatus::Available,
            attempts: 0,
            seq,
            created_ms: now_ms,
            updated_ms: now_ms,
            not_before_ms: now_ms,
            lease: None,
            last_error: None,
            output: None,
            elapsed_time: None,
            reported_by: None,
            dag,
        };
        Ok((self.put(task), true))
    }

    /// Where the first claimable task of `groups` stands in the queue: `(not before,
    /// seq)`, comparable across shards, so a claim can take the oldest of all.
    pub fn head(&self, groups: &[String], now_ms: i64) -> Option<(i64, u64)> {
        groups
            .iter()
            .filter_map(|g| self.front(g))
            .filter(|(not_before, _)| *not_before <= now_ms)
            .min()
    }

    /// The first task of `group`'s queue, claimable now or once its back-off is over.
    /// The queue is ordered by `not before` first: if the front is not claimable, none is.
    pub fn front(&self, group: &str) -> Option<(i64, u64)> {
        let &(not_before, seq, _) = self.queues.get(group)?.first()?;
        Some((not_before, seq))
    }

    /// Every group that has had a queue in this shard, with its front.
    pub fn fronts(&self) -> impl Iterator<Item = (&str, Option<(i64, u64)>)> {
        self.queues
            .iter()
            .map(|(group, queue)| (group.as_str(), queue.first().map(|&(nb, seq, _)| (nb, seq))))
    }

    /// Leases the first claimable task of the first of `groups` that has one.
    pub fn claim(
        &mut self,
        groups: &[String],
        client_id: &str,
        duration_ms: u64,
        now_ms: i64,
    ) -> Option<TaskState> {
        for group in groups {
            let Some(queue) = self.queues.get(group) else {
                continue;
            };
            // Queue order is (not before, submission order): a task waiting out a back-off
            // lets those behind it go first.
            let Some(&(_, _, id)) = queue
                .first()
                .filter(|(not_before, _, _)| *not_before <= now_ms)
            else {
                continue;
            };
            let mut task = self.tasks.get(&id)?.clone();
            task.status = TaskStatus::Leased;
            task.attempts += 1;
            task.lease = Some(Lease {
                client_id: client_id.to_owned(),
                expires_ms: now_ms + duration_ms as i64,
                claimed_ms: now_ms,
            });
            task.version += 1;
            task.updated_ms = now_ms;
            return Some(self.put(task));
        }
        None
    }

    /// The task as `client_id` must hold it (leased to it, at `version`).
    fn held(&self, id: &Uuid, client_id: &str, version: u64) -> Result<&TaskState, TaskError> {
        let task = self.tasks.get(id).ok_or(TaskError::NotFound(*id))?;
        match (&task.status, &task.lease) {
            (TaskStatus::Leased, Some(lease)) if lease.client_id != client_id => {
                Err(TaskError::Conflict(format!(
                    "task {id} is leased to another client, not {client_id:?} (its lease may have expired and been claimed again)"
                )))
            }
            (TaskStatus::Leased, Some(_)) if task.version != version => {
                Err(TaskError::Conflict(format!(
                    "version {version} of task {id} is stale: it is at version {}",
                    task.version
                )))
            }
            (TaskStatus::Leased, Some(_)) => Ok(task),
            (status, _) => Err(TaskError::Conflict(format!(
                "task {id} is not leased (it is {status}, at version {}); claim it again",
                task.version
            ))),
        }
    }

    pub fn extend(
        &mut self,
        id: &Uuid,
        client_id: &str,
        version: u64,
        duration_ms: u64,
        now_ms: i64,
    ) -> Result<TaskState, TaskError> {
        let mut task = self.held(id, client_id, version)?.clone();
        if let Some(lease) = &mut task.lease {
            lease.expires_ms = now_ms + duration_ms as i64;
        }
        task.version += 1;
        task.updated_ms = now_ms;
        Ok(self.put(task))
    }

    /// A repeat of the report that ended the task (same client, the version it held).
    fn repeat_of_last_report(
        &self,
        id: &Uuid,
        client_id: &str,
        version: u64,
        success: bool,
    ) -> Option<TaskState> {
        let task = self.tasks.get(id)?;
        let ended_by_this = task.version == version + 1
            && task.reported_by.as_deref() == Some(client_id)
            && (task.status == TaskStatus::Succeeded) == success;
        ended_by_this.then(|| task.clone())
    }

    /// `Ok((task, changed))`: a repeated report answers the same without a change.
    pub fn succeed(
        &mut self,
        report: &Report,
        now_ms: i64,
    ) -> Result<(TaskState, bool), TaskError> {
        let (id, client_id, version) = (&report.id, report.client_id.as_str(), report.version);
        if let Some(task) = self.repeat_of_last_report(id, client_id, version, true) {
            return Ok((task, false));
        }
        let mut task = self.held(id, client_id, version)?.clone();
        task.status = TaskStatus::Succeeded;
        task.output = report.output.as_ref().map(Value::from);
        task.elapsed_time = report.elapsed_time;
        task.last_error = None;
        task.reported_by = Some(client_id.to_owned());
        task.lease = None;
        task.version += 1;
        task.updated_ms = now_ms;
        Ok((self.put(task), true))
    }

    pub fn fail(
        &mut self,
        report: &Report,
        settings: &GroupSettings,
        now_ms: i64,
    ) -> Result<(TaskState, bool), TaskError> {
        let (id, client_id, version) = (&report.id, report.client_id.as_str(), report.version);
        if let Some(task) = self.repeat_of_last_report(id, client_id, version, false) {
            return Ok((task, false));
        }
        let mut task = self.held(id, client_id, version)?.clone();
        task.elapsed_time = report.elapsed_time;
        task.reported_by = Some(client_id.to_owned());
        let error = report
            .error
            .clone()
            .unwrap_or_else(|| "the worker reported a failure".into());
        Ok((
            self.retry_or_dead_letter(task, error, settings, now_ms),
            true,
        ))
    }

    /// A failed attempt: back to the queue after a back-off, or dead-lettered once the
    /// group's attempts are spent.
    fn retry_or_dead_letter(
        &mut self,
        mut task: TaskState,
        error: String,
        settings: &GroupSettings,
        now_ms: i64,
    ) -> TaskState {
        task.lease = None;
        task.version += 1;
        task.updated_ms = now_ms;
        if task.attempts >= settings.retry.max_attempts {
            task.status = TaskStatus::DeadLettered;
            task.last_error = Some(format!(
                "{error} (attempt {} of {})",
                task.attempts, settings.retry.max_attempts
            ));
        } else {
            task.status = TaskStatus::Available;
            task.not_before_ms = now_ms + settings.retry.backoff_ms(task.attempts) as i64;
            task.last_error = Some(error);
        }
        self.put(task)
    }

    /// Expires leases that were not extended, halts tasks past their maximum run time,
    /// and forgets finished tasks past the retention. Returns the changes.
    /// `shortest_run_ms` is the smallest max run time of any group: no lease claimed
    /// more recently than that can be due a halt.
    pub fn tick(
        &mut self,
        settings: &dyn Fn(&str) -> Option<GroupSettings>,
        shortest_run_ms: i64,
        now_ms: i64,
        retention_ms: i64,
    ) -> Vec<Change> {
        let mut changes = Vec::new();
        let expired: Vec<Uuid> = self
            .leases
            .iter()
            .take_while(|(expires, _)| *expires <= now_ms)
            .map(|(_, id)| *id)
            .collect();
        for id in expired {
            let Some(task) = self.tasks.get(&id).cloned() else {
                continue;
            };
            let Some(group) = settings(&task.group) else {
                continue;
            };
            let client = task
                .lease
                .as_ref()
                .map(|l| l.client_id.clone())
                .unwrap_or_default();
            let error = format!(
                "the lease of client {client:?} expired without an extension (worker lost?)"
            );
            changes.push(Change::Put(Box::new(
                self.retry_or_dead_letter(task, error, &group, now_ms),
            )));
        }
        // Hanging: running past the group's maximum run time, extended or not.
        let long_running: Vec<Uuid> = self
            .running
            .iter()
            .take_while(|(claimed, _)| now_ms - *claimed >= shortest_run_ms)
            .map(|(_, id)| *id)
            .collect();
        for id in long_running {
            let Some(task) = self.tasks.get(&id) else {
                continue;
            };
            let (Some(lease), Some(group)) = (&task.lease, settings(&task.group)) else {
                continue;
            };
            if now_ms - lease.claimed_ms >= group.max_run_time.0 as i64 {
                let error = format!(
                    "halted: ran longer than the group's max-run-time of {} ms (client {:?})",
                    group.max_run_time.0, lease.client_id
                );
                let task = task.clone();
                changes.push(Change::Put(Box::new(
                    self.retry_or_dead_letter(task, error, &group, now_ms),
                )));
            }
        }
        let forgotten: Vec<Uuid> = self
            .finished
            .iter()
            .take_while(|(updated, _)| now_ms - *updated > retention_ms)
            .map(|(_, id)| *id)
            .collect();
        for id in forgotten {
            self.remove(&id);
            changes.push(Change::Delete(id));
        }
        changes
    }

    /// When [`TaskTable::tick`] has work next (clock milliseconds), if ever: the first
    /// lease to expire, the first task to run past its group's maximum run time, the
    /// first finished task to outlive the retention; always after `now_ms` (asked right
    /// after a tick at `now_ms`). The same arguments as `tick`.
    pub fn due_ms(
        &self,
        settings: &dyn Fn(&str) -> Option<GroupSettings>,
        shortest_run_ms: i64,
        now_ms: i64,
        retention_ms: i64,
    ) -> Option<i64> {
        // Past expiries `tick` left (a task of a group this node does not know yet) are
        // not due again until something changes: a due time in the past would have the
        // stage cycle without a pause.
        let lease = self
            .leases
            .iter()
            .map(|(expires, _)| *expires)
            .find(|expires| *expires > now_ms);
        let forget = self
            .finished
            .first()
            .map(|(updated, _)| updated.saturating_add(retention_ms).saturating_add(1));
        // Tasks already past the shortest maximum are checked against their own group's
        // (what `tick` does): the first of those, or else the first to reach the shortest.
        let mut halt = None::<i64>;
        for (claimed, id) in &self.running {
            let reaches_shortest = claimed.saturating_add(shortest_run_ms);
            if reaches_shortest > now_ms {
                halt = Some(halt.map_or(reaches_shortest, |h| h.min(reaches_shortest)));
                break;
            }
            let own = self
                .tasks
                .get(id)
                .and_then(|task| settings(&task.group))
                .map(|group| {
                    let max_run = i64::try_from(group.max_run_time.0).unwrap_or(i64::MAX);
                    claimed.saturating_add(max_run)
                });
            if let Some(own) = own.filter(|own| *own > now_ms) {
                halt = Some(halt.map_or(own, |h| h.min(own)));
            }
        }
        [lease, forget, halt].into_iter().flatten().min()
    }

    /// Tasks of a group, in queue order, optionally of one status.
    pub fn list(&self, group: &str, status: Option<TaskStatus>, limit: usize) -> Vec<TaskView> {
        let mut tasks: Vec<&TaskState> = self
            .tasks
            .values()
            .filter(|t| t.group == group && status.is_none_or(|s| t.status == s))
            .collect();
        tasks.sort_by_key(|t| t.seq);
        tasks.into_iter().take(limit).map(TaskState::view).collect()
    }

    pub fn stats(&self, group: &str, now_ms: i64) -> GroupStats {
        let mut stats = GroupStats {
            group: group.to_owned(),
            ..GroupStats::default()
        };
        let mut oldest: Option<i64> = None;
        for task in self.tasks.values().filter(|t| t.group == group) {
            match task.status {
                TaskStatus::Available => {
                    stats.available += 1;
                    if task.last_error.is_some() {
                        stats.failed += 1;
                    }
                    oldest = Some(oldest.map_or(task.created_ms, |o| o.min(task.created_ms)));
                }
                TaskStatus::Leased => stats.leased += 1,
                TaskStatus::Succeeded => stats.succeeded += 1,
                TaskStatus::DeadLettered => stats.dead_lettered += 1,
            }
        }
        stats.oldest_waiting_ms = oldest.map(|created| (now_ms - created).max(0) as u64);
        stats
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
