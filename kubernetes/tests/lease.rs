//! Leader election against a Kubernetes API on loopback that enforces resourceVersion
//! conflicts as the real one does.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use parking_lot::Mutex;
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;
use wellspring_fake_kube::FakeKube;
use wellspring_kube::{LeaderElector, LeaseSettings};

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/lab/leases";

fn client(kube: &FakeKube) -> kube::Client {
    let config = kube::Config::new(kube.url().parse().expect("the fake's URL"));
    kube::Client::try_from(config).expect("a client")
}

fn settings(identity: &str, duration: Duration) -> LeaseSettings {
    let mut s = LeaseSettings::new("wellspring-leader", identity);
    s.duration = duration;
    s.renew_deadline = duration * 2 / 3;
    s.retry_period = Duration::from_millis(100);
    s
}

fn elector(kube: &FakeKube, identity: &str, duration: Duration) -> LeaderElector {
    LeaderElector::new(
        Api::<Lease>::namespaced(client(kube), "lab"),
        settings(identity, duration),
    )
}

fn holder(kube: &FakeKube) -> Option<String> {
    kube.get(LEASES, "wellspring-leader")?["spec"]["holderIdentity"]
        .as_str()
        .map(str::to_owned)
}

/// Who led when, as each elector saw it change.
#[derive(Clone, Default)]
struct Timeline(Arc<Mutex<Vec<(String, bool, Instant)>>>);

impl Timeline {
    fn follow(&self, who: &str, mut leadership: watch::Receiver<bool>) {
        let (timeline, who) = (self.clone(), who.to_owned());
        tokio::spawn(async move {
            while leadership.changed().await.is_ok() {
                let leads = *leadership.borrow_and_update();
                timeline.0.lock().push((who.clone(), leads, Instant::now()));
            }
        });
    }

    /// Never two leaders at once.
    fn assert_one_leader_at_a_time(&self) {
        let mut leading: Vec<String> = Vec::new();
        let events = self.0.lock().clone();
        for (who, leads, _) in &events {
            if *leads {
                assert!(
                    leading.is_empty(),
                    "{who} led while {leading:?} did: {events:?}"
                );
                leading.push(who.clone());
            } else {
                leading.retain(|w| w != who);
            }
        }
    }

    fn when(&self, who: &str, leads: bool) -> Option<Instant> {
        self.0
            .lock()
            .iter()
            .find(|(w, l, _)| w == who && *l == leads)
            .map(|(_, _, at)| *at)
    }
}

