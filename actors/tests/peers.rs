//! Two nodes' task stores in one process, on one embedded log, linked by
//! `InProcessPeers` instead of HTTP: calls for the other node's shards are forwarded to it
//! and answered as its API would.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use uuid::Uuid;
use wellspring_actors::http::{ReqwestTransport, SharedRng};
use wellspring_actors::metrics::Metrics;
use wellspring_actors::supervision::{Health, RestartPolicy};
use wellspring_actors::taskstore::{
    InProcessPeers, PeerAnswer, PeerCall, PeerLink, Scope, TaskError, TaskStore, TaskStoreConfig,
};
use wellspring_actors::{FunctionRegistry, Node, NodeEnv, RuntimeConfig};
use wellspring_log::{EmbeddedLog, Log, SystemClock, partition_for_key};
use wellspring_protocol::taskstore::{
    Claim, ExtendClaim, GroupSettings, Millis, NewTask, Report, TaskStatus,
};

const PARTITIONS: u32 = 4;
const A_URL: &str = "inproc://node-a";
const B_URL: &str = "inproc://node-b";

/// A link that records where each call went and can be made to answer nonsense; it
/// passes everything else to the in-process registry.
struct Recorder {
    peers: InProcessPeers,
    calls: Mutex<Vec<(String, &'static str)>>,
    nonsense: AtomicBool,
}

#[async_trait]
impl PeerLink for Recorder {
    async fn call(&self, base_url: &str, call: PeerCall) -> Result<PeerAnswer, TaskError> {
        let kind = match &call {
            PeerCall::Submit(_) => "submit",
            PeerCall::Claim(_) => "claim",
            PeerCall::ClaimBatch(_) => "claim-batch",
            PeerCall::Extend(_) => "extend",
            PeerCall::Report { .. } => "report",
            PeerCall::Get(_) => "get",
            PeerCall::List { .. } => "list",
            PeerCall::Stats { .. } => "stats",
        };
        self.calls.lock().push((base_url.to_owned(), kind));
        if self.nonsense.load(Ordering::Relaxed) {
            return Ok(PeerAnswer::Tasks(Vec::new()));
        }
        self.peers.call(base_url, call).await
    }
}

impl Recorder {
    fn calls_to(&self, url: &str) -> Vec<&'static str> {
        let calls = self.calls.lock();
        calls
            .iter()
            .filter(|(to, _)| to == url)
            .map(|(_, kind)| *kind)
            .collect()
    }
}

fn store(log: &EmbeddedLog, node_id: &str, url: &str, link: Arc<dyn PeerLink>) -> TaskStore {
    let config = TaskStoreConfig {
        partitions: PARTITIONS,
        node_id: node_id.into(),
        session_timeout: Duration::from_secs(2),
        max_wait: Duration::from_millis(20),
        shard_restart: RestartPolicy {
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(200),
            ..RestartPolicy::default()
        },
        advertise_url: Some(url.into()),
        ..TaskStoreConfig::default()
    };
    TaskStore::with_peers(
        config,
        Arc::new(log.clone()),
        Arc::new(SystemClock),
        SharedRng::seeded(7),
        Metrics::default(),
        link,
    )
    .unwrap()
}

async fn start_node(log: &EmbeddedLog, store: &TaskStore) -> Node {
    let node_id = store.config().node_id.clone();
    let env = NodeEnv {
        log: Arc::new(log.clone()) as Arc<dyn Log>,
        clock: Arc::new(SystemClock),
        transport: Arc::new(ReqwestTransport::new().unwrap()),
        registry: Arc::new(FunctionRegistry::with_builtins()),
        metrics: Metrics::default(),
        health: Health::default(),
        rng: SharedRng::seeded(1),
        task_store: Some(store.clone()),
        config: RuntimeConfig {
            node_id,
            session_timeout: Duration::from_secs(2),
            ..RuntimeConfig::default()
        },
    };
    Node::start(env, Vec::new()).await.unwrap()
}

