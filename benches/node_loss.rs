//! Node loss with and without the Kubernetes integration: two nodes share the task
//! store's shards on the embedded log; one is killed (no drain, no leave), and this
//! measures the time until the survivor holds every shard, (a) when only the consumer
//! group's session timeout notices, (b) when the Kubernetes API (served on loopback by
//! `wellspring-fake-kube`) reports the pod deleted at the moment of the kill and the
//! survivor evicts the lost member at once.
//!
//! Run: `cargo bench --bench node_loss` (`-- --rounds N`, default 3; `--session-timeout
//! S`, default 10s).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use wellspring_fake_kube::FakeKube;
use wellspring_kube::{KubeSettings, LeaseSettings};
use wellspring_log::{EmbeddedLog, Log};
use wellspring_nodes::run::{RunOptions, RunningNode, start};
use wellspring_protocol::duration;

const PODS: &str = "/api/v1/namespaces/lab/pods";
const GROUP: &str = "wellspring.task-store";

fn flag(name: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != name).nth(1)
}

fn node(log: &EmbeddedLog, kube: &FakeKube, id: &str, session: Duration) -> RunningNode {
    let mut lease = LeaseSettings::new("wellspring-leader", id);
    lease.retry_period = Duration::from_millis(500);
    let mut options = RunOptions::new("127.0.0.1:0".parse().expect("an address"));
    options.node_id = id.into();
    options.task_partitions = 8;
    options.session_timeout = session;
    options.kube = Some(KubeSettings {
        lease,
        peer_selector: "app.kubernetes.io/name=wellspring".into(),
        ..KubeSettings::new(Some(kube.url()), "lab", id)
    });
    match start(options, Some(Arc::new(log.clone()) as Arc<dyn Log>)) {
        Ok(node) => node,
        Err(e) => panic!("cannot start node {id}: {e}"),
    }
}

fn held_by(log: &EmbeddedLog, id: &str) -> usize {
    log.group_view(GROUP).map_or(0, |view| {
        view.members
            .iter()
            .filter(|(_, instance, _)| instance.as_deref() == Some(id))
            .map(|(_, _, held)| held.len())
            .sum()
    })
}

fn wait(what: &str, timeout: Duration, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One loss; answers the time until the survivor holds all 8 shards.
fn round(session: Duration, report_pod_deleted: bool) -> Duration {
    let kube = FakeKube::start().expect("the fake API");
    for id in ["ws-0", "ws-1"] {
        kube.apply(
            PODS,
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": id, "labels": {"app.kubernetes.io/name": "wellspring"}}}),
        );
    }
    let log = EmbeddedLog::new();
    let survivor = node(&log, &kube, "ws-0", session);
    let lost = node(&log, &kube, "ws-1", session);
    wait("both nodes hold shards", Duration::from_secs(60), || {
        held_by(&log, "ws-0") == 4 && held_by(&log, "ws-1") == 4
    });
    // Let the peer watch settle on both pods before the loss.
    std::thread::sleep(Duration::from_millis(500));
    lost.kill();
    let killed = Instant::now();
    if report_pod_deleted {
        kube.remove(PODS, "ws-1");
    }
    wait("the survivor holds every shard", session * 4, || {
        held_by(&log, "ws-0") == 8
    });
    let took = killed.elapsed();
    let _ = survivor.stop();
    took
}

fn main() {
    let rounds: usize = flag("--rounds").and_then(|r| r.parse().ok()).unwrap_or(3);
    let session = flag("--session-timeout")
        .and_then(|s| duration::parse_text(&s).ok())
        .unwrap_or(Duration::from_secs(10));
    println!(
        "node loss, 2 nodes, 8 task-store shards, session timeout {session:?}, {rounds} rounds"
    );
    for (label, report) in [
        ("session timeout only", false),
        ("pod deleted, evicted at once", true),
    ] {
        let mut times: Vec<Duration> = (0..rounds).map(|_| round(session, report)).collect();
        times.sort();
        println!(
            "  {label:<30} median {:>8.3} s  (min {:.3} s, max {:.3} s)",
            times[times.len() / 2].as_secs_f64(),
            times[0].as_secs_f64(),
            times[times.len() - 1].as_secs_f64()
        );
    }
}
