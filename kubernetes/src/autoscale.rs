//! Worker autoscaling: the leader keeps each task-store group's workers at the count the
//! task store asks for, as worker Jobs made from an operator's template or as the replicas
//! of a worker Deployment.
//!
//! Scaling up follows the signal at once; scaling down waits until the signal has stayed
//! low for the whole cool-down (the highest demand seen within it wins, as Kubernetes' own
//! HorizontalPodAutoscaler stabilises), so a backlog that comes and goes does not make
//! workers come and go with it.
//!
//! A demand that cannot be read now ([`DemandError::retryable`]) fails the round, and
//! the next round asks again; one the task store refuses outright is not asked again
//! this term: the autoscaler gives up until this node leads anew.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::EnvVar;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use tokio::time::Instant;

use crate::KubeError;

/// Labels and annotation on the Jobs the autoscaler makes.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGER: &str = "wellspring";
pub const GROUP_LABEL: &str = "wellspring.io/worker-group";
pub const GROUP_ANNOTATION: &str = "wellspring.io/group";

/// What a worker finds in its environment.
pub const ENV_URL: &str = "WELLSPRING_URL";
pub const ENV_GROUP: &str = "WELLSPRING_GROUP";

/// Where a group's workers come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Workers {
    /// The replicas of this Deployment (in the node's namespace).
    Deployment(String),
    /// Jobs made from the named template.
    Jobs(String),
}

/// One group's demand, as the task store reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDemand {
    pub group: String,
    pub workers: Workers,
    /// Already within the group's minimum and maximum.
    pub desired: u32,
    pub min: u32,
    pub max: u32,
}

/// Why the demand for workers could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DemandError {
    /// Not now (a task shard moving to another node, a node restarting): a later round
    /// can read it.
    #[error("group {group:?}: {reason}")]
    Unavailable { group: String, reason: String },
    /// The task store refused the question itself: asking again the same way cannot help.
    #[error("group {group:?}: {reason} (refused)")]
    Refused { group: String, reason: String },
}

impl DemandError {
    /// Whether a later round can read the demand.
    pub fn retryable(&self) -> bool {
        matches!(self, DemandError::Unavailable { .. })
    }
}

/// The task store, as the autoscaler sees it.
#[async_trait]
pub trait WorkerDemand: Send + Sync {
    /// Every group that has a worker Deployment or Job template, with its demand now.
    async fn demands(&self) -> Result<Vec<GroupDemand>, DemandError>;
}

/// The cool-down: the highest demand within the window, and no scaling down before a
/// whole window has been seen (a new leader knows nothing of the demand before it).
#[derive(Debug)]
pub struct Stabilizer {
    window: Duration,
    seen: VecDeque<(Instant, u32)>,
    since: Option<Instant>,
}

impl Stabilizer {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            seen: VecDeque::new(),
            since: None,
        }
    }

    /// How many workers to run now, given the demand and how many run.
    pub fn decide(&mut self, now: Instant, desired: u32, current: u32) -> u32 {
        let since = *self.since.get_or_insert(now);
        self.seen.push_back((now, desired));
        while self
            .seen
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > self.window)
        {
            self.seen.pop_front();
        }
        if desired >= current {
            return desired;
        }
        if now.duration_since(since) < self.window {
            return current;
        }
        let highest = self.seen.iter().map(|(_, d)| *d).max().unwrap_or(desired);
        highest.min(current)
    }
}

/// Job templates by name: the operator's files (`NAME.yaml`, `.yml` or `.json`, one
/// batch/v1 Job each), so the API can only start the workers the operator allowed.
#[derive(Debug, Clone, Default)]
pub struct JobTemplates {
    templates: BTreeMap<String, Job>,
}

impl JobTemplates {
    pub fn load(dir: &Path) -> Result<Self, KubeError> {
        let entries = std::fs::read_dir(dir).map_err(|e| KubeError::Templates {
            path: dir.display().to_string(),
            reason: e.to_string(),
        })?;
        let mut templates = BTreeMap::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let is_template = path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
            // ConfigMap mounts hold hidden `..data` links beside the files: skip them.
            if !is_template || stem.starts_with('.') {
                continue;
            }
            let problem = |reason: String| KubeError::Templates {
                path: path.display().to_string(),
                reason,
            };
            let text = std::fs::read_to_string(&path).map_err(|e| problem(e.to_string()))?;
            let job: Job = serde_saphyr::from_str(&text).map_err(|e| problem(e.to_string()))?;
            if job.spec.as_ref().is_none_or(|s| s.template.spec.is_none()) {
                return Err(problem("the Job has no spec.template.spec".into()));
            }
            templates.insert(stem.to_owned(), job);
        }
        Ok(Self { templates })
    }

    pub fn insert(&mut self, name: impl Into<String>, job: Job) {
        self.templates.insert(name.into(), job);
    }

    pub fn get(&self, name: &str) -> Option<&Job> {
        self.templates.get(name)
    }

    pub fn names(&self) -> Vec<String> {
        self.templates.keys().cloned().collect()
    }
}

