//! The task store as the API sees it: a handle that routes each call to the shard that
//! owns the task, and answers once the change is durable.
//!
//! Any node accepts any call. A call for a shard this node serves goes to the shard
//! actor; a call for a shard another node serves is forwarded to that node through the
//! store's [`PeerLink`] (that node's HTTP API in production; marked as forwarded, so it
//! is never forwarded twice). A claim is served from this node's shards first, then by
//! asking the others; statistics and lists combine every node's.

use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use uuid::Uuid;
use wellspring_log::{
    Cleanup, Clock, ConsumerConfig, Log, LogError, Producer, ProducerRecord, TopicSpec,
    partition_for_key,
};
use wellspring_protocol::taskstore::api::{ClaimBatch, ForwardedSubmit, MAX_BATCH};
use wellspring_protocol::taskstore::{
    Claim, DagTaskOrigin, ExtendClaim, GroupSettings, GroupStats, NewTask, Report, TaskStatus,
    TaskView, valid_group_name,
};

use super::directory::{Announcer, Directory};
use super::groups::{GroupTable, GroupsReader};
use super::link::{PeerAnswer, PeerCall, PeerLink};
use super::shard::{
    Answer, LocalShards, QueueCall, QueueCounters, QueueRequest, QueueShardFactory,
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
    /// The longest the shards' stage waits when nothing happens: calls wake it, and so
    /// does the next lease to expire or task to halt (a safety net, not a cadence).
    pub max_wait: Duration,
    /// Finished tasks stay readable this long.
    pub retention: Duration,
    pub shard_restart: RestartPolicy,
    /// Where other nodes reach this node's API (to forward calls here). `None`: this
    /// node does not announce itself (it then serves only the calls for its own shards).
    pub advertise_url: Option<String>,
}

impl Default for TaskStoreConfig {
    fn default() -> Self {
        Self {
            partitions: 8,
            prefix: "wellspring.".into(),
            node_id: "wellspring-0".into(),
            session_timeout: Duration::from_secs(10),
            max_wait: Duration::from_secs(2),
            retention: Duration::from_secs(7 * 24 * 3600),
            shard_restart: RestartPolicy::default(),
            advertise_url: None,
        }
    }
}

/// Whether a call may reach other nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Anywhere in the cluster (a call from a client).
    Cluster,
    /// This node only (a call another node forwarded).
    Local,
}

struct Inner {
    config: TaskStoreConfig,
    log: Arc<dyn Log>,
    clock: Arc<dyn Clock>,
    groups: GroupTable,
    shards: LocalShards,
    directory: Directory,
    producer: Box<dyn Producer>,
    rng: SharedRng,
    counters: QueueCounters,
    metrics: Metrics,
    /// The last queue sequence number handed out.
    last_seq: AtomicU64,
    /// How calls for other nodes' shards reach them.
    peers: Arc<dyn PeerLink>,
}

/// A handle to the task store; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct TaskStore {
    inner: Arc<Inner>,
}

/// A task store that does not keep it alive: how the in-process peer registry holds it.
#[derive(Clone)]
pub(crate) struct WeakTaskStore(Weak<Inner>);

impl WeakTaskStore {
    pub(crate) fn upgrade(&self) -> Option<TaskStore> {
        self.0.upgrade().map(|inner| TaskStore { inner })
    }
}

/// Where a call goes.
enum Route {
    Here(Recipient<QueueCall>),
    /// Another node's API.
    There(String),
}

