//! The simulated cluster: node incarnations of the real actor code, started, crashed,
//! stopped and restarted by the harness, all on one shared embedded log.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use wellspring_actors::http::SharedRng;
use wellspring_actors::metrics::Metrics;
use wellspring_actors::supervision::{Health, RestartPolicy};
use wellspring_actors::taskstore::{
    InProcessPeers, PeerAnswer, PeerCall, PeerLink, TaskError, TaskStore, TaskStoreConfig,
};
use wellspring_actors::{FunctionRegistry, Node, NodeEnv, RuntimeConfig};
use wellspring_log::time::TokioClock;
use wellspring_log::{EmbeddedLog, Log};
use wellspring_protocol::Dag;

use crate::config::SimConfig;
use crate::history::{EventKind, History};
use crate::node_log::{Life, LogFaults, NodeLog};
use crate::transport::SimTransport;

/// Wall-clock time at the start of every run (2026-01-01T00:00:00Z).
pub const EPOCH_MS: i64 = 1_767_225_600_000;
/// Session timeout of every group member: how long a dead node keeps its shards.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a forwarded task-store call waits for a node that does not answer.
const PEER_TIMEOUT: Duration = Duration::from_secs(30);
/// Task-store shards.
pub const TASK_PARTITIONS: u32 = 4;

/// One life of a node: from its start to its stop or crash.
pub struct Incarnation {
    pub id: String,
    pub number: u32,
    life: Arc<Life>,
    node: Option<Node>,
    pub store: TaskStore,
    pub transport: Arc<SimTransport>,
    pub url: String,
}

impl Incarnation {
    /// Components of this node that failed for good (a spent restart budget).
    pub fn failed_components(&self) -> Vec<(String, String)> {
        self.node
            .as_ref()
            .map(|n| n.health().failed())
            .unwrap_or_default()
    }
}

/// Task stores of the nodes that are up, for workers to call.
#[derive(Clone, Default)]
pub struct LiveStores(Arc<Mutex<BTreeMap<String, TaskStore>>>);

impl LiveStores {
    pub fn pick(&self, rng: &mut StdRng) -> Option<TaskStore> {
        let stores = self.0.lock();
        if stores.is_empty() {
            return None;
        }
        let i = rng.random_range(0..stores.len());
        stores.values().nth(i).cloned()
    }
}

/// A task store's way to other nodes: in process, as dead as the node it calls.
struct SimPeers {
    peers: InProcessPeers,
    /// The caller: a dead node's calls never come back.
    life: Arc<Life>,
}

#[async_trait]
impl PeerLink for SimPeers {
    async fn call(&self, base_url: &str, call: PeerCall) -> Result<PeerAnswer, TaskError> {
        self.life.check().await;
        let answer = tokio::time::timeout(PEER_TIMEOUT, self.peers.call(base_url, call)).await;
        self.life.check().await;
        answer.unwrap_or_else(|_| {
            Err(TaskError::Unavailable(format!(
                "{base_url} did not answer within {PEER_TIMEOUT:?}; retry"
            )))
        })
    }
}

pub struct Cluster {
    pub log: EmbeddedLog,
    dag: Dag,
    config: SimConfig,
    history: History,
    peers: InProcessPeers,
    pub live: LiveStores,
    pub up: BTreeMap<String, Incarnation>,
    /// Nodes that are down and may come back.
    pub down: BTreeSet<String>,
    /// Ended incarnations: kept so their frozen actors stay as they were, and for their
    /// in-flight counts.
    pub ended: Vec<Incarnation>,
    next_node: usize,
    incarnations: u32,
    rng: StdRng,
    /// The true time of the run; each node's clock is this plus its skew.
    clock: TokioClock,
}

impl Cluster {
    pub fn new(log: EmbeddedLog, dag: Dag, config: &SimConfig, history: History) -> Self {
        Self {
            log,
            dag,
            config: config.clone(),
            history,
            peers: InProcessPeers::new(),
            live: LiveStores::default(),
            up: BTreeMap::new(),
            down: BTreeSet::new(),
            ended: Vec::new(),
            next_node: 0,
            incarnations: 0,
            rng: StdRng::seed_from_u64(config.seed ^ 0xc105),
            clock: TokioClock::new(EPOCH_MS),
        }
    }

    /// A node id never used before.
    pub fn new_node_id(&mut self) -> String {
        let id = format!("sim-{}", self.next_node);
        self.next_node += 1;
        id
    }

