//! Wellspring on Kubernetes: what a node does with the Kubernetes API when it runs in a
//! cluster (or is pointed at an API server).
//!
//! - [`lease`]: leader election on a Lease, so that exactly one node acts for the
//!   cluster-wide duties, with a clean hand-over when the leader drains;
//! - [`autoscale`]: the leader's duty: each task-store group's worker Jobs or worker
//!   Deployment kept at the count the task store asks for, with a cool-down;
//! - [`pod_loss`]: every node watches its peers' pods and acts as soon as one is gone.
//!
//! [`Integration::start`] runs all three on the caller's tokio runtime; the node stops it
//! when it drains, before its stages leave their groups.

pub mod autoscale;
pub mod lease;
pub mod pod_loss;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use autoscale::{
    Autoscaler, DemandError, GroupDemand, JobTemplates, Scaled, WorkerDemand, Workers,
};
pub use lease::{LeaderElector, LeaseSettings};
pub use pod_loss::PeerLoss;

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("the Kubernetes API refused or failed a call: {0}")]
    Api(#[from] kube::Error),
    #[error(
        "cannot find how to reach the Kubernetes API ({0}); in a pod, mount the service account token (automountServiceAccountToken), elsewhere give --kube-api or a kubeconfig"
    )]
    Config(String),
    #[error("worker Job template {path}: {reason}")]
    Templates { path: String, reason: String },
    #[error("cannot read the task store's demand for workers: {0}")]
    Demand(#[source] DemandError),
    #[error("scaling workers: {0}")]
    Scaling(String),
    #[error("the Kubernetes API did not answer within {0:?}")]
    Timeout(Duration),
}

/// Everything the integration needs to know.
#[derive(Clone)]
pub struct KubeSettings {
    /// An API server reached without credentials (tests, `kubectl proxy`); `None`: the
    /// pod's service account (or the local kubeconfig).
    pub api_url: Option<String>,
    pub namespace: String,
    pub lease: LeaseSettings,
    /// Label selector of the node pods (peers).
    pub peer_selector: String,
    /// The task store's address as workers reach it (`WELLSPRING_URL` of worker Jobs).
    pub worker_url: String,
    pub templates: Arc<JobTemplates>,
    /// How often the leader checks the demand.
    pub scale_interval: Duration,
    pub scale_cooldown: Duration,
}

/// The node pods, as the manifests in `deploy/` label them.
pub const DEFAULT_PEER_SELECTOR: &str =
    "app.kubernetes.io/name=wellspring,app.kubernetes.io/component=node";

impl KubeSettings {
    /// `wellspring run`'s defaults for node `identity` in `namespace`, with the API
    /// reached at `api_url` (or by the pod's service account when `None`).
    pub fn new(api_url: Option<String>, namespace: &str, identity: &str) -> Self {
        Self {
            api_url,
            namespace: namespace.to_owned(),
            lease: LeaseSettings::new("wellspring-leader", identity),
            peer_selector: DEFAULT_PEER_SELECTOR.to_owned(),
            worker_url: format!("http://wellspring.{namespace}.svc:8080"),
            templates: Arc::new(JobTemplates::default()),
            scale_interval: Duration::from_secs(10),
            scale_cooldown: Duration::from_secs(120),
        }
    }
}

impl std::fmt::Debug for KubeSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSettings")
            .field("api_url", &self.api_url)
            .field("namespace", &self.namespace)
            .field("lease", &self.lease)
            .field("peer_selector", &self.peer_selector)
            .field("worker_url", &self.worker_url)
            .field("templates", &self.templates.names())
            .field("scale_interval", &self.scale_interval)
            .field("scale_cooldown", &self.scale_cooldown)
            .finish()
    }
}

/// A client for the API server the settings name.
pub async fn connect(settings: &KubeSettings) -> Result<kube::Client, KubeError> {
    let mut config = match &settings.api_url {
        Some(url) => kube::Config::new(
            url.parse()
                .map_err(|e| KubeError::Config(format!("{url} is not a URL: {e}")))?,
        ),
        None => kube::Config::infer()
            .await
            .map_err(|e| KubeError::Config(e.to_string()))?,
    };
    config.default_namespace = settings.namespace.clone();
    kube::Client::try_from(config).map_err(KubeError::from)
}

/// The integration running: election, the leader's autoscaler, the peer watch.
pub struct Integration {
    leadership: watch::Receiver<bool>,
    stop_duties: watch::Sender<bool>,
    stop_election: watch::Sender<bool>,
    duties: JoinHandle<()>,
    election: JoinHandle<()>,
    peers: JoinHandle<()>,
}

impl Integration {
    /// Starts everything on the current tokio runtime.
    pub fn start(
        client: kube::Client,
        settings: KubeSettings,
        demand: Arc<dyn WorkerDemand>,
        peer_loss: Arc<dyn PeerLoss>,
    ) -> Self {
        let (stop_duties, duties_stopped) = watch::channel(false);
        let (stop_election, election_stopped) = watch::channel(false);
        let elector = LeaderElector::new(
            Api::<Lease>::namespaced(client.clone(), &settings.namespace),
            settings.lease.clone(),
        );
        let leadership = elector.leadership();
        let election = tokio::spawn(elector.run(election_stopped.clone()));
        let autoscaler = Autoscaler::new(
            client.clone(),
            settings.namespace.clone(),
            settings.worker_url.clone(),
            settings.templates.clone(),
            settings.scale_cooldown,
        );
        let duties = tokio::spawn(lead(
            autoscaler,
            demand,
            settings.scale_interval,
            leadership.clone(),
            duties_stopped,
        ));
        let peers = tokio::spawn(pod_loss::watch_peers(
            Api::<Pod>::namespaced(client, &settings.namespace),
            settings.peer_selector.clone(),
            settings.lease.identity.clone(),
            peer_loss,
            election_stopped,
        ));
        Self {
            leadership,
            stop_duties,
            stop_election,
            duties,
            election,
            peers,
        }
    }

    /// Whether this node leads, now and as it changes.
    pub fn leadership(&self) -> watch::Receiver<bool> {
        self.leadership.clone()
    }

    /// Hands over (drain): the duties stop first, then the Lease is released, then the
    /// peer watch ends.
    pub async fn stop(self) {
        let _ = self.stop_duties.send(true);
        let _ = self.duties.await;
        let _ = self.stop_election.send(true);
        let _ = self.election.await;
        let _ = self.peers.await;
    }
}

/// The leader's duties: an autoscaling round every `interval` while this node leads.
async fn lead(
    mut autoscaler: Autoscaler,
    demand: Arc<dyn WorkerDemand>,
    interval: Duration,
    mut leadership: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        // Wait to lead.
        loop {
            if *stop.borrow() {
                return;
            }
            if *leadership.borrow_and_update() {
                break;
            }
            tokio::select! {
                changed = leadership.changed() => if changed.is_err() { return },
                _ = stop.changed() => {}
            }
        }
        autoscaler.reset();
        while *leadership.borrow() && !*stop.borrow() {
            // A round stops where it is the moment leadership ends (the client can spend
            // minutes retrying an unavailable API): a former leader must not act on.
            let mut deposed = leadership.clone();
            let mut stopping = stop.clone();
            tokio::select! {
                biased;
                _ = deposed.wait_for(|leads| !*leads) => {}
                _ = stopping.wait_for(|stop| *stop) => {}
                result = autoscaler.round(demand.as_ref()) => {
                    if let Err(e) = result {
                        tracing::warn!("autoscaling round failed (retrying): {e}");
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                changed = leadership.changed() => if changed.is_err() { return },
                _ = stop.changed() => {}
            }
        }
    }
}
