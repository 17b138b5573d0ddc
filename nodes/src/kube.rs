//! The node's side of the Kubernetes integration: `wellspring run`'s flags for it, the
//! task store as the autoscaler's demand, the log as what acts on a lost peer, and the
//! thread the integration runs on.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use clap::Args;
use wellspring_actors::metrics::Gauge;
use wellspring_actors::taskstore::{Scope, TaskStore};
use wellspring_kube::{
    DemandError, GroupDemand, Integration, JobTemplates, KubeSettings, LeaseSettings, PeerLoss,
    WorkerDemand, Workers,
};
use wellspring_log::Log;

use crate::commands::flags;

/// When the integration runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KubeMode {
    /// When running in a pod (the API's address is in the environment) or --kube-api is
    /// given.
    Auto,
    On,
    Off,
}

/// `wellspring run`'s Kubernetes flags.
#[derive(Debug, Clone, Args)]
pub struct KubeArgs {
    /// Use the Kubernetes API: leader election, worker autoscaling, fast reaction to a
    /// lost peer pod.
    #[arg(
        long = "kube",
        value_enum,
        default_value = "auto",
        env = "WELLSPRING_KUBE"
    )]
    pub mode: KubeMode,
    /// An API server to use without credentials (a test server, `kubectl proxy`);
    /// default: the pod's service account.
    #[arg(long, env = "WELLSPRING_KUBE_API")]
    pub kube_api: Option<String>,
    /// The Lease the nodes elect their leader on.
    #[arg(long, default_value = "wellspring-leader")]
    pub leader_lease: String,
    /// How long a leader's Lease lasts unrenewed (it renews every 2 s; at least 3s).
    #[arg(
        long,
        default_value = "15s",
        value_parser = flags::duration_at_least(Duration::from_secs(3))
    )]
    pub lease_duration: Duration,
    /// Label selector of the node pods (the peers watched for loss).
    #[arg(long, default_value = wellspring_kube::DEFAULT_PEER_SELECTOR)]
    pub peer_selector: String,
    /// The task store's address as worker Jobs reach it (their WELLSPRING_URL; default
    /// http://wellspring.NAMESPACE.svc:8080, the client Service).
    #[arg(long, env = "WELLSPRING_WORKER_URL")]
    pub worker_url: Option<String>,
    /// A directory of worker Job templates (NAME.yaml: a batch/v1 Job); a group's
    /// worker-job names one.
    #[arg(long, env = "WELLSPRING_WORKER_TEMPLATES")]
    pub worker_templates: Option<PathBuf>,
    /// Workers are scaled down only after the demand stayed lower this long.
    #[arg(long, default_value = "2m", value_parser = flags::duration)]
    pub scale_cooldown: Duration,
    /// How often the leader compares workers with the demand (100ms at the least).
    #[arg(long, default_value = "10s", value_parser = flags::duration)]
    pub scale_interval: Duration,
}

impl KubeArgs {
    /// The integration's settings, or `None` when it is off.
    pub fn settings(&self, node_id: &str, namespace: &str) -> Result<Option<KubeSettings>, String> {
        let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
        let on = match self.mode {
            KubeMode::Off => false,
            KubeMode::On => true,
            KubeMode::Auto => in_cluster || self.kube_api.is_some(),
        };
        if !on {
            return Ok(None);
        }
        let lease_duration = self.lease_duration;
        let mut lease = LeaseSettings::new(&self.leader_lease, node_id);
        lease.duration = lease_duration;
        // client-go's proportions: renew within 2/3 of the Lease, retry every 2 s.
        lease.renew_deadline = lease_duration * 2 / 3;
        lease.retry_period = (lease_duration / 7).min(Duration::from_secs(2));
        let problems = lease.problems();
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        let templates = match &self.worker_templates {
            Some(dir) => JobTemplates::load(dir).map_err(|e| e.to_string())?,
            None => JobTemplates::default(),
        };
        let defaults = KubeSettings::new(self.kube_api.clone(), namespace, node_id);
        Ok(Some(KubeSettings {
            lease,
            peer_selector: self.peer_selector.clone(),
            worker_url: self
                .worker_url
                .clone()
                .unwrap_or(defaults.worker_url.clone()),
            templates: Arc::new(templates),
            scale_interval: self.scale_interval.max(Duration::from_millis(100)),
            scale_cooldown: self.scale_cooldown,
            ..defaults
        }))
    }
}

