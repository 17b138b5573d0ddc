//! Running a DAG: its topics, the routes between its nodes, and its actors.
//!
//! A validated [`Dag`] becomes:
//! - a table reader per `topic-table` node;
//! - a stage per `topic-stream` (source), `stream-operation` (grouping) and
//!   `external-task` node, each the member of its own consumer group;
//! - internal topics: `{prefix}{dag}.{node}.input` for each sharded node (keyed by what
//!   its shards group on) and `{prefix}{dag}.{node}.changelog` for each grouping;
//! - `publish` nodes are no actors: their upstream writes to the published topic.
//!
//! All of it under one DAG supervisor, which restarts a failed stage with back-off.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::Semaphore;
use wellspring_log::{Cleanup, Clock, ConsumerConfig, Log, LogError, TopicSpec};
use wellspring_protocol::spec::{NodeKind, NodeSpec, TaskDecl};
use wellspring_protocol::{Dag, ExperimentLayout, SchemaSet};

use crate::functions::{FunctionParams, FunctionRegistry};
use crate::http::{HttpTaskRunner, HttpTransport, SharedRng, TaskRunner};
use crate::metadata::MetadataTable;
use crate::metrics::{Metrics, names};
use crate::routing::{DeadLetterWriter, Downstream, IncompleteWriter, Route, Router};
use crate::stage::{
    GroupingFactory, RelayFactory, ShardFactory, SourceFactory, StageActor, StageSettings,
    StageSpec, StandbyMetrics, Standbys, TaskFactory,
};
use crate::supervision::{ChildSpec, Health, RestartPolicy, Supervisor};
use crate::table::{TableActor, TableSpec};
use crate::taskstore::runner::QueueTaskRunner;

/// How a node runs its DAGs.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// This node's identity: its static consumer-group membership in every group.
    pub node_id: String,
    /// A node not heard from for this long is presumed dead and its shards move.
    pub session_timeout: Duration,
    /// Records per poll.
    pub max_records: usize,
    /// Longest a stage waits for records before it looks at timers and finished work.
    pub max_wait: Duration,
    pub shard_restart: RestartPolicy,
    pub stage_restart: RestartPolicy,
    pub dag_restart: RestartPolicy,
    /// Mailbox bound of shard actors.
    pub mailbox: usize,
    /// Prefix of internal topic and group names.
    pub prefix: String,
    /// Standby replicas of grouping shards (0: none; otherwise this node keeps a warm
    /// copy of every grouping partition it does not own, see `stage::standby`).
    pub standby_replicas: u32,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            node_id: "wellspring-0".into(),
            session_timeout: Duration::from_secs(10),
            max_records: 2000,
            max_wait: Duration::from_secs(2),
            shard_restart: RestartPolicy::default(),
            stage_restart: RestartPolicy::default(),
            dag_restart: RestartPolicy {
                max_restarts: 3,
                window: Duration::from_secs(300),
                ..RestartPolicy::default()
            },
            mailbox: 16,
            prefix: "wellspring.".into(),
            standby_replicas: 0,
        }
    }
}

/// What a node's actors share.
#[derive(Clone)]
pub struct NodeEnv {
    pub log: Arc<dyn Log>,
    pub clock: Arc<dyn Clock>,
    pub transport: Arc<dyn HttpTransport>,
    pub registry: Arc<FunctionRegistry>,
    pub metrics: Metrics,
    pub health: Health,
    pub rng: SharedRng,
    pub config: RuntimeConfig,
    /// This node's part of the task store, when it runs one (queue tasks need it).
    pub task_store: Option<crate::taskstore::TaskStore>,
}

/// Names of a DAG's internal topics and groups.
pub struct Names<'a> {
    pub prefix: &'a str,
    pub dag: &'a str,
}

