//! Nodes with the Kubernetes integration on, against a Kubernetes API served on loopback
//! (`wellspring-fake-kube`): a lost peer's partitions move as soon as its pod is deleted,
//! the leader starts worker Jobs for a group's backlog, and a draining leader hands over.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use serde_json::{Value, json};
use wellspring_fake_kube::FakeKube;
use wellspring_kube::{JobTemplates, KubeSettings, LeaseSettings};
use wellspring_log::{
    Consumer, ConsumerConfig, EmbeddedLog, Log, LogError, Offset, Producer, TopicPartition,
    TopicSpec,
};
use wellspring_nodes::run::{RunOptions, RunningNode, start};

const PODS: &str = "/api/v1/namespaces/lab/pods";
const JOBS: &str = "/apis/batch/v1/namespaces/lab/jobs";
const TASK_STORE_GROUP: &str = "wellspring.task-store";

fn pod(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "wellspring"}},
           "spec": {"containers": [{"name": "wellspring", "image": "wellspring"}]}})
}

fn kube_settings(kube: &FakeKube, node_id: &str, templates: Arc<JobTemplates>) -> KubeSettings {
    let mut lease = LeaseSettings::new("wellspring-leader", node_id);
    lease.duration = Duration::from_secs(15);
    lease.renew_deadline = Duration::from_secs(10);
    lease.retry_period = Duration::from_millis(200);
    KubeSettings {
        lease,
        peer_selector: "app.kubernetes.io/name=wellspring".into(),
        templates,
        scale_interval: Duration::from_millis(200),
        ..KubeSettings::new(Some(kube.url()), "lab", node_id)
    }
}

/// A node whose session outlasts every test here: only the API's word moves its shards.
fn node(log: &EmbeddedLog, kube: &FakeKube, id: &str, templates: Arc<JobTemplates>) -> RunningNode {
    node_on(Arc::new(log.clone()), kube, id, templates)
}

fn node_on(
    log: Arc<dyn Log>,
    kube: &FakeKube,
    id: &str,
    templates: Arc<JobTemplates>,
) -> RunningNode {
    let mut options = RunOptions::new("127.0.0.1:0".parse().unwrap());
    options.node_id = id.into();
    options.task_partitions = 4;
    options.session_timeout = Duration::from_secs(120);
    options.kube = Some(kube_settings(kube, id, templates));
    start(options, Some(log)).unwrap()
}

/// The embedded log, noting every peer a node asks it to evict: what a node does when it
/// learns from the API that a peer is lost, seen from outside.
struct NotingEvictions {
    log: EmbeddedLog,
    evicted: Arc<Mutex<Vec<String>>>,
}

#[async_trait]
impl Log for NotingEvictions {
    async fn ensure_topic(&self, spec: &TopicSpec) -> Result<(), LogError> {
        self.log.ensure_topic(spec).await
    }
    async fn partitions(&self, topic: &str) -> Result<u32, LogError> {
        self.log.partitions(topic).await
    }
    async fn end_offset(&self, partition: &TopicPartition) -> Result<Offset, LogError> {
        self.log.end_offset(partition).await
    }
    fn producer(&self) -> Result<Box<dyn Producer>, LogError> {
        self.log.producer()
    }
    fn consumer(&self, config: ConsumerConfig) -> Result<Box<dyn Consumer>, LogError> {
        self.log.consumer(config)
    }
    fn describe(&self) -> String {
        self.log.describe()
    }
    async fn evict_static_member(&self, instance_id: &str) -> Result<Vec<String>, LogError> {
        self.evicted.lock().push(instance_id.to_owned());
        self.log.evict_static_member(instance_id).await
    }
}

/// Partitions of the task store's group held per node.
fn holdings(log: &EmbeddedLog) -> Vec<(String, usize)> {
    log.group_view(TASK_STORE_GROUP)
        .map(|view| {
            view.members
                .into_iter()
                .map(|(_, instance, held)| (instance.unwrap_or_default(), held.len()))
                .collect()
        })
        .unwrap_or_default()
}

fn wait_until(what: &str, timeout: Duration, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How many times the Jobs have been listed (each autoscaling round lists them once).
fn job_lists(kube: &FakeKube) -> usize {
    kube.requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path == JOBS && !r.query.contains("watch"))
        .count()
}

fn metric(node: &RunningNode, line_start: &str) -> Option<String> {
    let text = http::get(&format!("{}/metrics", node.url()))?;
    text.lines()
        .find(|l| l.starts_with(line_start))
        .map(|l| l.rsplit(' ').next().unwrap_or_default().to_owned())
}

/// Just enough HTTP for these tests, without an async runtime of their own.
mod http {
    pub fn get(url: &str) -> Option<String> {
        call("GET", url, None)
    }

    pub fn post(url: &str, body: &serde_json::Value) -> Option<String> {
        call("POST", url, Some(body))
    }

    fn call(method: &str, url: &str, body: Option<&serde_json::Value>) -> Option<String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        runtime.block_on(async {
            let client = reqwest::Client::builder().no_proxy().build().ok()?;
            let mut request = client.request(method.parse().ok()?, url);
            if let Some(body) = body {
                request = request
                    .header("content-type", "application/json")
                    .body(body.to_string());
            }
            let response = request.send().await.ok()?;
            response.text().await.ok()
        })
    }
}

