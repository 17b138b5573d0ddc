//! The leader's autoscaler against a Kubernetes API on loopback: the Jobs it creates and
//! deletes, the Deployment it scales, the cool-down, and one leader among several nodes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::batch::v1::Job;
use parking_lot::Mutex;
use serde_json::{Value, json};
use wellspring_fake_kube::FakeKube;
use wellspring_kube::autoscale::{ENV_GROUP, ENV_URL, GROUP_ANNOTATION, group_label};
use wellspring_kube::{
    Autoscaler, DemandError, GroupDemand, Integration, JobTemplates, KubeSettings, LeaseSettings,
    PeerLoss, WorkerDemand, Workers,
};

const JOBS: &str = "/apis/batch/v1/namespaces/lab/jobs";
const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/lab/deployments";
const GROUP: &str = "Plate features: batch";

fn client(kube: &FakeKube) -> kube::Client {
    let config = kube::Config::new(kube.url().parse().expect("the fake's URL"));
    kube::Client::try_from(config).expect("a client")
}

fn templates() -> Arc<JobTemplates> {
    let job: Job = serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "plate-worker", "labels": {"app": "plate-worker"}},
        "spec": {"template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "worker", "image": "lab/plate-worker:1",
                            "env": [{"name": "WELLSPRING_URL", "value": "overridden"},
                                    {"name": "MODEL", "value": "v3"}]}]
        }}}
    }))
    .expect("a Job");
    let mut templates = JobTemplates::default();
    templates.insert("plate-worker", job);
    Arc::new(templates)
}

/// An autoscaler in namespace `lab` whose workers reach the task store at `ws:8080`.
fn scaler(kube: &FakeKube, cooldown: Duration) -> Autoscaler {
    Autoscaler::new(client(kube), "lab", "http://ws:8080", templates(), cooldown)
}

/// A demand the test sets, counting the rounds that asked for it (every node's).
#[derive(Clone)]
struct Demand {
    groups: Arc<Mutex<Vec<GroupDemand>>>,
    rounds: Arc<AtomicU32>,
}

impl Demand {
    fn new(workers: Workers, desired: u32) -> Self {
        let groups = Arc::new(Mutex::new(vec![GroupDemand {
            group: GROUP.into(),
            workers,
            desired,
            min: 0,
            max: 10,
        }]));
        Self {
            groups,
            rounds: Arc::new(AtomicU32::new(0)),
        }
    }

    fn set(&self, desired: u32) {
        self.groups.lock()[0].desired = desired;
    }

    /// Waits until `more` rounds have asked since the call, so that at least `more - 1`
    /// rounds started after it have finished (a node's rounds run one after another);
    /// false after 10 s.
    async fn rounds_pass(&self, more: u32) -> bool {
        let target = self.rounds.load(Ordering::SeqCst) + more;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.rounds.load(Ordering::SeqCst) < target {
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }
}

#[async_trait]
impl WorkerDemand for Demand {
    async fn demands(&self) -> Result<Vec<GroupDemand>, DemandError> {
        self.rounds.fetch_add(1, Ordering::SeqCst);
        Ok(self.groups.lock().clone())
    }
}

fn active_jobs(kube: &FakeKube) -> Vec<Value> {
    kube.list(JOBS)
        .into_iter()
        .filter(|j| {
            let finished = j["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Complete" && c["status"] == "True")
            });
            !finished
        })
        .collect()
}