async fn wait_for(what: &str, timeout: Duration, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_many_nodes_racing_for_a_free_lease_exactly_one_wins() {
    let kube = FakeKube::start().expect("the fake API");
    let mut electors: Vec<LeaderElector> = (0..8)
        .map(|i| elector(&kube, &format!("ws-{i}"), Duration::from_secs(30)))
        .collect();
    let mut conflicts = 0;
    for round in 0..15 {
        // Free the Lease (as a released one is), then everyone tries at once.
        kube.apply(
            LEASES,
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                   "metadata": {"name": "wellspring-leader"},
                   "spec": {"leaseDurationSeconds": 1, "leaseTransitions": round}}),
        );
        kube.clear_requests();
        let attempts = electors.iter_mut().map(|e| e.try_acquire_or_renew());
        let results = futures::future::join_all(attempts).await;
        let winners: Vec<usize> = results
            .iter()
            .enumerate()
            .filter(|(_, r)| matches!(r, Ok(true)))
            .map(|(i, _)| i)
            .collect();
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert_eq!(
            winners.len(),
            1,
            "round {round}: {winners:?} all think they lead"
        );
        assert_eq!(holder(&kube), Some(format!("ws-{}", winners[0])));
        conflicts += kube
            .requests()
            .iter()
            .filter(|r| r.method == "PUT" && r.status == 409)
            .count();
    }
    // The API's refusals are what settled it (not luck in the order of the calls).
    assert!(conflicts > 0, "no update was ever refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_lease_stays_and_an_abandoned_one_is_taken_after_its_duration() {
    let kube = FakeKube::start().expect("the fake API");
    let duration = Duration::from_secs(2);
    let mut a = elector(&kube, "ws-0", duration);
    let mut b = elector(&kube, "ws-1", duration);
    assert!(a.try_acquire_or_renew().await.expect("acquire"));
    // While a renews, b never gets it, however long it tries.
    let start = Instant::now();
    let mut abandoned = start;
    while start.elapsed() < duration * 2 {
        assert!(a.try_acquire_or_renew().await.expect("renew"));
        abandoned = Instant::now();
        assert!(!b.try_acquire_or_renew().await.expect("try"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // a stops renewing after its last renewal (its node crashed): b takes over, but not
    // before the Lease ran out as b's own clock measures it.
    let mut taken = None;
    while taken.is_none() {
        if b.try_acquire_or_renew().await.expect("try") {
            taken = Some(abandoned.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            abandoned.elapsed() < duration * 5,
            "b never took the abandoned Lease"
        );
    }
    assert!(
        taken.is_some_and(|t| t >= duration),
        "taken after {taken:?}"
    );
    let lease = kube.get(LEASES, "wellspring-leader").expect("the Lease");
    assert_eq!(lease["spec"]["holderIdentity"], "ws-1");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
    // a, back, finds it taken.
    assert!(!a.try_acquire_or_renew().await.expect("try"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_leader_hands_over_without_waiting_for_its_lease_to_expire() {
    let kube = FakeKube::start().expect("the fake API");
    // An hour: a hand-over by expiry could not happen within the waits below.
    let duration = Duration::from_secs(3600);
    let timeline = Timeline::default();
    let a = elector(&kube, "ws-0", duration);
    timeline.follow("ws-0", a.leadership());
    let (stop_a, a_stopped) = watch::channel(false);
    let a_running = tokio::spawn(a.run(a_stopped));
    wait_for("ws-0 to lead", Duration::from_secs(10), || {
        holder(&kube).as_deref() == Some("ws-0")
    })
    .await;
    let b = elector(&kube, "ws-1", duration);
    timeline.follow("ws-1", b.leadership());
    let (stop_b, b_stopped) = watch::channel(false);
    let b_running = tokio::spawn(b.run(b_stopped));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        timeline.when("ws-1", true),
        None,
        "ws-1 led while ws-0 renewed"
    );

    stop_a.send(true).expect("a runs");
    a_running.await.expect("a stopped");
    wait_for("ws-1 to lead", Duration::from_secs(10), || {
        timeline.when("ws-1", true).is_some()
    })
    .await;
    let took_over = timeline.when("ws-1", true).expect("ws-1 leads");
    let a_stepped_down = timeline.when("ws-0", false).expect("ws-0 stepped down");
    assert!(
        a_stepped_down <= took_over,
        "ws-1 led before ws-0 stepped down"
    );
    assert_eq!(holder(&kube).as_deref(), Some("ws-1"));
    stop_b.send(true).expect("b runs");
    b_running.await.expect("b stopped");
    timeline.assert_one_leader_at_a_time();
    // b released too: the Lease has no holder.
    assert_eq!(holder(&kube), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_api_steps_down_before_another_can_take_over() {
    let kube = FakeKube::start().expect("the fake API");
    let duration = Duration::from_secs(3);
    let timeline = Timeline::default();
    let a = elector(&kube, "ws-0", duration);
    timeline.follow("ws-0", a.leadership());
    let (_stop_a, a_stopped) = watch::channel(false);
    let _a = tokio::spawn(a.run(a_stopped));
    wait_for("ws-0 to lead", Duration::from_secs(10), || {
        timeline.when("ws-0", true).is_some()
    })
    .await;
    let b = elector(&kube, "ws-1", duration);
    timeline.follow("ws-1", b.leadership());
    let (_stop_b, b_stopped) = watch::channel(false);
    let _b = tokio::spawn(b.run(b_stopped));

    // The API goes away for everyone: ws-0 cannot renew and must stop acting as leader
    // within its renew deadline, before its Lease could expire for anyone else.
    let cut = Instant::now();
    kube.set_unavailable(true);
    wait_for("ws-0 to step down", Duration::from_secs(10), || {
        timeline.when("ws-0", false).is_some()
    })
    .await;
    let stepped_down = timeline.when("ws-0", false).expect("stepped down");
    assert!(
        stepped_down.duration_since(cut) < duration,
        "led on past its Lease"
    );
    kube.set_unavailable(false);
    // Someone leads again once the API is back (ws-0 renews its own Lease if it gets
    // there first; ws-1 waits for it to expire).
    wait_for("a leader again", Duration::from_secs(20), || {
        holder(&kube).is_some()
            && (timeline.when("ws-1", true).is_some()
                || timeline
                    .0
                    .lock()
                    .iter()
                    .filter(|(w, l, _)| w == "ws-0" && *l)
                    .count()
                    == 2)
    })
    .await;
    timeline.assert_one_leader_at_a_time();
}