#[test]
fn a_lost_peers_partitions_move_as_soon_as_its_pod_is_deleted() {
    let kube = FakeKube::start().unwrap();
    // ws-2 is a peer's pod whose node never starts: its deletion shows when the survivor
    // has acted on what the API said after ws-1's loss.
    for id in ["ws-0", "ws-1", "ws-2"] {
        kube.apply(PODS, pod(id));
    }
    let log = EmbeddedLog::new();
    let evicted = Arc::new(Mutex::new(Vec::new()));
    let noting = NotingEvictions {
        log: log.clone(),
        evicted: evicted.clone(),
    };
    let templates = Arc::new(JobTemplates::default());
    let survivor = node_on(Arc::new(noting), &kube, "ws-0", templates.clone());
    let lost = node(&log, &kube, "ws-1", templates);
    wait_until(
        "both nodes to hold task shards",
        Duration::from_secs(30),
        || {
            let h = holdings(&log);
            h.len() == 2 && h.iter().all(|(_, n)| *n == 2)
        },
    );
    // ws-1's machine vanishes: no drain, no leave. Its session would keep its shards for
    // two minutes.
    lost.kill();
    // The survivor hears of a loss that came after ws-1's (its peer watch delivers in the
    // API's order) and acts on it; ws-1's shards have stayed where they were.
    kube.remove(PODS, "ws-2");
    wait_until(
        "ws-0 to act on ws-2's deletion",
        Duration::from_secs(30),
        || evicted.lock().contains(&"ws-2".to_owned()),
    );
    assert_eq!(
        *evicted.lock(),
        ["ws-2"],
        "only the peer the API said was lost"
    );
    assert!(
        holdings(&log).iter().any(|(id, n)| id == "ws-1" && *n == 2),
        "moved before the API said anything"
    );
    let deleted = Instant::now();
    kube.remove(PODS, "ws-1");
    wait_until(
        "ws-0 to hold every task shard",
        Duration::from_secs(30),
        || holdings(&log) == [("ws-0".to_owned(), 4)],
    );
    eprintln!(
        "task shards moved {:?} after the pod's deletion",
        deleted.elapsed()
    );
    // And the survivor serves them.
    wait_until(
        "ws-0 to report 4 task shards",
        Duration::from_secs(30),
        || {
            http::get(&format!("{}/task-store/shards", survivor.url()))
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .and_then(|v| v["serving"].as_array().map(Vec::len))
                == Some(4)
        },
    );
    survivor.stop().unwrap();
}

#[test]
fn the_leader_starts_worker_jobs_for_a_backlog_and_hands_over_when_it_drains() {
    let kube = FakeKube::start().unwrap();
    for id in ["ws-0", "ws-1"] {
        kube.apply(PODS, pod(id));
    }
    // The operator's template, as the ConfigMap mounts it.
    let dir = std::env::temp_dir().join(format!("wellspring-templates-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("plate-worker.yaml"),
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: plate-worker\nspec:\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n        - name: worker\n          image: lab/plate-worker:1\n          args: [\"--exit-when-empty\"]\n",
    )
    .unwrap();
    let templates = Arc::new(JobTemplates::load(&dir).unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(templates.names(), ["plate-worker"]);

    let log = EmbeddedLog::new();
    let mut nodes = vec![
        node(&log, &kube, "ws-0", templates.clone()),
        node(&log, &kube, "ws-1", templates),
    ];
    wait_until("a leader", Duration::from_secs(30), || {
        nodes
            .iter()
            .filter(|n| metric(n, "wellspring_leader{").as_deref() == Some("1"))
            .count()
            == 1
    });
    let base = nodes[0].url();
    let group = json!({"name": "plate features", "worker-job": "plate-worker",
                       "autoscaling": {"tasks-per-worker": 2, "min-workers": 0, "max-workers": 4}});
    assert!(http::post(&format!("{base}/groups"), &group).is_some());
    for i in 0..5 {
        let task = json!({"cmd": ["features", format!("plate-{i}")], "group": "plate features"});
        wait_until("the task accepted", Duration::from_secs(30), || {
            http::post(&format!("{base}/tasks"), &task).is_some_and(|t| t.contains("\"id\""))
        });
    }
    // Five tasks at two per worker: three workers, made from the template.
    wait_until("three worker Jobs", Duration::from_secs(30), || {
        kube.list(JOBS).len() == 3
    });
    for job in kube.list(JOBS) {
        let env = job["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
        assert!(
            env.contains("plate features") && env.contains("http://wellspring.lab.svc:8080"),
            "{env}"
        );
    }

    // The leader drains; the other node leads and keeps the count (no second set).
    let leader = nodes
        .iter()
        .position(|n| metric(n, "wellspring_leader{").as_deref() == Some("1"))
        .unwrap();
    nodes.remove(leader).stop().unwrap();
    wait_until("the other node to lead", Duration::from_secs(10), || {
        metric(&nodes[0], "wellspring_leader{").as_deref() == Some("1")
    });
    // A round lists the Jobs before it creates any: once the new leader has listed them
    // twice, at least one whole round of its own has decided, and the API shows it.
    let rounds_before = job_lists(&kube);
    wait_until(
        "two autoscaling rounds of the new leader",
        Duration::from_secs(30),
        || job_lists(&kube) >= rounds_before + 2,
    );
    assert_eq!(kube.list(JOBS).len(), 3);
    nodes.pop().unwrap().stop().unwrap();
}