fn env_of(job: &Value) -> Vec<(String, String)> {
    job["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap_or_default().to_owned(),
                v["value"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_jobs_follow_the_demand_and_carry_the_task_store_and_group() {
    let kube = FakeKube::start().expect("the fake API");
    let demand = Demand::new(Workers::Jobs("plate-worker".into()), 3);
    let mut scaler = Autoscaler::new(
        client(&kube),
        "lab",
        "http://wellspring.lab.svc:8080",
        templates(),
        Duration::ZERO,
    );
    let changed = scaler.round(&demand).await.expect("a round");
    assert_eq!(changed.len(), 1);
    assert_eq!((changed[0].from, changed[0].to), (0, 3));
    let jobs = kube.list(JOBS);
    assert_eq!(jobs.len(), 3);
    for job in &jobs {
        let name = job["metadata"]["name"].as_str().expect("a name");
        assert!(
            name.starts_with("plate-worker-") && name.len() > "plate-worker-".len(),
            "{name}"
        );
        assert_eq!(
            job["metadata"]["labels"]["wellspring.io/worker-group"],
            group_label(GROUP)
        );
        assert_eq!(
            job["metadata"]["labels"]["app"], "plate-worker",
            "the template's labels stay"
        );
        assert_eq!(job["metadata"]["annotations"][GROUP_ANNOTATION], GROUP);
        assert_eq!(job["spec"]["ttlSecondsAfterFinished"], 600);
        let env = env_of(job);
        assert!(
            env.contains(&(ENV_URL.into(), "http://wellspring.lab.svc:8080".into())),
            "{env:?}"
        );
        assert!(env.contains(&(ENV_GROUP.into(), GROUP.into())), "{env:?}");
        assert!(env.contains(&("MODEL".into(), "v3".into())), "{env:?}");
        assert_eq!(
            env.iter().filter(|(n, _)| n == ENV_URL).count(),
            1,
            "{env:?}"
        );
    }
    // Steady demand: nothing changes.
    assert!(scaler.round(&demand).await.expect("a round").is_empty());
    assert_eq!(kube.list(JOBS).len(), 3);

    // A worker finishes: it no longer counts, and a new one replaces it.
    let mut done = jobs[0].clone();
    done["status"] =
        json!({"conditions": [{"type": "Complete", "status": "True"}], "succeeded": 1});
    kube.apply(JOBS, done);
    scaler.round(&demand).await.expect("a round");
    assert_eq!(active_jobs(&kube).len(), 3);
    assert_eq!(kube.list(JOBS).len(), 4);

    // Demand falls: the Jobs whose pods have not started go first.
    let mut running = active_jobs(&kube)[0].clone();
    running["status"] = json!({"active": 1, "startTime": "2026-11-22T10:00:00Z"});
    let running = kube.apply(JOBS, running);
    demand.set(1);
    let changed = scaler.round(&demand).await.expect("a round");
    assert_eq!((changed[0].from, changed[0].to), (3, 1));
    let left = active_jobs(&kube);
    assert_eq!(left.len(), 1);
    assert_eq!(
        left[0]["metadata"]["name"], running["metadata"]["name"],
        "the running one stays"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workers_go_down_only_after_the_cooldown() {
    let kube = FakeKube::start().expect("the fake API");
    let demand = Demand::new(Workers::Jobs("plate-worker".into()), 4);
    let cooldown = Duration::from_millis(1500);
    let mut scaler = scaler(&kube, cooldown);
    scaler.round(&demand).await.expect("a round");
    assert_eq!(active_jobs(&kube).len(), 4);
    demand.set(0);
    let low_since = tokio::time::Instant::now();
    while low_since.elapsed() < cooldown - Duration::from_millis(300) {
        scaler.round(&demand).await.expect("a round");
        assert_eq!(
            active_jobs(&kube).len(),
            4,
            "scaled down within the cool-down"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !active_jobs(&kube).is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "never scaled down");
        scaler.round(&demand).await.expect("a round");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_deployment_is_scaled_through_its_scale_subresource() {
    let kube = FakeKube::start().expect("the fake API");
    kube.apply(
        DEPLOYMENTS,
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "plate-workers"},
               "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "w"}},
                        "template": {"metadata": {"labels": {"app": "w"}},
                                     "spec": {"containers": [{"name": "w", "image": "w"}]}}}}),
    );
    let demand = Demand::new(Workers::Deployment("plate-workers".into()), 6);
    let mut scaler = scaler(&kube, Duration::ZERO);
    let changed = scaler.round(&demand).await.expect("a round");
    assert_eq!((changed[0].from, changed[0].to), (1, 6));
    let replicas = |kube: &FakeKube| {
        kube.get(DEPLOYMENTS, "plate-workers").expect("it")["spec"]["replicas"].clone()
    };
    assert_eq!(replicas(&kube), 6);
    assert!(
        kube.requests()
            .iter()
            .any(|r| r.method == "PATCH" && r.path.ends_with("/deployments/plate-workers/scale")),
        "not through the scale subresource"
    );
    demand.set(2);
    scaler.round(&demand).await.expect("a round");
    assert_eq!(replicas(&kube), 2);
    // A missing Deployment is an error naming the group, not a panic or a silent skip.
    let missing = Demand::new(Workers::Deployment("nowhere".into()), 1);
    let error = scaler
        .round(&missing)
        .await
        .expect_err("no such Deployment");
    assert!(error.to_string().contains(GROUP), "{error}");
}

/// A demand that answers from a script, counting the questions.
struct Scripted {
    answers: Mutex<Vec<Result<Vec<GroupDemand>, DemandError>>>,
    asked: Mutex<u32>,
}

#[async_trait]
impl WorkerDemand for Scripted {
    async fn demands(&self) -> Result<Vec<GroupDemand>, DemandError> {
        *self.asked.lock() += 1;
        let mut answers = self.answers.lock();
        if answers.is_empty() {
            Ok(Vec::new())
        } else {
            answers.remove(0)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demand_unavailable_now_is_asked_again_and_a_refused_one_not_this_term() {
    let kube = FakeKube::start().expect("the fake API");
    let mut scaler = scaler(&kube, Duration::ZERO);
    let wanted = Demand::new(Workers::Jobs("plate-worker".into()), 2)
        .groups
        .lock()
        .clone();
    let unavailable = DemandError::Unavailable {
        group: GROUP.into(),
        reason: "a task shard is restarting; retry".into(),
    };
    let demand = Scripted {
        answers: Mutex::new(vec![Err(unavailable), Ok(wanted.clone())]),
        asked: Mutex::new(0),
    };
    let error = scaler.round(&demand).await.expect_err("not now");
    assert!(error.to_string().contains("restarting"), "{error}");
    let changed = scaler
        .round(&demand)
        .await
        .expect("the next round reads it");
    assert_eq!((changed[0].from, changed[0].to), (0, 2));
    assert_eq!(*demand.asked.lock(), 2);

    let refused = DemandError::Refused {
        group: GROUP.into(),
        reason: "group settings are invalid".into(),
    };
    let demand = Scripted {
        answers: Mutex::new(vec![Err(refused), Ok(wanted)]),
        asked: Mutex::new(0),
    };
    scaler.round(&demand).await.expect_err("refused");
    assert!(scaler.round(&demand).await.expect("a round").is_empty());
    assert_eq!(
        *demand.asked.lock(),
        1,
        "a refused demand is not asked again this term"
    );
    assert_eq!(active_jobs(&kube).len(), 2, "nothing was scaled meanwhile");
    // A new term asks again.
    scaler.reset();
    scaler.round(&demand).await.expect("a round");
    assert_eq!(*demand.asked.lock(), 2);
}

struct NoPeers;

#[async_trait]
impl PeerLoss for NoPeers {
    async fn peer_lost(&self, _: &str, _: &str) {}
}

fn node_settings(kube: &FakeKube, identity: &str) -> KubeSettings {
    let mut lease = LeaseSettings::new("wellspring-leader", identity);
    lease.duration = Duration::from_secs(20);
    lease.renew_deadline = Duration::from_secs(10);
    lease.retry_period = Duration::from_millis(100);
    KubeSettings {
        lease,
        templates: templates(),
        scale_interval: Duration::from_millis(100),
        scale_cooldown: Duration::ZERO,
        ..KubeSettings::new(Some(kube.url()), "lab", identity)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_scales_and_the_next_one_carries_on_after_a_drain() {
    let kube = FakeKube::start().expect("the fake API");
    let demand = Demand::new(Workers::Jobs("plate-worker".into()), 2);
    let mut nodes = Vec::new();
    for id in ["ws-0", "ws-1", "ws-2"] {
        let settings = node_settings(&kube, id);
        let client = wellspring_kube::connect(&settings).await.expect("a client");
        let integration = Integration::start(
            client,
            settings,
            Arc::new(demand.clone()),
            Arc::new(NoPeers),
        );
        nodes.push((id, integration));
    }
    assert!(kube.wait_until(Duration::from_secs(10), |k| active_jobs(k).len() == 2));
    // Three nodes, several more rounds: still two Jobs (one leader acted).
    assert!(demand.rounds_pass(4).await, "the leader stopped scaling");
    assert_eq!(kube.list(JOBS).len(), 2);
    let leaders: Vec<&str> = nodes
        .iter()
        .filter(|(_, i)| *i.leadership().borrow())
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(leaders.len(), 1, "{leaders:?}");
    // The leader drains; another takes over and follows the demand.
    let leader = nodes
        .iter()
        .position(|(id, _)| *id == leaders[0])
        .expect("it");
    let (_, drained) = nodes.remove(leader);
    drained.stop().await;
    demand.set(5);
    assert!(kube.wait_until(Duration::from_secs(10), |k| active_jobs(k).len() == 5));
    assert!(
        demand.rounds_pass(4).await,
        "the new leader stopped scaling"
    );
    assert_eq!(kube.list(JOBS).len(), 5, "two leaders created Jobs");
    for (_, node) in nodes {
        node.stop().await;
    }
}
