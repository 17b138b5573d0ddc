//! `wellspring run`: a node that runs DAGs and serves the task-store API until it gets
//! SIGINT or SIGTERM.
//!
//! [`start`] runs a node on its own threads (the actor system on one, the HTTP API on a
//! small runtime of its own) and returns a [`RunningNode`] to stop it with; `run` is that
//! plus waiting for a signal. Tests start nodes the same way, and kill them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use wellspring_actors::http::{ReqwestTransport, SharedRng, TlsSettings};
use wellspring_actors::metrics::Metrics;
use wellspring_actors::running_dags::{Admission, RecordedDags};
use wellspring_actors::supervision::Health;
use wellspring_actors::taskstore::{HttpPeerLink, TaskStore, TaskStoreConfig};
use wellspring_actors::{FunctionRegistry, Node, NodeEnv, RuntimeConfig};
use wellspring_log::{Clock, EmbeddedLog, Log, SystemClock};
use wellspring_protocol::Dag;
use wellspring_protocol::spec::upgrade::ChangeClass;

use crate::api;

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// DAGs to run (validated before anything starts).
    pub dags: Vec<Dag>,
    pub http_addr: SocketAddr,
    pub node_id: String,
    /// Bearer token the API requires, if any.
    pub token: Option<String>,
    pub task_partitions: u32,
    pub body_limit: usize,
    /// A node not heard from for this long loses its shards.
    pub session_timeout: Duration,
    /// Where other nodes reach this node's API (default: the address it listens on).
    pub advertise_url: Option<String>,
    /// Prefix of internal topics and consumer groups.
    pub prefix: String,
    /// The Kubernetes integration, when it runs.
    pub kube: Option<wellspring_kube::KubeSettings>,
    /// TLS for HTTP tasks calling `https://` services.
    pub tls: TlsSettings,
    /// Start DAGs that `upgrade-check` refuses against the ones the cluster runs.
    pub force_upgrade: bool,
    /// How long after a DAG version was first recorded a node starting with it still
    /// backfills the nodes that version added (the roll may be going on); zero: never.
    pub rolling_backfill_window: Duration,
    /// Standby replicas of grouping shards: above 0, this node keeps warm copies of the
    /// grouping partitions it does not own, so a takeover restores in milliseconds.
    pub standby_replicas: u32,
}

impl RunOptions {
    pub fn new(http_addr: SocketAddr) -> Self {
        Self {
            dags: Vec::new(),
            http_addr,
            node_id: "wellspring-0".into(),
            token: None,
            task_partitions: 8,
            body_limit: api::DEFAULT_BODY_LIMIT,
            session_timeout: Duration::from_secs(10),
            advertise_url: None,
            prefix: RuntimeConfig::default().prefix,
            tls: TlsSettings::default(),
            kube: None,
            force_upgrade: false,
            rolling_backfill_window: Duration::from_secs(3600),
            standby_replicas: 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "cannot listen on {addr}: {source} (is another node running there? choose another --http-addr)"
    )]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the node: {0}")]
    Start(String),
    #[error("{0}")]
    UpgradeRefused(String),
    #[error("cannot start the HTTP server: {0}")]
    Server(std::io::Error),
    #[error("cannot start the Kubernetes integration: {0} (or run with --kube off)")]
    Kube(String),
}

/// How a running node is told to stop.
enum Stop {
    /// Flush, commit, leave every group.
    Graceful,
    /// Drop everything mid-flight, as a crash would (tests).
    Kill,
}

/// A node running on its own threads.
pub struct RunningNode {
    /// The API's address (the port is real even when 0 was asked for).
    pub addr: SocketAddr,
    pub metrics: Metrics,
    pub health: Health,
    /// Notified when `POST /admin/drain` asks the node to stop.
    pub drain: Arc<tokio::sync::Notify>,
    stop: Option<std::sync::mpsc::Sender<Stop>>,
    thread: Option<std::thread::JoinHandle<Result<(), RunError>>>,
}

impl RunningNode {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn finish(&mut self, how: Stop) -> Result<(), RunError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(how);
        }
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(RunError::Start("the node's thread panicked".into())),
            None => Ok(()),
        }
    }

    /// Stops cleanly: the API first, then every stage flushes, commits and leaves.
    pub fn stop(mut self) -> Result<(), RunError> {
        self.finish(Stop::Graceful)
    }

    /// Drops the node mid-flight, as if its process were killed.
    pub fn kill(mut self) {
        let _ = self.finish(Stop::Kill);
    }
}