impl Names<'_> {
    pub fn input(&self, node: &str) -> String {
        format!("{}{}.{node}.input", self.prefix, self.dag)
    }

    /// Where the task store writes a queue task's outputs.
    pub fn output(&self, node: &str) -> String {
        format!("{}{}.{node}.output", self.prefix, self.dag)
    }

    pub fn changelog(&self, node: &str) -> String {
        format!(
            "{}{}.{node}{}",
            self.prefix,
            self.dag,
            wellspring_log::CHANGELOG_SUFFIX
        )
    }

    pub fn group(&self, node: &str) -> String {
        format!("{}{}.{node}", self.prefix, self.dag)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DagError {
    #[error("DAG {dag}: {message}")]
    Topic { dag: String, message: String },
    #[error("DAG {dag}, node {node}: {message}")]
    Node {
        dag: String,
        node: String,
        message: String,
    },
}

/// Shards of a sharded node: its own setting, else the DAG's (`Dag::shards`, which
/// `upgrade-check` compares too).
pub fn shard_count(dag: &Dag, node: &str) -> u32 {
    dag.shards(node).unwrap_or(dag.settings.partitions)
}

/// The topics a DAG needs: `(spec, strict)`. External topics are created when missing and
/// accepted as they are otherwise; internal ones must have exactly the partitions and
/// cleanup policy their shards assume.
pub fn topics(dag: &Dag, prefix: &str) -> Vec<(TopicSpec, bool)> {
    let names = Names {
        prefix,
        dag: &dag.name,
    };
    let mut out = Vec::new();
    for node in &dag.nodes {
        match &node.kind {
            NodeKind::TopicStream { topic }
            | NodeKind::TopicTable { topic }
            | NodeKind::Publish { topic, .. } => {
                let partitions = dag
                    .topics
                    .get(topic)
                    .and_then(|t| t.partitions)
                    .unwrap_or(dag.settings.partitions);
                let cleanup = if matches!(node.kind, NodeKind::TopicTable { .. }) {
                    Cleanup::Compact
                } else {
                    Cleanup::Delete
                };
                out.push((TopicSpec::new(topic.clone(), partitions, cleanup), false));
            }
            NodeKind::StreamOperation(_) => {
                let n = shard_count(dag, &node.name);
                out.push((
                    TopicSpec::new(names.input(&node.name), n, Cleanup::Delete),
                    true,
                ));
                out.push((
                    TopicSpec::new(names.changelog(&node.name), n, Cleanup::Compact),
                    true,
                ));
            }
            NodeKind::ExternalTask { task, .. } => {
                let n = shard_count(dag, &node.name);
                out.push((
                    TopicSpec::new(names.input(&node.name), n, Cleanup::Delete),
                    true,
                ));
                // A queue task's outputs come back from the task store on a topic of
                // their own.
                if matches!(dag.tasks.get(task), Some(TaskDecl::Queue(_))) {
                    out.push((
                        TopicSpec::new(names.output(&node.name), n, Cleanup::Delete),
                        true,
                    ));
                }
            }
        }
    }
    out.push((
        TopicSpec::new(dag.settings.dead_letter_topic.clone(), 1, Cleanup::Delete),
        false,
    ));
    out.push((
        TopicSpec::new(dag.settings.incomplete_topic.clone(), 1, Cleanup::Delete),
        false,
    ));
    out.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    out.dedup_by(|a, b| a.0.name == b.0.name);
    out
}

/// Creates or checks every topic of the DAG.
pub async fn prepare(dag: &Dag, env: &NodeEnv) -> Result<(), DagError> {
    for (spec, strict) in topics(dag, &env.config.prefix) {
        let result = if strict {
            env.log.ensure_topic(&spec).await
        } else {
            match env.log.partitions(&spec.name).await {
                Ok(_) => Ok(()),
                Err(LogError::UnknownTopic(_)) => env.log.ensure_topic(&spec).await,
                Err(e) => Err(e),
            }
        };
        result.map_err(|e| DagError::Topic {
            dag: dag.name.clone(),
            message: e.to_string(),
        })?;
    }
    Ok(())
}

/// The route into `consumer`, as every node upstream of it writes: a sharded node's input
/// (keyed by its group key, for an operation), a publish node's topic. `None` for the
/// nodes nothing writes to.
pub fn route_into(
    dag: &Dag,
    registry: &FunctionRegistry,
    prefix: &str,
    consumer: &NodeSpec,
) -> Result<Option<Route>, DagError> {
    let names = Names {
        prefix,
        dag: &dag.name,
    };
    Ok(match &consumer.kind {
        NodeKind::StreamOperation(op) => {
            let def = registry.get(&op.function).ok_or_else(|| DagError::Node {
                dag: dag.name.clone(),
                node: consumer.name.clone(),
                message: format!("function {} is not registered", op.function),
            })?;
            Some(Route::Shard {
                topic: Arc::from(names.input(&consumer.name)),
                partitions: shard_count(dag, &consumer.name),
                group_key: Some(def.group_key.clone()),
            })
        }
        NodeKind::ExternalTask { .. } => Some(Route::Shard {
            topic: Arc::from(names.input(&consumer.name)),
            partitions: shard_count(dag, &consumer.name),
            group_key: None,
        }),
        NodeKind::Publish { topic, .. } => Some(Route::Publish {
            topic: Arc::from(topic.as_str()),
        }),
        NodeKind::TopicStream { .. } | NodeKind::TopicTable { .. } => None,
    })
}

/// The routes of every node that has consumers.
fn routers(
    dag: &Dag,
    registry: &FunctionRegistry,
    prefix: &str,
) -> Result<BTreeMap<String, Arc<Router>>, DagError> {
    let mut out = BTreeMap::new();
    for node in &dag.nodes {
        let mut routes = Vec::new();
        for consumer in dag.consumers(&node.name) {
            routes.extend(route_into(dag, registry, prefix, consumer)?);
        }
        out.insert(node.name.clone(), Arc::new(Router::new(&node.name, routes)));
    }
    Ok(out)
}

/// The supervisor child that runs one DAG; restarting it rebuilds everything.
pub fn dag_child(dag: Arc<Dag>, env: NodeEnv) -> ChildSpec {
    let name = dag.name.clone();
    ChildSpec::new(name, move |link| {
        let mut supervisor = Supervisor::new(
            dag.name.clone(),
            env.config.stage_restart.clone(),
            link,
            env.health.clone(),
        );
        for child in dag_children(&dag, &env)? {
            supervisor = supervisor.with_child(child);
        }
        Ok(supervisor.start().recipient())
    })
}

/// The table readers and stages of a DAG.
pub fn dag_children(dag: &Arc<Dag>, env: &NodeEnv) -> Result<Vec<ChildSpec>, String> {
    let prefix = env.config.prefix.as_str();
    let names = Names {
        prefix,
        dag: &dag.name,
    };
    let routers = routers(dag, &env.registry, prefix).map_err(|e| e.to_string())?;
    let schemas = Arc::new(dag.schemas.clone());
    let table = MetadataTable::default();
    let dag_name: Arc<str> = Arc::from(dag.name.as_str());
    let dead_letter_topic: Arc<str> = Arc::from(dag.settings.dead_letter_topic.as_str());
    let metrics = &env.metrics;
    let dead = |node: &str| DeadLetterWriter {
        dag: dag_name.clone(),
        node: Arc::from(node),
        topic: dead_letter_topic.clone(),
        counter: metrics.counter(&dag.name, node, names::DEAD_LETTERS),
    };
    let settings = StageSettings {
        max_records: env.config.max_records,
        max_wait: env.config.max_wait,
        shard_restart: env.config.shard_restart.clone(),
    };
    let mut children = Vec::new();
    for node in &dag.nodes {
        let node_name: Arc<str> = Arc::from(node.name.as_str());
        let counter = |name| metrics.counter(&dag.name, &node.name, name);
        let router = routers
            .get(&node.name)
            .cloned()
            .unwrap_or_else(|| Arc::new(Router::new(&node.name, Vec::new())));
        let downstream = Downstream {
            router,
            dead: dead(&node.name),
            records_out: counter(names::OUT),
        };
        let factory: Rc<dyn ShardFactory> = match &node.kind {
            NodeKind::TopicTable { topic } => {
                let topic_schema = dag
                    .topics
                    .get(topic)
                    .map(|t| t.value_schema.clone())
                    .unwrap_or_default();
                if topic_schema != ExperimentLayout::SCHEMA {
                    return Err(format!(
                        "node {}: this version reads tables of {} only (the experiment metadata); {topic} carries {topic_schema}",
                        node.name,
                        ExperimentLayout::SCHEMA
                    ));
                }
                let spec = Arc::new(TableSpec {
                    name: format!("{}/{}", dag.name, node.name),
                    topic: topic.clone(),
                    schema: topic_schema,
                    schemas: schemas.clone(),
                    log: env.log.clone(),
                    table: table.clone(),
                    dead: dead(&node.name),
                    records_in: counter(names::IN),
                });
                children.push(ChildSpec::new(node.name.clone(), move |link| {
                    Ok(TableActor::new(spec.clone(), link).start().recipient())
                }));
                continue;
            }
            NodeKind::Publish { .. } => continue,
            NodeKind::TopicStream { topic } => Rc::new(SourceFactory {
                dag: dag_name.clone(),
                node: node_name.clone(),
                schema: dag
                    .topics
                    .get(topic)
                    .map(|t| t.value_schema.clone())
                    .unwrap_or_else(|| "json".into()),
                schemas: schemas.clone(),
                downstream,
                records_in: counter(names::IN),
                panics: counter(names::PANICS),
                mailbox: env.config.mailbox,
            }),
            NodeKind::StreamOperation(op) => {
                let function = env
                    .registry
                    .get(&op.function)
                    .cloned()
                    .ok_or_else(|| format!("function {} is not registered", op.function))?;
                let changelog_topic: Arc<str> = Arc::from(names.changelog(&node.name));
                let params = FunctionParams {
                    incomplete_timeout: op.incomplete_timeout,
                };
                let standbys = (env.config.standby_replicas > 0).then(|| {
                    Standbys::follow(
                        env.log.clone(),
                        changelog_topic.clone(),
                        format!("standby-{}-{}-{}", env.config.node_id, dag.name, node.name),
                        function.create.clone(),
                        params,
                        StandbyMetrics {
                            warm: metrics.gauge(&dag.name, &node.name, names::STANDBY_PARTITIONS),
                            from_standby: counter(names::RESTORES_FROM_STANDBY),
                            from_changelog: counter(names::RESTORES_FROM_CHANGELOG),
                        },
                    )
                });
                Rc::new(GroupingFactory {
                    dag: dag_name.clone(),
                    node: node_name.clone(),
                    function,
                    params,
                    changelog_topic,
                    log: env.log.clone(),
                    table: table.clone(),
                    clock: env.clock.clone(),
                    downstream,
                    incomplete: IncompleteWriter {
                        dag: dag_name.clone(),
                        node: node_name.clone(),
                        topic: Arc::from(dag.settings.incomplete_topic.as_str()),
                        counter: counter(names::INCOMPLETE),
                    },
                    records_in: counter(names::IN),
                    duplicates: counter(names::DUPLICATES),
                    panics: counter(names::PANICS),
                    open: metrics.gauge(&dag.name, &node.name, names::OPEN),
                    mailbox: env.config.mailbox,
                    standbys,
                })
            }
            NodeKind::ExternalTask { task, .. } => {
                let runner: Rc<dyn TaskRunner> = match dag.tasks.get(task) {
                    Some(TaskDecl::Http(spec)) => Rc::new(HttpTaskRunner {
                        task_name: task.clone(),
                        dag: Arc::from(dag.name.as_str()),
                        node: Arc::from(node.name.as_str()),
                        spec: spec.clone(),
                        variables: dag.variables.clone(),
                        schemas: SchemaSet::clone(&schemas),
                        transport: env.transport.clone(),
                        limiter: Arc::new(Semaphore::new(spec.max_inflight as usize)),
                        rng: env.rng.clone(),
                        inflight: metrics.gauge(&dag.name, &node.name, names::INFLIGHT),
                        requests: counter(names::HTTP_REQUESTS),
                        retries: counter(names::RETRIES),
                        latency: metrics.histogram(&dag.name, &node.name, names::HTTP_DURATION),
                    }),
                    Some(TaskDecl::Queue(spec)) => {
                        let Some(store) = env.task_store.clone() else {
                            return Err(format!(
                                "node {}: queue task {task} needs a node that runs the task store (wellspring run)",
                                node.name
                            ));
                        };
                        // The task store writes outputs to the task's output topic; a
                        // relay stage routes them on to the node's consumers.
                        let mut relay_consumer = ConsumerConfig::group(
                            format!("{}.output", names.group(&node.name)),
                            format!("{}/{}.output", env.config.node_id, node.name),
                            vec![names.output(&node.name)],
                        );
                        relay_consumer.instance_id = Some(env.config.node_id.clone());
                        relay_consumer.session_timeout = env.config.session_timeout;
                        let relay = StageSpec {
                            name: format!("{}/{}.output", dag.name, node.name),
                            consumer: relay_consumer,
                            settings: settings.clone(),
                            log: env.log.clone(),
                            factory: Rc::new(RelayFactory {
                                name: format!("{}/{}.output", dag.name, node.name),
                                downstream: downstream.clone(),
                                panics: counter(names::PANICS),
                                mailbox: env.config.mailbox,
                            }),
                            dead: dead(&node.name),
                            restarts: counter(names::SHARD_RESTARTS),
                            owned: env
                                .metrics
                                .owned_shards(&dag.name, &format!("{}.output", node.name)),
                        };
                        children.push(ChildSpec::new(
                            format!("{}.output", node.name),
                            move |link| {
                                Ok(StageActor::new(relay.clone(), link).start().recipient())
                            },
                        ));
                        Rc::new(QueueTaskRunner {
                            task_name: task.clone(),
                            spec: spec.clone(),
                            variables: dag.variables.clone(),
                            store,
                            dag: dag.name.clone(),
                            node: node.name.clone(),
                            output_topic: names.output(&node.name),
                            dead_letter_topic: dag.settings.dead_letter_topic.clone(),
                            retries: counter(names::RETRIES),
                            group_ready: std::cell::Cell::new(false),
                        })
                    }
                    None => return Err(format!("node {}: task {task} is not declared", node.name)),
                };
                Rc::new(TaskFactory {
                    dag: dag_name.clone(),
                    node: node_name.clone(),
                    runner,
                    downstream,
                    records_in: counter(names::IN),
                    panics: counter(names::PANICS),
                    pending: metrics.gauge(&dag.name, &node.name, names::PENDING),
                    mailbox: env.config.mailbox,
                })
            }
        };
        let input_topic = match &node.kind {
            NodeKind::TopicStream { topic } => topic.clone(),
            _ => names.input(&node.name),
        };
        let mut consumer = ConsumerConfig::group(
            names.group(&node.name),
            format!("{}/{}", env.config.node_id, node.name),
            vec![input_topic],
        );
        consumer.instance_id = Some(env.config.node_id.clone());
        consumer.session_timeout = env.config.session_timeout;
        let spec = StageSpec {
            name: format!("{}/{}", dag.name, node.name),
            consumer,
            settings: settings.clone(),
            log: env.log.clone(),
            factory,
            dead: dead(&node.name),
            restarts: counter(names::SHARD_RESTARTS),
            owned: env.metrics.owned_shards(&dag.name, &node.name),
        };
        children.push(ChildSpec::new(node.name.clone(), move |link| {
            Ok(StageActor::new(spec.clone(), link).start().recipient())
        }));
    }
    Ok(children)
}
