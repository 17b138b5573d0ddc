//! The task store as the API sees it: a handle that routes each call to the shard that
//! owns the task, and answers once the change is durable.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use uuid::Uuid;
use wellspring_log::{
    Cleanup, Clock, ConsumerConfig, Log, LogError, Producer, ProducerRecord, TopicSpec,
    partition_for_key,
};
use wellspring_protocol::taskstore::{
    Claim, DagTaskOrigin, ExtendClaim, GroupSettings, GroupStats, NewTask, Report, TaskStatus,
    TaskView, valid_group_name,
};

use super::groups::{GroupTable, GroupsReader};
use super::shard::{
    Answer, LocalShards, QueueCounters, QueueReply, QueueRequest, QueueShardFactory,
};
use super::table::TaskError;
use crate::http::SharedRng;
use crate::metrics::Metrics;
use crate::routing::DeadLetterWriter;
use crate::stage::{StageActor, StageSettings, StageSpec};
use crate::supervision::{ChildSpec, RestartPolicy};

/// Namespace of task ids derived from idempotency keys.
const TASK_ID_NAMESPACE: Uuid = Uuid::from_u128(0x5745_4c4c_5350_5249_4e47_0000_0000_0002);

/// How a node runs its part of the task store.
#[derive(Debug, Clone)]
pub struct TaskStoreConfig {
    /// Shards of the task topic (fixed when the topic is created).
    pub partitions: u32,
    /// Prefix of the task store's topics and consumer group.
    pub prefix: String,
    pub node_id: String,
    pub session_timeout: Duration,
    /// How often shards look at leases when nothing else happens.
    pub tick: Duration,
    /// Finished tasks stay readable this long.
    pub retention: Duration,
    pub shard_restart: RestartPolicy,
}

impl Default for TaskStoreConfig {
    fn default() -> Self {
        Self {
            partitions: 8,
            prefix: "wellspring.".into(),
            node_id: "wellspring-0".into(),
            session_timeout: Duration::from_secs(10),
            tick: Duration::from_millis(100),
            retention: Duration::from_secs(7 * 24 * 3600),
            shard_restart: RestartPolicy::default(),
        }
    }
}

struct Inner {
    config: TaskStoreConfig,
    log: Arc<dyn Log>,
    clock: Arc<dyn Clock>,
    groups: GroupTable,
    shards: LocalShards,
    producer: Box<dyn Producer>,
    rng: SharedRng,
    counters: QueueCounters,
    metrics: Metrics,
    /// The last queue sequence number handed out.
    last_seq: AtomicU64,
}

/// A handle to the task store; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct TaskStore {
    inner: Arc<Inner>,
}