impl Drop for RunningNode {
    fn drop(&mut self) {
        let _ = self.finish(Stop::Graceful);
    }
}

/// Starts a node on `log` (the embedded log unless given) and serves its API.
pub fn start(options: RunOptions, log: Option<Arc<dyn Log>>) -> Result<RunningNode, RunError> {
    // Bind first: a taken port is reported before anything else starts.
    let listener =
        std::net::TcpListener::bind(options.http_addr).map_err(|source| RunError::Listen {
            addr: options.http_addr,
            source,
        })?;
    listener.set_nonblocking(true).map_err(RunError::Server)?;
    let addr = listener.local_addr().map_err(RunError::Server)?;
    let mut options = options;
    options
        .advertise_url
        .get_or_insert_with(|| format!("http://{addr}"));
    let metrics = Metrics::default();
    let health = Health::default();
    let log = log.unwrap_or_else(|| Arc::new(EmbeddedLog::new()));
    let (stop, stopped) = std::sync::mpsc::channel::<Stop>();
    let (started, ready) = std::sync::mpsc::channel::<Result<(), RunError>>();
    let drain = Arc::new(tokio::sync::Notify::new());
    let handles = Handles {
        metrics: metrics.clone(),
        health: health.clone(),
        drain: drain.clone(),
    };
    let thread = std::thread::Builder::new()
        .name(format!("node-{}", options.node_id))
        .spawn(move || {
            let system = actix_rt::System::new();
            system.block_on(serve(options, log, listener, handles, started, stopped))
        })
        .map_err(RunError::Server)?;
    match ready.recv() {
        Ok(Ok(())) => Ok(RunningNode {
            addr,
            metrics,
            health,
            drain,
            stop: Some(stop),
            thread: Some(thread),
        }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => Err(match thread.join() {
            Ok(Err(e)) => e,
            _ => RunError::Start("the node stopped while starting".into()),
        }),
    }
}

/// What the node's threads and its caller share.
struct Handles {
    metrics: Metrics,
    health: Health,
    drain: Arc<tokio::sync::Notify>,
}

async fn serve(
    options: RunOptions,
    log: Arc<dyn Log>,
    listener: std::net::TcpListener,
    handles: Handles,
    started: std::sync::mpsc::Sender<Result<(), RunError>>,
    stopped: std::sync::mpsc::Receiver<Stop>,
) -> Result<(), RunError> {
    let clock = Arc::new(SystemClock);
    // Task ids must differ between nodes and runs; this seed is not a secret.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id()).rotate_left(32);
    let rng = SharedRng::seeded(seed);
    let Handles {
        metrics,
        health,
        drain,
    } = handles;
    let starting = async {
        let peers = HttpPeerLink::new(options.node_id.clone(), options.token.clone())
            .map_err(|e| RunError::Start(format!("cannot build the HTTP client: {e}")))?;
        let store = TaskStore::with_peers(
            TaskStoreConfig {
                partitions: options.task_partitions,
                node_id: options.node_id.clone(),
                session_timeout: options.session_timeout,
                advertise_url: options.advertise_url.clone(),
                prefix: options.prefix.clone(),
                ..TaskStoreConfig::default()
            },
            log.clone(),
            clock.clone(),
            rng.clone(),
            metrics.clone(),
            Arc::new(peers),
        )
        .map_err(|e| RunError::Start(e.to_string()))?;
        let registry = Arc::new(FunctionRegistry::with_builtins());
        // Before anything runs: every DAG against what the cluster runs (the record every
        // node reads), so that a refused upgrade starts nothing.
        let recorded = RecordedDags::read(
            log.as_ref(),
            &options.prefix,
            &format!("{}-running-dags", options.node_id),
        )
        .await
        .map_err(|e| RunError::Start(e.to_string()))?;
        admit(
            &recorded,
            &options.dags,
            registry.as_ref(),
            options.force_upgrade,
        )?;
        let backfills = rolling_backfills(
            &recorded,
            &options.dags,
            registry.as_ref(),
            clock.now_ms(),
            options.rolling_backfill_window,
        );
        let env = NodeEnv {
            log: log.clone(),
            clock: clock.clone(),
            transport: Arc::new(
                ReqwestTransport::with_tls(&options.tls)
                    .map_err(|e| RunError::Start(e.to_string()))?,
            ),
            registry,
            metrics: metrics.clone(),
            health: health.clone(),
            rng: rng.clone(),
            task_store: Some(store.clone()),
            config: RuntimeConfig {
                node_id: options.node_id.clone(),
                session_timeout: options.session_timeout,
                prefix: options.prefix.clone(),
                standby_replicas: options.standby_replicas,
                ..RuntimeConfig::default()
            },
        };
        let node = Node::start(env, options.dags.clone())
            .await
            .map_err(|e| RunError::Start(e.to_string()))?;
        // Recorded once they run: the record says what the cluster runs, not what a node
        // tried to.
        recorded
            .record(
                log.as_ref(),
                &options.prefix,
                &options.dags,
                &options.node_id,
                clock.now_ms(),
            )
            .await
            .map_err(|e| RunError::Start(e.to_string()))?;
        Ok::<_, RunError>((node, store, backfills))
    };
    let (node, store, backfills) = match starting.await {
        Ok(started_node) => started_node,
        Err(e) => {
            let _ = started.send(Err(e));
            return Ok(());
        }
    };
    let kube = match options.kube.clone() {
        Some(settings) => {
            let leader = metrics.gauge("cluster", "lease", "leader");
            let (store, log) = (store.clone(), log.clone());
            let starting = tokio::task::spawn_blocking(move || {
                crate::kube::KubeThread::start(settings, store, log, leader)
            })
            .await;
            match starting {
                Ok(Ok(kube)) => Some(kube),
                Ok(Err(e)) => {
                    let _ = started.send(Err(RunError::Kube(e)));
                    return Ok(());
                }
                Err(e) => {
                    let _ = started.send(Err(RunError::Kube(e.to_string())));
                    return Ok(());
                }
            }
        }
        None => None,
    };

    // The status view reads the DAGs' topics on this actor system; the API reads it.
    let status = crate::status::StatusView::start(
        &options.dags,
        &options.node_id,
        metrics.clone(),
        log.clone(),
    );
    let redriver = crate::redrive::Redriver::start(
        log.clone(),
        options.dags.clone(),
        &options.prefix,
        &options.node_id,
    )
    .map_err(|e| RunError::Start(e.to_string()))?;
    let replayer = crate::replay::Replayer::start(
        log.clone(),
        options.dags.clone(),
        &options.prefix,
        &options.node_id,
    )
    .map_err(|e| RunError::Start(e.to_string()))?;
    backfill_in_background(&replayer, backfills);
    // The API runs on its own threads; it reaches the actors through their addresses.
    let ingest = api::ingest::IngestTopics::new(log.clone(), &options.dags);
    let peers: api::status::PeerList = {
        let store = store.clone();
        let me = options.node_id.clone();
        Arc::new(move || {
            store
                .directory()
                .into_iter()
                .filter(|a| a.node != me)
                .map(|a| (a.node, a.url))
                .collect()
        })
    };
    let router = api::router(
        store,
        health,
        metrics,
        options.token.clone(),
        options.body_limit,
        drain,
        ingest,
    )
    .merge(api::status::router(
        status.clone(),
        Some(api::status::Steering { redriver, replayer }),
        Some(peers),
        options.token.clone(),
        options.body_limit,
    ));
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::Builder::new()
        .name("http-api".into())
        .spawn(move || -> std::io::Result<()> {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                // No Nagle: an answer is one write and the caller waits for it.
                use axum::serve::ListenerExt;
                let listener = tokio::net::TcpListener::from_std(listener)?.tap_io(|tcp| {
                    let _ = tcp.set_nodelay(true);
                });
                axum::serve(listener, router)
                    .with_graceful_shutdown(async {
                        let _ = http_stopped.await;
                    })
                    .await
            })
        })
        .map_err(RunError::Server)?;
    let _ = started.send(Ok(()));

    // Wait for the word to stop, without blocking the actors.
    let how = loop {
        match stopped.try_recv() {
            Ok(how) => break how,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => break Stop::Graceful,
            Err(std::sync::mpsc::TryRecvError::Empty) => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
        }
    };
    let _ = stop_http.send(());
    status.stop();
    // The API stops taking requests now; the stages do not wait for its open
    // connections to finish before they hand their partitions over (a drain's time).
    let joined = tokio::task::spawn_blocking(move || server.join());
    if let Some(kube) = kube {
        // The leader hands over (its duties stop, its Lease is released) before the
        // stages leave their groups.
        let graceful = matches!(how, Stop::Graceful);
        let _ =
            tokio::task::spawn_blocking(move || if graceful { kube.stop() } else { kube.kill() })
                .await;
    }
    if matches!(how, Stop::Graceful) {
        let _ = tokio::time::timeout(Duration::from_secs(60), node.shutdown()).await;
    }
    let joined = joined.await;
    match joined {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => Err(RunError::Server(e)),
        _ => Err(RunError::Start("the HTTP server thread panicked".into())),
    }
}