/// The task store's groups that name their workers, with their demand cluster-wide.
pub struct TaskStoreDemand(pub TaskStore);

#[async_trait]
impl WorkerDemand for TaskStoreDemand {
    async fn demands(&self) -> Result<Vec<GroupDemand>, DemandError> {
        let mut out = Vec::new();
        for group in self.0.groups() {
            let workers = match (&group.worker_deployment, &group.worker_job) {
                (Some(name), _) => Workers::Deployment(name.clone()),
                (None, Some(template)) => Workers::Jobs(template.clone()),
                (None, None) => continue,
            };
            let stats = self
                .0
                .stats(&group.name, Scope::Cluster)
                .await
                .map_err(|e| {
                    let (group, reason) = (group.name.clone(), e.to_string());
                    // 5xx: a shard moving or restarting, a peer down; 4xx: the question.
                    if e.http_status() >= 500 {
                        DemandError::Unavailable { group, reason }
                    } else {
                        DemandError::Refused { group, reason }
                    }
                })?;
            out.push(GroupDemand {
                group: group.name.clone(),
                workers,
                desired: stats.desired_workers,
                min: group.autoscaling.min_workers,
                max: group.autoscaling.max_workers,
            });
        }
        Ok(out)
    }
}

/// A lost peer's partitions move now: it is removed from every consumer group.
pub struct EvictFromGroups(pub Arc<dyn Log>);

#[async_trait]
impl PeerLoss for EvictFromGroups {
    async fn peer_lost(&self, pod: &str, reason: &str) {
        match self.0.evict_static_member(pod).await {
            Ok(groups) if groups.is_empty() => {
                tracing::info!(peer = %pod, "{reason}, and it is in no consumer group (it left cleanly)");
            }
            Ok(groups) => {
                tracing::warn!(peer = %pod, groups = groups.len(), "{reason}: removed from its consumer groups; its partitions move now");
            }
            Err(e) => tracing::warn!(
                peer = %pod,
                "{reason}, but removing it from its groups failed (its partitions move when its session times out): {e}"
            ),
        }
    }
}

/// The integration on a thread of its own.
pub struct KubeThread {
    stop: Option<tokio::sync::oneshot::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl KubeThread {
    /// Connects and starts; an API that cannot be reached is reported here.
    pub fn start(
        settings: KubeSettings,
        store: TaskStore,
        log: Arc<dyn Log>,
        leader: Gauge,
    ) -> Result<Self, String> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<bool>();
        let (started, ready) = std::sync::mpsc::channel::<Result<(), String>>();
        let thread = std::thread::Builder::new()
            .name("kubernetes".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = started.send(Err(e.to_string()));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let client = match wellspring_kube::connect(&settings).await {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = started.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let integration = Integration::start(
                        client,
                        settings,
                        Arc::new(TaskStoreDemand(store)),
                        Arc::new(EvictFromGroups(log)),
                    );
                    let _ = started.send(Ok(()));
                    let mut leadership = integration.leadership();
                    let mut stopped = stopped;
                    let release = loop {
                        tokio::select! {
                            how = &mut stopped => break how.unwrap_or(false),
                            changed = leadership.changed() => {
                                if changed.is_err() {
                                    break false;
                                }
                                let leads = *leadership.borrow_and_update();
                                leader.add(i64::from(leads) - leader.get());
                            }
                        }
                    };
                    if release {
                        integration.stop().await;
                    }
                    leader.add(-leader.get());
                });
            })
            .map_err(|e| e.to_string())?;
        match ready.recv() {
            Ok(Ok(())) => Ok(Self {
                stop: Some(stop),
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err("the Kubernetes integration stopped while starting".into()),
        }
    }

    /// Drain: the leader's duties stop and its Lease is released.
    pub fn stop(mut self) {
        self.finish(true);
    }

    /// Crash: nothing is released (tests).
    pub fn kill(mut self) {
        self.finish(false);
    }

    fn finish(&mut self, release: bool) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(release);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for KubeThread {
    fn drop(&mut self) {
        self.finish(true);
    }
}