/// A label value naming a group: group names may hold spaces and colons, labels may not;
/// a hash of the whole name keeps two similar names apart.
pub fn group_label(group: &str) -> String {
    let cleaned: String = group
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(50)
        .collect();
    let cleaned = cleaned.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    let cleaned = if cleaned.is_empty() { "group" } else { cleaned };
    // FNV-1a: stable across runs and builds, unlike std's hasher.
    let hash = group.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{cleaned}-{:08x}", hash as u32)
}

/// The Job to create for `group` from `template`: labelled, annotated, and with the
/// task store's address and the group in every container's environment.
pub fn worker_job(template: &Job, template_name: &str, group: &str, worker_url: &str) -> Job {
    let mut job = template.clone();
    let meta = &mut job.metadata;
    let prefix = meta.name.take().unwrap_or_else(|| template_name.to_owned());
    meta.generate_name = Some(format!("{}-", prefix.trim_end_matches('-')));
    meta.namespace = None;
    meta.resource_version = None;
    meta.uid = None;
    let labels = meta.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(MANAGED_BY.into(), MANAGER.into());
    labels.insert(GROUP_LABEL.into(), group_label(group));
    meta.annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(GROUP_ANNOTATION.into(), group.to_owned());
    if let Some(spec) = job.spec.as_mut() {
        // Finished workers go away on their own unless the template says otherwise.
        spec.ttl_seconds_after_finished.get_or_insert(600);
        if let Some(pod) = spec.template.spec.as_mut() {
            for container in &mut pod.containers {
                let env = container.env.get_or_insert_with(Vec::new);
                env.retain(|v| v.name != ENV_URL && v.name != ENV_GROUP);
                env.push(EnvVar {
                    name: ENV_URL.into(),
                    value: Some(worker_url.to_owned()),
                    value_from: None,
                });
                env.push(EnvVar {
                    name: ENV_GROUP.into(),
                    value: Some(group.to_owned()),
                    value_from: None,
                });
            }
        }
    }
    job
}

/// Whether a Job still runs or waits to run (not finished, not being deleted).
fn is_active(job: &Job) -> bool {
    if job.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let finished = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        });
    !finished
}

/// Which Jobs to delete first: those whose pods have not started (no work lost), then
/// the newest.
fn deletion_order(jobs: &mut [Job]) {
    jobs.sort_by_key(|job| {
        let started = job
            .status
            .as_ref()
            .is_some_and(|s| s.active.unwrap_or(0) > 0 || s.start_time.is_some());
        let created = job
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| std::cmp::Reverse(t.0));
        (started, created)
    });
}

/// What one round did to one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scaled {
    pub group: String,
    pub from: u32,
    pub to: u32,
}

/// The leader's autoscaler.
pub struct Autoscaler {
    client: kube::Client,
    namespace: String,
    worker_url: String,
    templates: Arc<JobTemplates>,
    cooldown: Duration,
    stabilizers: BTreeMap<String, Stabilizer>,
    /// Groups whose template is missing, warned about once.
    warned: BTreeMap<String, String>,
    /// Set when the task store refused to give its demand: no round asks again this term.
    refused: Option<DemandError>,
}

impl Autoscaler {
    pub fn new(
        client: kube::Client,
        namespace: impl Into<String>,
        worker_url: impl Into<String>,
        templates: Arc<JobTemplates>,
        cooldown: Duration,
    ) -> Self {
        Self {
            client,
            namespace: namespace.into(),
            worker_url: worker_url.into(),
            templates,
            cooldown,
            stabilizers: BTreeMap::new(),
            warned: BTreeMap::new(),
            refused: None,
        }
    }

    /// Forgets the demand seen so far (leadership lost: the next term starts afresh).
    pub fn reset(&mut self) {
        self.stabilizers.clear();
        self.refused = None;
    }

    /// One round over every group; answers the groups whose worker count changed. Once
    /// the task store has refused to give its demand, rounds scale nothing until
    /// [`Autoscaler::reset`].
    pub async fn round(&mut self, demand: &dyn WorkerDemand) -> Result<Vec<Scaled>, KubeError> {
        if self.refused.is_some() {
            return Ok(Vec::new());
        }
        let demands = match demand.demands().await {
            Ok(demands) => demands,
            Err(e) if e.retryable() => return Err(KubeError::Demand(e)),
            Err(e) => {
                tracing::error!(
                    "the task store refused to give its demand for workers ({e}); no workers are scaled until this node leads again"
                );
                self.refused = Some(e.clone());
                return Err(KubeError::Demand(e));
            }
        };
        let mut changed = Vec::new();
        let mut failures = Vec::new();
        for group in demands {
            let result = match &group.workers {
                Workers::Deployment(name) => self.scale_deployment(&group, name).await,
                Workers::Jobs(template) => self.scale_jobs(&group, template).await,
            };
            match result {
                Ok(Some(scaled)) => changed.push(scaled),
                Ok(None) => {}
                Err(e) => failures.push(format!("group {:?}: {e}", group.group)),
            }
        }
        if failures.is_empty() {
            Ok(changed)
        } else {
            Err(KubeError::Scaling(failures.join("; ")))
        }
    }