/// `(DAG, node)` for every node an upgrade to this node's DAGs added on a stream that ran
/// before, while the roll may be going on (within `window` of the version's first record).
fn rolling_backfills(
    recorded: &RecordedDags,
    dags: &[Dag],
    catalog: &dyn wellspring_protocol::spec::FunctionCatalog,
    now_ms: i64,
    window: Duration,
) -> Vec<(String, String)> {
    if window.is_zero() {
        return Vec::new();
    }
    let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
    let mut out = Vec::new();
    for dag in dags {
        match recorded.rolling_backfills(dag, catalog, now_ms, window_ms) {
            Ok(nodes) => out.extend(nodes.into_iter().map(|n| (dag.name.clone(), n))),
            Err(e) => tracing::warn!(dag = %dag.name, "cannot tell which nodes to backfill: {e}"),
        }
    }
    out
}

/// Backfills each `(DAG, node)` over the experiments still open, one after another, on
/// a thread of its own: a node of a new version catches its new nodes up with what
/// their streams emitted before (and, on nodes of the old version, during the roll).
/// Every node of the new version does it as it starts, so the last one to start covers
/// what the last old node emitted; repeats are repeats by id.
fn backfill_in_background(replayer: &crate::replay::Replayer, backfills: Vec<(String, String)>) {
    if backfills.is_empty() {
        return;
    }
    let replayer = replayer.clone();
    let spawned = std::thread::Builder::new()
        .name("rolling-backfill".into())
        .spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                tracing::warn!("cannot start the rolling backfill: no runtime");
                return;
            };
            for (dag, node) in backfills {
                let request = wellspring_protocol::rerun::BackfillRequest {
                    dag: dag.clone(),
                    node: node.clone(),
                    experiment: None,
                    since: None,
                    open: true,
                    dry_run: false,
                };
                let (progress, _ignored) = tokio::sync::mpsc::unbounded_channel();
                let job = crate::replay::Job::Backfill(request);
                match runtime.block_on(replayer.run(job, progress)) {
                    Ok(answer) => tracing::info!(
                        %dag, %node, sent = answer.sent, experiments = answer.experiments.len(),
                        "backfilled a node the upgrade added, over the experiments still open"
                    ),
                    Err(e) => tracing::warn!(
                        %dag, %node,
                        "the node the upgrade added could not be backfilled: {e} (run `wellspring backfill --dag {dag} --node {node} --open`)"
                    ),
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the rolling backfill: {e}");
    }
}

