//! The peer watch against a Kubernetes API on loopback: a peer's pod deleted, or marked
//! for deletion because its node is gone, reaches the node at once.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use serde_json::json;
use wellspring_fake_kube::FakeKube;
use wellspring_kube::{Integration, KubeSettings, PeerLoss};

const PODS: &str = "/api/v1/namespaces/lab/pods";

#[derive(Clone, Default)]
struct Lost(Arc<Mutex<Vec<(String, String)>>>);

#[async_trait]
impl PeerLoss for Lost {
    async fn peer_lost(&self, pod: &str, reason: &str) {
        self.0.lock().push((pod.to_owned(), reason.to_owned()));
    }
}

impl Lost {
    fn names(&self) -> Vec<String> {
        self.0.lock().iter().map(|(p, _)| p.clone()).collect()
    }
}

fn pod(name: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "wellspring"}},
           "spec": {"containers": [{"name": "wellspring", "image": "wellspring"}]},
           "status": {"phase": "Running"}})
}

/// Node ws-0 with the integration on, once its peer watch has listed the pods.
async fn watching(kube: &FakeKube) -> (Lost, Integration) {
    let settings = KubeSettings {
        peer_selector: "app.kubernetes.io/name=wellspring".into(),
        ..KubeSettings::new(Some(kube.url()), "lab", "ws-0")
    };
    let lost = Lost::default();
    let client = wellspring_kube::connect(&settings).await.expect("a client");
    let node = Integration::start(client, settings, Arc::new(NoDemand), Arc::new(lost.clone()));
    assert!(kube.wait_until(Duration::from_secs(10), |k| {
        k.requests()
            .iter()
            .any(|r| r.path == PODS && r.query.contains("watch=true"))
    }));
    (lost, node)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_peer_is_acted_on_once_and_a_healthy_or_unrelated_pod_never() {
    let kube = FakeKube::start().expect("the fake API");
    for name in ["ws-0", "ws-1", "ws-2", "ws-3"] {
        kube.apply(PODS, pod(name));
    }
    let mut other = pod("postgres-0");
    other["metadata"]["labels"] = json!({"app": "postgres"});
    kube.apply(PODS, other);
    let (lost, node) = watching(&kube).await;

    // ws-1's node vanishes: the pod garbage collector marks it, then deletes it.
    let mut gone = kube.get(PODS, "ws-1").expect("ws-1");
    gone["status"]["conditions"] = json!([{"type": "DisruptionTarget", "status": "True",
        "reason": "DeletionByPodGC", "message": "PodGC: node no longer exists"}]);
    kube.apply(PODS, gone);
    assert!(
        wait(|| lost.names() == ["ws-1"]).await,
        "{:?}",
        lost.0.lock()
    );
    assert!(lost.0.lock()[0].1.contains("DeletionByPodGC"));
    kube.remove(PODS, "ws-1");

    // ws-2 is deleted outright; an unrelated pod too; and this node's own pod is updated.
    kube.remove(PODS, "postgres-0");
    kube.remove(PODS, "ws-2");
    let mut me = kube.get(PODS, "ws-0").expect("ws-0");
    me["status"]["phase"] = json!("Running");
    me["metadata"]["labels"]["touched"] = json!("yes");
    kube.apply(PODS, me);
    // Then ws-3 goes: the watch handles its events in order, so once ws-3 is reported,
    // every change above has been handled too.
    kube.remove(PODS, "ws-3");
    assert!(
        wait(|| lost.names().contains(&"ws-3".to_owned())).await,
        "{:?}",
        lost.0.lock()
    );
    assert_eq!(
        lost.names(),
        ["ws-1", "ws-2", "ws-3"],
        "once each, and only peers"
    );

    // The StatefulSet brings ws-2 back (a new incarnation); losing it again counts again.
    kube.apply(PODS, pod("ws-2"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    kube.remove(PODS, "ws-2");
    assert!(
        wait(|| lost.names().len() == 4).await,
        "{:?}",
        lost.0.lock()
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_deleted_while_the_watch_was_down_is_found_on_the_relist() {
    let kube = FakeKube::start().expect("the fake API");
    // Keep so little history that a watch resumed after the gap must relist.
    kube.set_history_limit(2);
    for name in ["ws-0", "ws-1"] {
        kube.apply(PODS, pod(name));
    }
    let (lost, node) = watching(&kube).await;
    kube.set_unavailable(true);
    // The open watch ends with the outage; meanwhile ws-1 goes and other pods churn.
    kube.remove(PODS, "ws-1");
    for i in 0..5 {
        kube.apply(PODS, pod(&format!("other-{i}")));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    kube.set_unavailable(false);
    assert!(
        wait(|| lost.names() == ["ws-1"]).await,
        "{:?}",
        lost.0.lock()
    );
    node.stop().await;
}

struct NoDemand;

#[async_trait]
impl wellspring_kube::WorkerDemand for NoDemand {
    async fn demands(
        &self,
    ) -> Result<Vec<wellspring_kube::GroupDemand>, wellspring_kube::DemandError> {
        Ok(Vec::new())
    }
}

async fn wait(condition: impl Fn() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !condition() {
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}