    /// Starts a new incarnation of node `id` (a new node, or one coming back).
    pub async fn start(&mut self, id: &str) -> Result<(), String> {
        self.incarnations += 1;
        let number = self.incarnations;
        let seed = self.rng.random::<u64>();
        let skew_ms = match self.config.faults.clock_skew.as_millis() as i64 {
            0 => 0,
            max => self.rng.random_range(-max..=max),
        };
        let life = Arc::new(Life::default());
        let shared: Arc<dyn Log> = Arc::new(self.log.clone());
        let log: Arc<dyn Log> = Arc::new(NodeLog::new(
            shared,
            &format!("{id}#{number}"),
            life.clone(),
            LogFaults::new(&self.config.faults, self.config.bug, seed),
            self.history.clone(),
        ));
        let clock = Arc::new(self.clock.clone().with_skew(skew_ms));
        let metrics = Metrics::default();
        let rng = SharedRng::seeded(seed);
        let url = format!("http://{id}.sim");
        let quick = RestartPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            ..RestartPolicy::default()
        };
        let store = TaskStore::with_peers(
            TaskStoreConfig {
                partitions: TASK_PARTITIONS,
                node_id: id.to_owned(),
                session_timeout: SESSION_TIMEOUT,
                shard_restart: quick.clone(),
                advertise_url: Some(url.clone()),
                ..TaskStoreConfig::default()
            },
            log.clone(),
            clock.clone(),
            rng.clone(),
            metrics.clone(),
            Arc::new(SimPeers {
                peers: self.peers.clone(),
                life: life.clone(),
            }),
        )
        .map_err(|e| format!("task store of {id}: {e}"))?;
        let transport = Arc::new(SimTransport::new(
            life.clone(),
            &self.config.faults,
            seed ^ 0x5e,
        ));
        let env = NodeEnv {
            log,
            clock,
            transport: transport.clone(),
            registry: Arc::new(FunctionRegistry::with_builtins()),
            metrics,
            health: Health::default(),
            rng,
            config: RuntimeConfig {
                node_id: id.to_owned(),
                session_timeout: SESSION_TIMEOUT,
                shard_restart: quick.clone(),
                stage_restart: quick,
                ..RuntimeConfig::default()
            },
            task_store: Some(store.clone()),
        };
        let node = Node::start(env, vec![self.dag.clone()])
            .await
            .map_err(|e| format!("node {id} did not start: {e}"))?;
        self.peers.register(url.clone(), &store);
        self.live.0.lock().insert(id.to_owned(), store.clone());
        self.down.remove(id);
        self.history.record(
            EventKind::Fault,
            format!("{id}#{number} starts (clock skew {skew_ms} ms)"),
        );
        self.up.insert(
            id.to_owned(),
            Incarnation {
                id: id.to_owned(),
                number,
                life,
                node: Some(node),
                store,
                transport,
                url,
            },
        );
        Ok(())
    }

    /// Kills node `id` at once: nothing it does from now on reaches anyone.
    pub fn crash(&mut self, id: &str, why: &str) {
        if let Some(incarnation) = self.up.remove(id) {
            incarnation.life.kill();
            self.unlist(&incarnation);
            self.history.record(
                EventKind::Fault,
                format!("{id}#{} crashes ({why})", incarnation.number),
            );
            self.down.insert(id.to_owned());
            self.ended.push(incarnation);
        }
    }

    /// Stops node `id` as SIGTERM does (flush, commit, leave), crashing it if that takes
    /// longer than `grace`. True if it stopped cleanly.
    pub async fn stop(&mut self, id: &str, grace: Duration) -> bool {
        let Some(mut incarnation) = self.up.remove(id) else {
            return false;
        };
        let number = incarnation.number;
        self.history
            .record(EventKind::Fault, format!("{id}#{number} gets SIGTERM"));
        // It stops taking calls first, as the API does.
        self.unlist(&incarnation);
        let clean = match incarnation.node.take() {
            Some(node) => tokio::time::timeout(grace, node.shutdown()).await.is_ok(),
            None => true,
        };
        incarnation.life.kill();
        self.history.record(
            EventKind::Fault,
            if clean {
                format!("{id}#{number} stopped cleanly")
            } else {
                format!("{id}#{number} is killed: not stopped after {grace:?}")
            },
        );
        self.down.insert(id.to_owned());
        self.ended.push(incarnation);
        clean
    }

    fn unlist(&self, incarnation: &Incarnation) {
        self.peers.unregister(&incarnation.url);
        self.live.0.lock().remove(&incarnation.id);
    }

    pub fn up_ids(&self) -> Vec<String> {
        self.up.keys().cloned().collect()
    }

    /// Every incarnation, ended ones first.
    pub fn incarnations(&self) -> impl Iterator<Item = &Incarnation> {
        self.ended.iter().chain(self.up.values())
    }

    pub fn dag(&self) -> &Dag {
        &self.dag
    }
}