    fn target(&mut self, group: &GroupDemand, current: u32) -> u32 {
        let desired = group.desired.clamp(group.min, group.max.max(group.min));
        self.stabilizers
            .entry(group.group.clone())
            .or_insert_with(|| Stabilizer::new(self.cooldown))
            .decide(Instant::now(), desired, current)
    }

    async fn scale_deployment(
        &mut self,
        group: &GroupDemand,
        name: &str,
    ) -> Result<Option<Scaled>, KubeError> {
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), &self.namespace);
        let scale = api.get_scale(name).await?;
        let current = scale.spec.and_then(|s| s.replicas).unwrap_or(0).max(0) as u32;
        let target = self.target(group, current);
        if target == current {
            return Ok(None);
        }
        let patch = serde_json::json!({ "spec": { "replicas": target } });
        api.patch_scale(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        tracing::info!(group = %group.group, deployment = %name, from = current, to = target, "scaled the worker Deployment");
        Ok(Some(Scaled {
            group: group.group.clone(),
            from: current,
            to: target,
        }))
    }

    async fn scale_jobs(
        &mut self,
        group: &GroupDemand,
        template_name: &str,
    ) -> Result<Option<Scaled>, KubeError> {
        let Some(template) = self.templates.get(template_name).cloned() else {
            if self.warned.get(&group.group).map(String::as_str) != Some(template_name) {
                tracing::warn!(
                    group = %group.group,
                    template = %template_name,
                    known = ?self.templates.names(),
                    "the group's worker-job template is not among the node's templates (--worker-templates); no workers are started for it"
                );
                self.warned
                    .insert(group.group.clone(), template_name.to_owned());
            }
            return Ok(None);
        };
        let api: Api<Job> = Api::namespaced(self.client.clone(), &self.namespace);
        let selector = format!(
            "{MANAGED_BY}={MANAGER},{GROUP_LABEL}={}",
            group_label(&group.group)
        );
        let mut active: Vec<Job> = api
            .list(&ListParams::default().labels(&selector))
            .await?
            .items
            .into_iter()
            .filter(is_active)
            .collect();
        let current = active.len() as u32;
        let target = self.target(group, current);
        if target > current {
            let job = worker_job(&template, template_name, &group.group, &self.worker_url);
            for _ in current..target {
                api.create(&PostParams::default(), &job).await?;
            }
        } else if target < current {
            deletion_order(&mut active);
            for job in active.iter().take((current - target) as usize) {
                let Some(name) = job.metadata.name.as_deref() else {
                    continue;
                };
                match api.delete(name, &DeleteParams::background()).await {
                    Ok(_) => {}
                    // Gone already (finished and cleaned up): as good as deleted.
                    Err(kube::Error::Api(status)) if status.is_not_found() => {}
                    Err(e) => return Err(e.into()),
                }
            }
        } else {
            return Ok(None);
        }
        tracing::info!(group = %group.group, template = %template_name, from = current, to = target, "scaled the worker Jobs");
        Ok(Some(Scaled {
            group: group.group.clone(),
            from: current,
            to: target,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_up_is_immediate_and_down_waits_out_the_cooldown() {
        let window = Duration::from_secs(60);
        let mut s = Stabilizer::new(window);
        let t0 = Instant::now();
        assert_eq!(s.decide(t0, 5, 0), 5, "up at once");
        // A new term does not scale down before it has seen a whole window.
        assert_eq!(s.decide(t0 + Duration::from_secs(10), 1, 5), 5);
        // Demand that comes and goes keeps the workers.
        assert_eq!(s.decide(t0 + Duration::from_secs(30), 4, 5), 5);
        assert_eq!(
            s.decide(t0 + Duration::from_secs(61), 1, 5),
            4,
            "the 4 seen at 30 s still counts"
        );
        assert_eq!(
            s.decide(t0 + Duration::from_secs(95), 1, 4),
            1,
            "low for a whole window"
        );
        assert_eq!(
            s.decide(t0 + Duration::from_secs(96), 3, 1),
            3,
            "up again at once"
        );
    }

    #[test]
    fn flapping_demand_does_not_flap_the_workers() {
        let mut s = Stabilizer::new(Duration::from_secs(30));
        let t0 = Instant::now();
        let mut current = 0;
        let mut changes = 0;
        for i in 0..100u64 {
            let desired = if i % 2 == 0 { 6 } else { 1 };
            let next = s.decide(t0 + Duration::from_secs(i * 5), desired, current);
            if next != current {
                changes += 1;
            }
            current = next;
        }
        assert_eq!((current, changes), (6, 1));
    }

    #[test]
    fn group_labels_are_valid_and_distinct() {
        let a = group_label("Group A: plates");
        let b = group_label("Group A plates");
        assert_ne!(a, b);
        for label in [&a, &b, &group_label(&"x".repeat(300)), &group_label("::")] {
            assert!(label.len() <= 63, "{label}");
            assert!(
                label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')),
                "{label}"
            );
            assert!(
                label
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphanumeric()),
                "{label}"
            );
        }
        assert_eq!(group_label("plate-features"), group_label("plate-features"));
    }
}