impl TaskStore {
    /// A node's task store reaching the other nodes through `peers`: their HTTP API in
    /// production, or their stores for a simulation running several nodes in one
    /// process.
    pub fn with_peers(
        config: TaskStoreConfig,
        log: Arc<dyn Log>,
        clock: Arc<dyn Clock>,
        rng: SharedRng,
        metrics: Metrics,
        peers: Arc<dyn PeerLink>,
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
                directory: Directory::default(),
                producer,
                rng,
                counters,
                metrics,
                last_seq: AtomicU64::new(0),
                peers,
            }),
        })
    }

    pub(crate) fn downgrade(&self) -> WeakTaskStore {
        WeakTaskStore(Arc::downgrade(&self.inner))
    }

    pub fn tasks_topic(&self) -> String {
        format!("{}tasks", self.inner.config.prefix)
    }

    pub fn groups_topic(&self) -> String {
        format!("{}task-groups", self.inner.config.prefix)
    }

    fn members_topic(&self) -> String {
        format!("{}task-store.members", self.inner.config.prefix)
    }

    fn dead_letter_topic(&self) -> String {
        format!("{}task-store.dead-letters", self.inner.config.prefix)
    }

    pub fn config(&self) -> &TaskStoreConfig {
        &self.inner.config
    }

    /// The partitions this node serves now.
    pub fn local_partitions(&self) -> Vec<u32> {
        self.inner
            .shards
            .all()
            .into_iter()
            .map(|(p, _)| p)
            .collect()
    }

    /// Every node's announced shards (this one's included).
    pub fn directory(&self) -> Vec<super::directory::Announcement> {
        self.inner.directory.live(self.now_ms())
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
        log.ensure_topic(&TopicSpec::new(self.members_topic(), 1, Cleanup::Compact))
            .await?;
        log.ensure_topic(&TopicSpec::new(
            self.dead_letter_topic(),
            1,
            Cleanup::Delete,
        ))
        .await
    }

    /// The actors of this node's part of the task store: the groups reader, the stage
    /// whose shards are the task topic's partitions this node owns, and the announcer.
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
                max_wait: config.max_wait,
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
            owned: inner.metrics.owned_shards("task-store", "all"),
        };
        let mut children = vec![
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
        ];
        if let Some(url) = config.advertise_url.clone() {
            let (node, topic, log, clock, shards, directory) = (
                config.node_id.clone(),
                self.members_topic(),
                inner.log.clone(),
                inner.clock.clone(),
                inner.shards.clone(),
                inner.directory.clone(),
            );
            children.push(ChildSpec::new("directory", move |link| {
                Ok(Announcer::new(
                    node.clone(),
                    url.clone(),
                    topic.clone(),
                    log.clone(),
                    clock.clone(),
                    shards.clone(),
                    directory.clone(),
                    link,
                )
                .start()
                .recipient())
            }));
        }
        children
    }

    fn partition_of(&self, id: &Uuid) -> u32 {
        partition_for_key(id.to_string().as_bytes(), self.inner.config.partitions)
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

    /// Where the shard of `partition` is served.
    fn route(&self, partition: u32, scope: Scope) -> Result<Route, TaskError> {
        if let Some(shard) = self.inner.shards.get(partition) {
            return Ok(Route::Here(shard));
        }
        if scope == Scope::Cluster
            && let Some(owner) =
                self.inner
                    .directory
                    .owner(partition, &self.inner.config.node_id, self.now_ms())
        {
            return Ok(Route::There(owner.url));
        }
        Err(TaskError::Unavailable(format!(
            "shard {partition} of the task store is not served by this node right now (starting, or moving between nodes); retry"
        )))
    }

    /// Asks a shard of this node; answered once what the call changed is durable.
    async fn ask(
        &self,
        shard: &Recipient<QueueCall>,
        request: QueueRequest,
    ) -> Result<Answer, TaskError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        shard.do_send(QueueCall { request, reply });
        answer.await.map_err(|_| {
            TaskError::Unavailable(
                "a task shard stopped or restarted before it answered; retry".into(),
            )
        })?
    }

    /// Forwards a call to the node at `base`.
    async fn call_peer(&self, base: &str, call: PeerCall) -> Result<PeerAnswer, TaskError> {
        self.inner.peers.call(base, call).await
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

    /// The id a new task gets: from its idempotency key (so the same key always lands in
    /// the same shard), else random.
    pub fn task_id(&self, task: &NewTask) -> Uuid {
        match &task.idempotency_key {
            Some(key) => Uuid::new_v5(
                &TASK_ID_NAMESPACE,
                format!("{}\0{key}", task.group).as_bytes(),
            ),
            None => self.inner.rng.uuid_v4(),
        }
    }

    /// Submits a task. `Ok((task, created))`: with an idempotency key already used, the
    /// existing task and `false`.
    pub async fn submit(
        &self,
        task: NewTask,
        dag: Option<DagTaskOrigin>,
    ) -> Result<(TaskView, bool), TaskError> {
        let id = self.task_id(&task);
        self.submit_with_id(id, task, dag, Scope::Cluster).await
    }

    pub async fn submit_with_id(
        &self,
        id: Uuid,
        task: NewTask,
        dag: Option<DagTaskOrigin>,
        scope: Scope,
    ) -> Result<(TaskView, bool), TaskError> {
        self.group(&task.group)?;
        match self.route(self.partition_of(&id), scope)? {
            Route::Here(shard) => {
                let request = QueueRequest::Submit {
                    id,
                    task,
                    dag: dag.map(Box::new),
                    seq: self.next_seq(),
                };
                match self.ask(&shard, request).await? {
                    Answer::Task { task, changed } => Ok((task, changed)),
                    other => Err(unexpected(other)),
                }
            }
            Route::There(base) => {
                let call = PeerCall::Submit(Box::new(ForwardedSubmit { id, task, dag }));
                match self.call_peer(&base, call).await? {
                    PeerAnswer::Submitted(answer) => Ok((answer.task, answer.created)),
                    other => Err(unexpected_peer(&base, &other)),
                }
            }
        }
    }

    /// Leases the next task of the first listed group that has one: from this node's
    /// shards first (oldest of all first), then from the other nodes'. `Ok(None)`: nothing
    /// is available.
    pub async fn claim(&self, claim: Claim, scope: Scope) -> Result<Option<TaskView>, TaskError> {
        Ok(self.claim_many(claim, 1, scope).await?.pop())
    }

    /// Leases up to `limit` tasks as [`TaskStore::claim`] leases one: the shards in the
    /// order of their oldest claimable task, each giving what it has in queue order, then
    /// the other nodes. Empty: nothing is available.
    pub async fn claim_many(
        &self,
        claim: Claim,
        limit: usize,
        scope: Scope,
    ) -> Result<Vec<TaskView>, TaskError> {
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
        if limit == 0 || limit > MAX_BATCH {
            return Err(TaskError::Invalid(format!(
                "limit must be 1 to {MAX_BATCH}, not {limit}"
            )));
        }
        let shards = self.inner.shards.served();
        let now = self.now_ms();
        let mut heads: Vec<_> = shards
            .iter()
            .filter_map(|served| Some((served.heads.head(&claim.groups, now)?, &served.shard)))
            .collect();
        heads.sort_by_key(|(head, _)| *head);
        let mut leased = Vec::new();
        for (_, shard) in heads {
            let request = QueueRequest::Claim {
                groups: claim.groups.clone(),
                client_id: claim.client_id.clone(),
                duration_ms: claim.duration.0,
                limit: limit - leased.len(),
            };
            match self.ask(shard, request).await {
                Ok(Answer::Tasks(tasks)) => leased.extend(tasks),
                Ok(other) => return Err(unexpected(other)),
                // A shard that moved away has nothing for us; the others may.
                Err(TaskError::Unavailable(reason)) => {
                    tracing::debug!(%reason, "claim skipped a shard")
                }
                Err(e) if leased.is_empty() => return Err(e),
                // What is leased is answered: the client holds those leases.
                Err(e) => tracing::debug!("claim stopped at a shard: {e}"),
            }
            if leased.len() == limit {
                return Ok(leased);
            }
        }
        if scope == Scope::Cluster {
            for peer in self
                .inner
                .directory
                .others(&self.inner.config.node_id, self.now_ms())
            {
                let wanted = limit - leased.len();
                // One task goes through the reference call, which every node serves.
                let batch = wanted > 1;
                let call = if batch {
                    PeerCall::ClaimBatch(ClaimBatch::new(claim.clone(), wanted))
                } else {
                    PeerCall::Claim(claim.clone())
                };
                match (batch, self.call_peer(&peer.url, call).await) {
                    (false, Ok(PeerAnswer::Task(task))) => leased.extend(task),
                    (true, Ok(PeerAnswer::Tasks(tasks))) => leased.extend(tasks),
                    (_, Ok(other)) => tracing::debug!(
                        peer = %peer.node,
                        "{} answered a claim with {}, which does not fit it",
                        peer.url,
                        other.kind()
                    ),
                    (_, Err(e)) => {
                        tracing::debug!(peer = %peer.node, "claim could not ask a peer: {e}")
                    }
                }
                if leased.len() >= limit {
                    break;
                }
            }
        }
        if leased.is_empty() && shards.is_empty() && scope == Scope::Local {
            return Err(TaskError::Unavailable(
                "this node serves no task shard yet; retry".into(),
            ));
        }
        Ok(leased)
    }

    /// Submits many tasks: those of this node's shards in one write per shard, the
    /// others forwarded one by one. One result per task, in order.
    pub async fn submit_many(
        &self,
        tasks: Vec<NewTask>,
    ) -> Result<Vec<Result<(TaskView, bool), TaskError>>, TaskError> {
        check_batch(tasks.len())?;
        let calls = tasks
            .into_iter()
            .map(|task| {
                self.group(&task.group)?;
                let id = self.task_id(&task);
                Ok((
                    self.partition_of(&id),
                    QueueRequest::Submit {
                        id,
                        task,
                        dag: None,
                        seq: self.next_seq(),
                    },
                ))
            })
            .collect();
        let answers = self.serve_batch(calls, Scope::Cluster).await;
        Ok(answers
            .into_iter()
            .map(|answer| match answer? {
                Answer::Task { task, changed } => Ok((task, changed)),
                other => Err(unexpected(other)),
            })
            .collect())
    }

    /// Reports many successes and failures (`(report, success)`), as
    /// [`TaskStore::report`] each. One result per report, in order.
    pub async fn report_many(
        &self,
        reports: Vec<(Report, bool)>,
        scope: Scope,
    ) -> Result<Vec<Result<TaskView, TaskError>>, TaskError> {
        check_batch(reports.len())?;
        let calls = reports
            .into_iter()
            .map(|(report, success)| {
                if let Some(mismatch) = report.mismatch(success) {
                    return Err(TaskError::Invalid(mismatch.to_owned()));
                }
                Ok((
                    self.partition_of(&report.id),
                    QueueRequest::Report { report, success },
                ))
            })
            .collect();
        let answers = self.serve_batch(calls, scope).await;
        Ok(answers
            .into_iter()
            .map(|answer| match answer? {
                Answer::Task { task, .. } => Ok(task),
                other => Err(unexpected(other)),
            })
            .collect())
    }

    /// A submission or report of a batch served as its single call, wherever its shard
    /// is: how a batch reaches the shards of other nodes.
    async fn single(&self, request: QueueRequest, scope: Scope) -> Result<Answer, TaskError> {
        match request {
            QueueRequest::Submit { id, task, dag, .. } => {
                let (task, changed) = self
                    .submit_with_id(id, task, dag.map(|d| *d), scope)
                    .await?;
                Ok(Answer::Task { task, changed })
            }
            QueueRequest::Report { report, success } => {
                let task = self.report(report, success, scope).await?;
                Ok(Answer::Task {
                    task,
                    changed: true,
                })
            }
            other => Err(TaskError::Invalid(format!(
                "a batch holds submissions and reports, not {other:?}"
            ))),
        }
    }

    /// Serves calls by shard: those of each shard this node serves as one
    /// [`QueueRequest::Many`] (one write and one wait for durability per shard, all
    /// shards at once), each other one as its single call ([`TaskStore::single`]:
    /// forwarded, or refused as unavailable). A call that could not be made (`Err`) is
    /// answered with its error.
    async fn serve_batch(
        &self,
        calls: Vec<Result<(u32, QueueRequest), TaskError>>,
        scope: Scope,
    ) -> Vec<Result<Answer, TaskError>> {
        let mut answers: Vec<Option<Result<Answer, TaskError>>> = Vec::new();
        // Per shard served here: its address, and the calls with their places.
        let mut here: std::collections::BTreeMap<u32, ShardBatch> = Default::default();
        let mut there = Vec::new();
        for (index, call) in calls.into_iter().enumerate() {
            answers.push(None);
            match call {
                Err(e) => answers[index] = Some(Err(e)),
                Ok((partition, request)) => match self.inner.shards.get(partition) {
                    Some(shard) => {
                        let (_, indexes, requests) = here
                            .entry(partition)
                            .or_insert_with(|| (shard, Vec::new(), Vec::new()));
                        indexes.push(index);
                        requests.push(request);
                    }
                    None => there.push((index, self.single(request, scope))),
                },
            }
        }
        let batches = here
            .into_values()
            .map(|(shard, indexes, requests)| async move {
                let answers = match self.ask(&shard, QueueRequest::Many(requests)).await {
                    Ok(Answer::Many(answers)) => answers,
                    Ok(other) => {
                        let error = unexpected(other);
                        indexes.iter().map(|_| Err(error.clone())).collect()
                    }
                    Err(e) => indexes.iter().map(|_| Err(e.clone())).collect(),
                };
                indexes.into_iter().zip(answers).collect::<Vec<_>>()
            });
        let forwarded = there
            .into_iter()
            .map(|(index, answer)| async move { vec![(index, answer.await)] });
        let (local, remote) = futures::future::join(
            futures::future::join_all(batches),
            futures::future::join_all(forwarded),
        )
        .await;
        for (index, answer) in local.into_iter().chain(remote).flatten() {
            answers[index] = Some(answer);
        }
        answers
            .into_iter()
            .map(|answer| {
                answer.unwrap_or_else(|| {
                    Err(TaskError::Unavailable(
                        "a shard gave no answer; retry".into(),
                    ))
                })
            })
            .collect()
    }

    pub async fn extend(&self, extend: ExtendClaim, scope: Scope) -> Result<TaskView, TaskError> {
        if extend.duration.0 == 0 {
            return Err(TaskError::Invalid(
                "duration must be longer than zero".into(),
            ));
        }
        match self.route(self.partition_of(&extend.id), scope)? {
            Route::Here(shard) => match self.ask(&shard, QueueRequest::Extend(extend)).await? {
                Answer::Task { task, .. } => Ok(task),
                other => Err(unexpected(other)),
            },
            Route::There(base) => {
                let answer = self.call_peer(&base, PeerCall::Extend(extend)).await?;
                peer_task(&base, answer)?.ok_or_else(|| nothing(&base))
            }
        }
    }

    /// Reports a success or failure; a repeated report gets the same answer.
    pub async fn report(
        &self,
        report: Report,
        success: bool,
        scope: Scope,
    ) -> Result<TaskView, TaskError> {
        match self.route(self.partition_of(&report.id), scope)? {
            Route::Here(shard) => match self
                .ask(&shard, QueueRequest::Report { report, success })
                .await?
            {
                Answer::Task { task, .. } => Ok(task),
                other => Err(unexpected(other)),
            },
            Route::There(base) => {
                let answer = self
                    .call_peer(&base, PeerCall::Report { report, success })
                    .await?;
                peer_task(&base, answer)?.ok_or_else(|| nothing(&base))
            }
        }
    }

    pub async fn get(&self, id: Uuid, scope: Scope) -> Result<TaskView, TaskError> {
        match self.route(self.partition_of(&id), scope)? {
            Route::Here(shard) => match self.ask(&shard, QueueRequest::Get(id)).await? {
                Answer::Task { task, .. } => Ok(task),
                other => Err(unexpected(other)),
            },
            Route::There(base) => {
                let answer = self.call_peer(&base, PeerCall::Get(id)).await?;
                peer_task(&base, answer)?.ok_or_else(|| nothing(&base))
            }
        }
    }

    /// A group's tasks, oldest first, from every node.
    pub async fn list(
        &self,
        group: &str,
        status: Option<TaskStatus>,
        limit: usize,
        scope: Scope,
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
        if scope == Scope::Cluster {
            for peer in self
                .inner
                .directory
                .others(&self.inner.config.node_id, self.now_ms())
            {
                let call = PeerCall::List {
                    group: group.to_owned(),
                    status,
                    limit,
                };
                match self.call_peer(&peer.url, call).await {
                    Ok(PeerAnswer::Tasks(found)) => tasks.extend(found),
                    Ok(other) => tracing::warn!(
                        peer = %peer.node,
                        "listing tasks of a peer: {}",
                        unexpected_peer(&peer.url, &other)
                    ),
                    Err(e) => tracing::warn!(peer = %peer.node, "listing tasks of a peer: {e}"),
                }
            }
        }
        tasks.sort_by_key(|t| (t.created_at, t.id));
        tasks.dedup_by_key(|t| t.id);
        tasks.truncate(limit);
        Ok(tasks)
    }

    /// A group's statistics and the workers it wants, over every node.
    pub async fn stats(&self, group: &str, scope: Scope) -> Result<GroupStats, TaskError> {
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
        if scope == Scope::Cluster {
            for peer in self
                .inner
                .directory
                .others(&self.inner.config.node_id, self.now_ms())
            {
                let call = PeerCall::Stats {
                    group: group.to_owned(),
                };
                match self.call_peer(&peer.url, call).await {
                    Ok(PeerAnswer::Stats(part)) => stats.merge(&part),
                    Ok(other) => tracing::warn!(
                        peer = %peer.node,
                        "statistics of a peer: {}",
                        unexpected_peer(&peer.url, &other)
                    ),
                    Err(e) => tracing::warn!(peer = %peer.node, "statistics of a peer: {e}"),
                }
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

/// The calls of a batch for one shard of this node, with their places in the batch.
type ShardBatch = (Recipient<QueueCall>, Vec<usize>, Vec<QueueRequest>);

/// A batch of `items` calls is within [`MAX_BATCH`].
fn check_batch(items: usize) -> Result<(), TaskError> {
    if items > MAX_BATCH {
        return Err(TaskError::Invalid(format!(
            "a batch takes at most {MAX_BATCH} items, not {items}"
        )));
    }
    Ok(())
}

fn unexpected(answer: Answer) -> TaskError {
    TaskError::Unavailable(format!("unexpected answer from a task shard: {answer:?}"))
}

fn nothing(base: &str) -> TaskError {
    TaskError::Unavailable(format!("{base} answered nothing"))
}

/// An answer that does not fit the call forwarded: the peer link is broken; retry.
fn unexpected_peer(base: &str, answer: &PeerAnswer) -> TaskError {
    TaskError::Unavailable(format!(
        "unexpected answer from {base}: {}; retry",
        answer.kind()
    ))
}

/// The task a peer answered (`None`: nothing to claim there).
fn peer_task(base: &str, answer: PeerAnswer) -> Result<Option<TaskView>, TaskError> {
    match answer {
        PeerAnswer::Task(task) => Ok(task),
        other => Err(unexpected_peer(base, &other)),
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