impl TaskStore {
    pub fn new(
        config: TaskStoreConfig,
        log: Arc<dyn Log>,
        clock: Arc<dyn Clock>,
        rng: SharedRng,
        metrics: Metrics,
    ) -> Result<Self, LogError> {
        let producer = log.producer()?;
        let counter = |name| metrics.counter("task-store", "all", name);
        let counters = QueueCounters {
            submitted: counter("submitted"),
            claimed: counter("claimed"),
            succeeded: counter("succeeded"),
            failed: counter("failed"),
            dead_lettered: counter("dead_lettered"),
            expired: counter("lapsed"),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                log,
                clock,
                groups: GroupTable::default(),
                shards: LocalShards::default(),
                producer,
                rng,
                counters,
                metrics,
                last_seq: AtomicU64::new(0),
            }),
        })
    }

    pub fn tasks_topic(&self) -> String {
        format!("{}tasks", self.inner.config.prefix)
    }

    pub fn groups_topic(&self) -> String {
        format!("{}task-groups", self.inner.config.prefix)
    }

    pub fn config(&self) -> &TaskStoreConfig {
        &self.inner.config
    }

    /// Creates the task store's topics (or checks them).
    pub async fn prepare(&self) -> Result<(), LogError> {
        let log = &self.inner.log;
        log.ensure_topic(&TopicSpec::new(
            self.tasks_topic(),
            self.inner.config.partitions,
            Cleanup::Compact,
        ))
        .await?;
        log.ensure_topic(&TopicSpec::new(self.groups_topic(), 1, Cleanup::Compact))
            .await?;
        log.ensure_topic(&TopicSpec::new(
            self.dead_letter_topic(),
            1,
            Cleanup::Delete,
        ))
        .await
    }

    fn dead_letter_topic(&self) -> String {
        format!("{}task-store.dead-letters", self.inner.config.prefix)
    }

    /// The actors of this node's part of the task store: the groups reader and the stage
    /// whose shards are the task topic's partitions this node owns.
    pub fn children(&self) -> Vec<ChildSpec> {
        let inner = &self.inner;
        let config = &inner.config;
        let reader_log = inner.log.clone();
        let groups = inner.groups.clone();
        let groups_topic = self.groups_topic();
        let mut consumer = ConsumerConfig::group(
            format!("{}task-store", config.prefix),
            format!("{}/task-store", config.node_id),
            vec![self.tasks_topic()],
        );
        consumer.instance_id = Some(config.node_id.clone());
        consumer.session_timeout = config.session_timeout;
        let factory = Rc::new(QueueShardFactory {
            log: inner.log.clone(),
            groups: inner.groups.clone(),
            clock: inner.clock.clone(),
            shards: inner.shards.clone(),
            counters: inner.counters.clone(),
            retention: config.retention,
        });
        let spec = StageSpec {
            name: "task-store".into(),
            consumer,
            settings: StageSettings {
                max_records: 5_000,
                max_wait: config.tick,
                shard_restart: config.shard_restart.clone(),
            },
            log: inner.log.clone(),
            factory,
            dead: DeadLetterWriter {
                dag: Arc::from("task-store"),
                node: Arc::from("shards"),
                topic: Arc::from(self.dead_letter_topic().as_str()),
                counter: inner.metrics.counter(
                    "task-store",
                    "all",
                    crate::metrics::names::DEAD_LETTERS,
                ),
            },
            restarts: inner.metrics.counter(
                "task-store",
                "all",
                crate::metrics::names::SHARD_RESTARTS,
            ),
        };
        vec![
            ChildSpec::new("groups", move |link| {
                Ok(GroupsReader::new(
                    groups_topic.clone(),
                    reader_log.clone(),
                    groups.clone(),
                    link,
                )
                .start()
                .recipient())
            }),
            ChildSpec::new("shards", move |link| {
                Ok(StageActor::new(spec.clone(), link).start().recipient())
            }),
        ]
    }

    /// Queue order of a new task: increasing on this node, and close to submission time
    /// across nodes (milliseconds in the high bits).
    fn next_seq(&self) -> u64 {
        let floor = (self.inner.clock.now_ms().max(0) as u64) << 16;
        let previous = self
            .inner
            .last_seq
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
                Some((last + 1).max(floor))
            })
            .unwrap_or(0);
        (previous + 1).max(floor)
    }

    fn partition_of(&self, id: &Uuid) -> u32 {
        partition_for_key(id.to_string().as_bytes(), self.inner.config.partitions)
    }

    fn shard(&self, partition: u32) -> Result<Recipient<QueueRequest>, TaskError> {
        self.inner.shards.get(partition).ok_or_else(|| {
            TaskError::Unavailable(format!(
                "shard {partition} of the task store is not served by this node right now (starting, or owned by another node); retry"
            ))
        })
    }

    async fn ask(
        &self,
        shard: &Recipient<QueueRequest>,
        request: QueueRequest,
    ) -> Result<Answer, TaskError> {
        let QueueReply { answer, durable } = shard
            .send(request)
            .await
            .map_err(|_| TaskError::Unavailable("a task shard is restarting; retry".into()))??;
        if let Some(durable) = durable {
            match durable.await {
                Ok(Ok(())) => {}
                Ok(Err(reason)) => return Err(TaskError::Unavailable(reason)),
                Err(_) => {
                    return Err(TaskError::Unavailable(
                        "a task shard stopped before the change was written; retry".into(),
                    ));
                }
            }
        }
        Ok(answer)
    }

    fn group(&self, name: &str) -> Result<GroupSettings, TaskError> {
        self.inner
            .groups
            .get(name)
            .ok_or_else(|| TaskError::UnknownGroup(name.to_owned()))
    }

    pub fn groups(&self) -> Vec<GroupSettings> {
        self.inner.groups.all()
    }

    /// Creates a group, or updates its settings. `Ok((settings, created))`.
    pub async fn create_group(
        &self,
        settings: GroupSettings,
    ) -> Result<(GroupSettings, bool), TaskError> {
        let problems = settings.problems();
        if !problems.is_empty() {
            return Err(TaskError::Invalid(problems.join("; ")));
        }
        let existing = self.inner.groups.get(&settings.name);
        if existing.as_ref() == Some(&settings) {
            return Ok((settings, false));
        }
        let json = serde_json::to_vec(&settings).map_err(|e| TaskError::Invalid(e.to_string()))?;
        let record = ProducerRecord::new(
            self.groups_topic(),
            Some(Bytes::from(settings.name.clone())),
            Some(Bytes::from(json)),
        );
        self.inner
            .producer
            .send(vec![record.to_partition(0)])
            .await
            .map_err(|e| TaskError::Unavailable(format!("the log refused the group: {e}")))?;
        self.inner.groups.upsert(settings.clone());
        Ok((settings, existing.is_none()))
    }

    /// Submits a task. `Ok((task, created))`: with an idempotency key already used, the
    /// existing task and `false`.
    pub async fn submit(
        &self,
        task: NewTask,
        dag: Option<DagTaskOrigin>,
    ) -> Result<(TaskView, bool), TaskError> {
        self.group(&task.group)?;
        let id = match &task.idempotency_key {
            // The same key always gives the same id, so it always lands in the same shard.
            Some(key) => Uuid::new_v5(
                &TASK_ID_NAMESPACE,
                format!("{}\0{key}", task.group).as_bytes(),
            ),
            None => self.inner.rng.uuid_v4(),
        };
        let shard = self.shard(self.partition_of(&id))?;
        match self
            .ask(
                &shard,
                QueueRequest::Submit {
                    id,
                    task,
                    dag: dag.map(Box::new),
                    seq: self.next_seq(),
                },
            )
            .await?
        {
            Answer::Task { task, changed } => Ok((task, changed)),
            other => Err(TaskError::Unavailable(format!(
                "unexpected answer from a task shard: {other:?}"
            ))),
        }
    }

    /// Leases the next task of the first listed group that has one, from the shards this
    /// node serves. `Ok(None)`: nothing is available.
    pub async fn claim(&self, claim: Claim) -> Result<Option<TaskView>, TaskError> {
        if claim.groups.is_empty() {
            return Err(TaskError::Invalid("groups lists no group".into()));
        }
        for group in &claim.groups {
            self.group(group)?;
        }
        if claim.duration.0 == 0 {
            return Err(TaskError::Invalid(
                "duration must be longer than zero".into(),
            ));
        }
        let shards = self.inner.shards.all();
        if shards.is_empty() {
            return Err(TaskError::Unavailable(
                "this node serves no task shard yet; retry".into(),
            ));
        }
        // The oldest task of all the shards first: a group's queue is ordered across
        // this node's shards, not only within each.
        let mut heads = Vec::with_capacity(shards.len());
        for (_, shard) in &shards {
            let request = QueueRequest::Head {
                groups: claim.groups.clone(),
            };
            if let Ok(Answer::Head(Some(head))) = self.ask(shard, request).await {
                heads.push((head, shard));
            }
        }
        heads.sort_by_key(|(head, _)| *head);
        for (_, shard) in heads {
            let request = QueueRequest::Claim {
                groups: claim.groups.clone(),
                client_id: claim.client_id.clone(),
                duration_ms: claim.duration.0,
            };
            match self.ask(shard, request).await {
                Ok(Answer::Task { task, .. }) => return Ok(Some(task)),
                Ok(_) => {}
                // A shard that moved away has nothing for us; the others may.
                Err(TaskError::Unavailable(reason)) => {
                    tracing::debug!(%reason, "claim skipped a shard")
                }
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    pub async fn extend(&self, extend: ExtendClaim) -> Result<TaskView, TaskError> {
        if extend.duration.0 == 0 {
            return Err(TaskError::Invalid(
                "duration must be longer than zero".into(),
            ));
        }
        let shard = self.shard(self.partition_of(&extend.id))?;
        match self.ask(&shard, QueueRequest::Extend(extend)).await? {
            Answer::Task { task, .. } => Ok(task),
            other => Err(TaskError::Unavailable(format!(
                "unexpected answer from a task shard: {other:?}"
            ))),
        }
    }

    /// Reports a success or failure; a repeated report gets the same answer.
    pub async fn report(&self, report: Report, success: bool) -> Result<TaskView, TaskError> {
        let shard = self.shard(self.partition_of(&report.id))?;
        match self
            .ask(&shard, QueueRequest::Report { report, success })
            .await?
        {
            Answer::Task { task, .. } => Ok(task),
            other => Err(TaskError::Unavailable(format!(
                "unexpected answer from a task shard: {other:?}"
            ))),
        }
    }

    pub async fn get(&self, id: Uuid) -> Result<TaskView, TaskError> {
        let shard = self.shard(self.partition_of(&id))?;
        match self.ask(&shard, QueueRequest::Get(id)).await? {
            Answer::Task { task, .. } => Ok(task),
            other => Err(TaskError::Unavailable(format!(
                "unexpected answer from a task shard: {other:?}"
            ))),
        }
    }

    /// A group's tasks (from the shards this node serves), oldest first.
    pub async fn list(
        &self,
        group: &str,
        status: Option<TaskStatus>,
        limit: usize,
    ) -> Result<Vec<TaskView>, TaskError> {
        self.group(group)?;
        let mut tasks = Vec::new();
        for (_, shard) in self.inner.shards.all() {
            let request = QueueRequest::List {
                group: group.to_owned(),
                status,
                limit,
            };
            if let Answer::Tasks(found) = self.ask(&shard, request).await? {
                tasks.extend(found);
            }
        }
        tasks.sort_by_key(|t| (t.created_at, t.id));
        tasks.truncate(limit);
        Ok(tasks)
    }

    /// A group's statistics and the workers it wants.
    pub async fn stats(&self, group: &str) -> Result<GroupStats, TaskError> {
        let settings = self.group(group)?;
        let mut stats = GroupStats {
            group: group.to_owned(),
            ..GroupStats::default()
        };
        for (_, shard) in self.inner.shards.all() {
            if let Answer::Stats(part) = self
                .ask(
                    &shard,
                    QueueRequest::Stats {
                        group: group.to_owned(),
                    },
                )
                .await?
            {
                stats.merge(&part);
            }
        }
        stats.desired_workers = settings.autoscaling.desired(stats.available + stats.leased);
        Ok(stats)
    }

    pub fn counters(&self) -> &QueueCounters {
        &self.inner.counters
    }

    pub fn now_ms(&self) -> i64 {
        self.inner.clock.now_ms()
    }
}

/// A group name from a URL path, checked.
pub fn group_name(name: &str) -> Result<&str, TaskError> {
    if valid_group_name(name) {
        Ok(name)
    } else {
        Err(TaskError::Invalid(format!("{name:?} is not a group name")))
    }
}

use std::rc::Rc;