/// Checks each DAG against what the cluster runs: a refused one stops the node (unless
/// `force`, which warns instead); a backfilled node is named in a warning.
fn admit(
    recorded: &RecordedDags,
    dags: &[Dag],
    catalog: &dyn wellspring_protocol::spec::FunctionCatalog,
    force: bool,
) -> Result<(), RunError> {
    for dag in dags {
        let admission = recorded.admit(dag, catalog).map_err(|e| {
            RunError::Start(format!(
                "checking DAG {} against the running one: {e}",
                dag.name
            ))
        })?;
        let Admission::Upgrade(report) = &admission else {
            continue;
        };
        let details = crate::commands::upgrade_check::render(report);
        if let Some(refused) = admission.refused() {
            let running = format!(
                "DAG {} version {} is refused against version {}, which the cluster runs ({} change{} refused)",
                dag.name,
                dag.version,
                refused.old_version,
                refused.refused().count(),
                if refused.refused().count() == 1 {
                    ""
                } else {
                    "s"
                }
            );
            if !force {
                return Err(RunError::UpgradeRefused(format!(
                    "{running}:\n\n{details}\nNothing was started. Change the spec as each \"instead\" says (wellspring upgrade-check OLD NEW checks it), or start with --force-upgrade to run it anyway: what the refused changes break is then lost"
                )));
            }
            tracing::warn!("--force-upgrade: {running}; starting it anyway");
            eprintln!("warning: --force-upgrade: {running}; starting it anyway:\n{details}");
        }
        for change in report.of_class(ChangeClass::Backfilled) {
            tracing::warn!(
                dag = %dag.name,
                node = %change.location,
                "a new node that needs history: {} ({})",
                change.reason,
                change.advice.as_deref().unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// Where a StatefulSet's pod answers: its stable DNS name under the headless service.
pub fn pod_url(pod: &str, service: &str, namespace: &str, port: u16) -> String {
    format!("http://{pod}.{service}.{namespace}.svc:{port}")
}

/// A StatefulSet pod's ordinal: the number its name ends with (`wellspring-2` → 2).
pub fn ordinal(node_id: &str) -> Option<u32> {
    node_id.rsplit_once('-')?.1.parse().ok()
}

/// Runs a node on `log` (the embedded log unless given) until SIGINT, SIGTERM or a drain
/// request (`POST /admin/drain`), then stops it cleanly.
pub fn run(options: RunOptions, log: Option<Arc<dyn Log>>) -> Result<(), RunError> {
    let node_id = options.node_id.clone();
    let names: Vec<String> = options.dags.iter().map(|d| d.name.clone()).collect();
    let token = options.token.is_some();
    let kube = options.kube.as_ref().map(|k| {
        format!(
            "; Kubernetes integration on (namespace {}, leader Lease {}, {} worker Job template(s))",
            k.namespace,
            k.lease.name,
            k.templates.names().len()
        )
    });
    let backend = log
        .as_ref()
        .map_or("the embedded log".to_owned(), |l| l.describe());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RunError::Server)?;
    let mut signals = {
        let _context = runtime.enter();
        StopSignals::install().map_err(RunError::Server)?
    };
    let node = start(options, log)?;
    let ordinal = ordinal(&node_id).map_or(String::new(), |n| format!(" (ordinal {n})"));
    eprintln!(
        "wellspring node {node_id}{ordinal} on {backend}, serving the task-store API on {}{}{}{}",
        node.url(),
        if token {
            " (bearer token required)"
        } else {
            ""
        },
        if names.is_empty() {
            String::new()
        } else {
            format!("; running DAGs: {}", names.join(", "))
        },
        kube.unwrap_or_default()
    );
    let drain = node.drain.clone();
    let signal = runtime.block_on(async {
        tokio::select! {
            signal = signals.wait() => signal,
            _ = drain.notified() => "drain requested",
        }
    });
    eprintln!(
        "{signal}: stopping (the API first, then every stage flushes, commits and leaves its group)"
    );
    node.stop()
}

/// SIGINT (Ctrl-C) and SIGTERM (Kubernetes stopping the pod), caught from the moment
/// this is made. A command installs it before it says that it serves: a stop sent right
/// after that line must reach the clean shutdown, not the default action that kills the
/// process (which a test sending SIGTERM at once under load saw).
pub struct StopSignals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Installs the handlers; call it inside a Tokio runtime (`Runtime::enter`).
    pub fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(StopSignals {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(StopSignals {})
    }

    /// Waits for the first of them; names it.
    pub async fn wait(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => "SIGINT",
                _ = self.terminate.recv() => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

/// Why the API token could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the token file {}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the token file {} is empty (put the bearer token in it)", .0.display())]
    Empty(PathBuf),
}

/// Reads the API token from `--token-file` or `WELLSPRING_API_TOKEN` (never from the
/// command line, where `ps` would show it).
pub fn token(file: Option<&PathBuf>) -> Result<Option<String>, TokenError> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Unreadable {
            path: path.clone(),
            source,
        })?;
        let token = text.trim().to_owned();
        if token.is_empty() {
            return Err(TokenError::Empty(path.clone()));
        }
        return Ok(Some(token));
    }
    Ok(std::env::var("WELLSPRING_API_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
        .map(|t| t.trim().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pods_identity_gives_its_url_and_ordinal() {
        assert_eq!(
            pod_url("wellspring-2", "wellspring", "lab", 8080),
            "http://wellspring-2.wellspring.lab.svc:8080"
        );
        assert_eq!(ordinal("wellspring-2"), Some(2));
        assert_eq!(ordinal("wellspring-12"), Some(12));
        assert_eq!(ordinal("laptop"), None);
        assert_eq!(ordinal("node-a"), None);
    }
}