/// Polls `check` until it holds, for at most 30 seconds.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Retries a call while the shard it needs is moving (`Unavailable`), for at most 30
/// seconds.
async fn settled<T, F: Future<Output = Result<T, TaskError>>>(
    mut call: impl FnMut() -> F,
) -> Result<T, TaskError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match call().await {
            Err(TaskError::Unavailable(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}

fn task(key: &str) -> NewTask {
    NewTask {
        cmd: vec!["run.py".into()],
        group: "g".into(),
        labels: Default::default(),
        idempotency_key: Some(key.into()),
    }
}

fn partition_of(id: Uuid) -> u32 {
    partition_for_key(id.to_string().as_bytes(), PARTITIONS)
}

/// Both nodes serve shards, together all of them, and each knows where the other's are.
fn split_and_announced(a: &TaskStore, b: &TaskStore) -> bool {
    let (mine, theirs) = (a.local_partitions(), b.local_partitions());
    let mut all: Vec<u32> = mine.iter().chain(&theirs).copied().collect();
    all.sort_unstable();
    let knows = |store: &TaskStore, node: &str, partitions: &[u32]| {
        store.directory().iter().any(|announcement| {
            announcement.node == node
                && announcement
                    .partitions
                    .iter()
                    .copied()
                    .eq(partitions.iter().copied())
        })
    };
    !mine.is_empty()
        && !theirs.is_empty()
        && all == (0..PARTITIONS).collect::<Vec<_>>()
        && knows(a, "node-b", &theirs)
        && knows(b, "node-a", &mine)
}

#[test]
fn calls_for_the_other_nodes_shards_are_served_by_it_in_process() {
    actix_rt::System::new().block_on(async {
        let log = EmbeddedLog::new();
        let peers = InProcessPeers::new();
        let link_a = Arc::new(Recorder {
            peers: peers.clone(),
            calls: Mutex::default(),
            nonsense: AtomicBool::new(false),
        });
        let a = store(&log, "node-a", A_URL, link_a.clone());
        let b = store(&log, "node-b", B_URL, Arc::new(peers.clone()));
        peers.register(A_URL, &a);
        peers.register(B_URL, &b);
        let node_a = start_node(&log, &a).await;
        let node_b = start_node(&log, &b).await;

        a.create_group(GroupSettings::named("g")).await.unwrap();
        eventually("node-b to read the group", || {
            b.groups().iter().any(|g| g.name == "g")
        })
        .await;
        eventually("the shards to be split and announced", || {
            split_and_announced(&a, &b)
        })
        .await;

        // A task whose shard node-b serves.
        let b_shards = b.local_partitions();
        let key = (0..1000)
            .map(|i| format!("key-{i}"))
            .find(|key| b_shards.contains(&partition_of(a.task_id(&task(key)))))
            .unwrap();
        let (submitted, created) = settled(|| a.submit(task(&key), None)).await.unwrap();
        assert!(created);
        let id = submitted.id;
        assert_eq!(b.counters().submitted.get(), 1, "node-b stored it");
        assert_eq!(a.counters().submitted.get(), 0);
        assert_eq!(b.get(id, Scope::Local).await.unwrap().id, id);
        assert!(matches!(
            a.get(id, Scope::Local).await,
            Err(TaskError::Unavailable(_))
        ));

        // Claimed through node-a: its own shards have nothing, node-b's has the task.
        let claim = Claim {
            groups: vec!["g".into()],
            client_id: "worker".into(),
            duration: Millis(60_000),
        };
        let claimed = settled(|| a.claim(claim.clone(), Scope::Cluster))
            .await
            .unwrap()
            .expect("node-b's task");
        assert_eq!((claimed.id, claimed.status), (id, TaskStatus::Leased));
        assert_eq!(
            (b.counters().claimed.get(), a.counters().claimed.get()),
            (1, 0)
        );

        let extended = settled(|| {
            a.extend(
                ExtendClaim {
                    client_id: "worker".into(),
                    duration: Millis(60_000),
                    id,
                    version: claimed.version,
                },
                Scope::Cluster,
            )
        })
        .await
        .unwrap();
        assert_eq!(extended.version, claimed.version + 1);

        let report = Report {
            client_id: "worker".into(),
            id,
            version: extended.version,
            elapsed_time: Some(5),
            output: Some(serde_json::json!("done")),
            error: None,
        };
        let done = settled(|| a.report(report.clone(), true, Scope::Cluster))
            .await
            .unwrap();
        assert_eq!(done.status, TaskStatus::Succeeded);
        assert_eq!(
            (b.counters().succeeded.get(), a.counters().succeeded.get()),
            (1, 0)
        );
        assert_eq!(
            a.get(id, Scope::Cluster).await.unwrap().status,
            TaskStatus::Succeeded
        );
        let listed = a.list("g", None, 10, Scope::Cluster).await.unwrap();
        assert_eq!(listed.iter().map(|t| t.id).collect::<Vec<_>>(), vec![id]);
        assert_eq!(a.stats("g", Scope::Cluster).await.unwrap().succeeded, 1);

        let to_b = link_a.calls_to(B_URL);
        for kind in ["submit", "claim", "extend", "report", "get", "list", "stats"] {
            assert!(to_b.contains(&kind), "no {kind} forwarded to node-b: {to_b:?}");
        }
        assert!(link_a.calls_to(A_URL).is_empty(), "never forwarded to itself");

        // Refusals come back as over HTTP: the status and the other node's message.
        let invalid = a.report(report.clone(), false, Scope::Cluster).await;
        assert_eq!(
            invalid,
            Err(TaskError::Remote {
                status: 400,
                message: "a failure report carries error, not output".into(),
            })
        );
        let stale = Report {
            version: claimed.version,
            ..report.clone()
        };
        let stale = a.report(stale, true, Scope::Cluster).await;
        assert!(
            matches!(&stale, Err(TaskError::Remote { status: 409, .. })),
            "{stale:?}"
        );
        let unknown = (0..1000)
            .map(Uuid::from_u128)
            .find(|id| b_shards.contains(&partition_of(*id)))
            .unwrap();
        let missing = a.get(unknown, Scope::Cluster).await;
        assert_eq!(
            missing,
            Err(TaskError::Remote {
                status: 404,
                message: format!("task {unknown} does not exist"),
            })
        );

        // Batches through node-a: each node's share goes to it, and every task is
        // submitted, claimed and reported once.
        let keys: Vec<String> = (0..24).map(|i| format!("batch-{i}")).collect();
        let on_b = keys
            .iter()
            .filter(|key| b_shards.contains(&partition_of(a.task_id(&task(key)))))
            .count();
        assert!(on_b > 0 && on_b < keys.len(), "the batch spans both nodes");
        let submitted = settled(|| async {
            let results = a.submit_many(keys.iter().map(|k| task(k)).collect()).await?;
            results.into_iter().collect::<Result<Vec<_>, _>>()
        })
        .await
        .unwrap();
        assert!(submitted.iter().all(|(_, created)| *created));
        assert_eq!(b.counters().submitted.get(), 1 + on_b as u64);
        let mut claimed = Vec::new();
        while claimed.len() < keys.len() {
            let more = settled(|| a.claim_many(claim.clone(), 100, Scope::Cluster))
                .await
                .unwrap();
            assert!(!more.is_empty(), "claimed {} of {}", claimed.len(), keys.len());
            claimed.extend(more);
        }
        let mut ids: Vec<Uuid> = claimed.iter().map(|t| t.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), keys.len(), "each task leased once");
        assert!(link_a.calls_to(B_URL).contains(&"claim-batch"));
        let reports = claimed
            .iter()
            .map(|t| {
                let report = Report {
                    client_id: "worker".into(),
                    id: t.id,
                    version: t.version,
                    elapsed_time: None,
                    output: None,
                    error: None,
                };
                (report, true)
            })
            .collect();
        let reported = a.report_many(reports, Scope::Cluster).await.unwrap();
        assert!(
            reported
                .iter()
                .all(|r| matches!(r, Ok(t) if t.status == TaskStatus::Succeeded)),
            "{reported:?}"
        );
        assert_eq!(b.counters().succeeded.get(), 1 + on_b as u64);
        assert_eq!(
            a.counters().succeeded.get(),
            (keys.len() - on_b) as u64,
            "node-a's share in its own shards"
        );

        // An answer that does not fit the call is refused, naming it.
        link_a.nonsense.store(true, Ordering::Relaxed);
        let nonsense = a.get(id, Scope::Cluster).await;
        assert!(
            matches!(&nonsense, Err(TaskError::Unavailable(m)) if m.contains("Tasks") && m.contains(B_URL)),
            "{nonsense:?}"
        );
        link_a.nonsense.store(false, Ordering::Relaxed);

        // A node no longer registered is unreachable: retry later.
        peers.unregister(B_URL);
        let gone = a.get(id, Scope::Cluster).await;
        assert!(
            matches!(&gone, Err(TaskError::Unavailable(m)) if m.contains(B_URL) && m.contains("unreachable")),
            "{gone:?}"
        );
        let nowhere = peers.call("inproc://nowhere", PeerCall::Get(id)).await;
        assert!(
            matches!(&nowhere, Err(TaskError::Unavailable(m)) if m.contains("inproc://nowhere")),
            "{nowhere:?}"
        );

        node_a.shutdown().await;
        node_b.shutdown().await;
    });
}

#[test]
fn a_dropped_store_is_unreachable() {
    actix_rt::System::new().block_on(async {
        let log = EmbeddedLog::new();
        let peers = InProcessPeers::new();
        let b = store(&log, "node-b", B_URL, Arc::new(peers.clone()));
        peers.register(B_URL, &b);
        assert!(peers.get(B_URL).is_some());
        // The registry holds stores weakly: it does not keep a stopped node alive.
        drop(b);
        assert!(peers.get(B_URL).is_none());
        let call = PeerCall::Stats { group: "g".into() };
        assert!(matches!(
            peers.call(B_URL, call).await,
            Err(TaskError::Unavailable(_))
        ));
    });
}
