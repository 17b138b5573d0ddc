//! The supervision tree: restart with exponential back-off, a spent budget escalates, and
//! the top of a node keeps its other children running; a failure no restart mends is not
//! restarted at all. Runs in virtual time (a paused tokio clock), so back-off delays are
//! checked exactly.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use parking_lot::Mutex;
use tokio::time::Instant;
use wellspring_actors::supervision::{
    ChildExited, ChildLink, ChildSpec, ComponentState, Exit, Health, RestartPolicy, StopChild,
    Supervisor,
};

/// A child that fails `failures` times (right after it starts), then stays up; each
/// failure one a restart may mend, unless `unrecoverable`.
struct Flaky {
    link: ChildLink,
    starts: Arc<Mutex<Vec<Instant>>>,
    failures: usize,
    unrecoverable: bool,
    exit: Exit,
}

impl Actor for Flaky {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let mut starts = self.starts.lock();
        starts.push(Instant::now());
        if starts.len() <= self.failures {
            let reason = format!("failure {}", starts.len());
            self.exit = Exit::failure(reason, !self.unrecoverable);
            ctx.stop();
        }
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.link.report(self.exit.clone());
    }
}

impl Handler<StopChild> for Flaky {
    type Result = ();
    fn handle(&mut self, _: StopChild, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

fn child(
    name: &str,
    failures: usize,
    unrecoverable: bool,
    starts: Arc<Mutex<Vec<Instant>>>,
) -> ChildSpec {
    ChildSpec::new(name, move |link| {
        Ok(Flaky {
            link,
            starts: starts.clone(),
            failures,
            unrecoverable,
            exit: Exit::Normal,
        }
        .start()
        .recipient())
    })
}

fn flaky(name: &str, failures: usize, starts: Arc<Mutex<Vec<Instant>>>) -> ChildSpec {
    child(name, failures, false, starts)
}

/// A child whose first start fails in a way no restart mends.
fn unrecoverable(name: &str, starts: Arc<Mutex<Vec<Instant>>>) -> ChildSpec {
    child(name, 1, true, starts)
}

/// Records what a supervisor reports upward.
struct Parent(Arc<Mutex<Vec<ChildExited>>>);

impl Actor for Parent {
    type Context = Context<Self>;
}

impl Handler<ChildExited> for Parent {
    type Result = ();
    fn handle(&mut self, msg: ChildExited, _: &mut Self::Context) {
        self.0.lock().push(msg);
    }
}

fn policy() -> RestartPolicy {
    RestartPolicy {
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(10),
        multiplier: 2.0,
        max_restarts: 3,
        window: Duration::from_secs(60),
    }
}

fn virtual_time_system() -> actix_rt::SystemRunner {
    actix_rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
    })
}

async fn settle() {
    // Virtual time: this advances the clock as far as the actors need.
    tokio::time::sleep(Duration::from_secs(30)).await;
}

/// A DAG supervisor of `broken` (or not so broken) and a child that stays up, under a parent that records
/// what the supervisor reports: runs until everything settled, and answers `broken`'s
/// starts (since the supervisor started), the reports and the health.
async fn under_a_dag(
    broken: impl FnOnce(Arc<Mutex<Vec<Instant>>>) -> ChildSpec,
) -> (Vec<Duration>, Vec<ChildExited>, Health) {
    let starts = Arc::new(Mutex::new(Vec::new()));
    let reports = Arc::new(Mutex::new(Vec::new()));
    let parent = Parent(reports.clone()).start();
    let health = Health::default();
    let t0 = Instant::now();
    let _supervisor = Supervisor::new(
        "dag",
        policy(),
        ChildLink::to("dag", parent.recipient()),
        health.clone(),
    )
    .with_child(broken(starts.clone()))
    .with_child(flaky("healthy", 0, Arc::new(Mutex::new(Vec::new()))))
    .start();
    settle().await;
    let offsets = starts.lock().iter().map(|t| *t - t0).collect();
    let reports = reports.lock().clone();
    (offsets, reports, health)
}

#[test]
fn a_failing_child_is_restarted_with_exponential_backoff() {
    virtual_time_system().block_on(async {
        let (offsets, reports, health) = under_a_dag(|starts| flaky("stage", 2, starts)).await;
        // Fails at once twice: restarted after 100 ms, then after 200 ms more.
        assert_eq!(
            offsets,
            vec![
                Duration::ZERO,
                Duration::from_millis(100),
                Duration::from_millis(300)
            ]
        );
        assert_eq!(
            health.snapshot().get("dag/stage"),
            Some(&ComponentState::Running)
        );
        assert!(reports.is_empty(), "nothing escalated");
    });
}

/// The top of a node (no escalation) with `broken` and a child that stays up: answers
/// how often `broken` started, the health, and whether the top is still up.
async fn at_the_top(
    broken: impl FnOnce(Arc<Mutex<Vec<Instant>>>) -> ChildSpec,
) -> (usize, Health, bool) {
    let starts = Arc::new(Mutex::new(Vec::new()));
    let health = Health::default();
    let supervisor = Supervisor::new(
        "node",
        policy(),
        ChildLink::detached("node"),
        health.clone(),
    )
    .without_escalation()
    .with_child(broken(starts.clone()))
    .with_child(flaky("dag-b", 0, Arc::new(Mutex::new(Vec::new()))))
    .start();
    settle().await;
    let started = starts.lock().len();
    (started, health, supervisor.connected())
}

/// Checks that the DAG supervisor escalated `broken`'s failure once, marking it failed
/// and stopping its healthy sibling (the parent decides what happens next); answers how
/// the supervisor ended.
fn escalated<'a>(reports: &'a [ChildExited], health: &Health, broken: &str) -> &'a Exit {
    assert_eq!(reports.len(), 1, "the supervisor failed upward once");
    assert!(matches!(
        health.snapshot().get(&format!("dag/{broken}")),
        Some(ComponentState::Failed(_))
    ));
    assert_eq!(
        health.snapshot().get("dag/healthy"),
        Some(&ComponentState::Stopped)
    );
    &reports[0].exit
}

#[test]
fn a_spent_restart_budget_escalates_to_the_parent() {
    virtual_time_system().block_on(async {
        let (offsets, reports, health) =
            under_a_dag(|starts| flaky("broken", usize::MAX, starts)).await;
        // 3 restarts (100, 200, 400 ms apart), then the 4th failure spends the budget.
        assert_eq!(
            offsets,
            vec![
                Duration::ZERO,
                Duration::from_millis(100),
                Duration::from_millis(300),
                Duration::from_millis(700)
            ]
        );
        match escalated(&reports, &health, "broken") {
            Exit::Failed(why) => assert!(why.contains("broken failed 4 times"), "{why}"),
            other => panic!("escalation must report a failure a restart may mend: {other:?}"),
        }
    });
}

#[test]
fn the_top_of_a_node_keeps_other_children_running_when_one_fails_for_good() {
    virtual_time_system().block_on(async {
        let (started, health, up) = at_the_top(|starts| flaky("dag-a", usize::MAX, starts)).await;
        assert_eq!(started, 4);
        assert!(matches!(
            health.snapshot().get("node/dag-a"),
            Some(ComponentState::GaveUp(_))
        ));
        assert_eq!(
            health.gave_up().len(),
            1,
            "liveness fails: a restart may help"
        );
        assert_eq!(
            health.snapshot().get("node/dag-b"),
            Some(&ComponentState::Running)
        );
        assert_eq!(health.failed().len(), 1);
        assert!(up, "the node supervisor is still up");
    });
}

#[test]
fn a_failure_no_restart_mends_escalates_at_once() {
    virtual_time_system().block_on(async {
        let (offsets, reports, health) = under_a_dag(|starts| unrecoverable("gone", starts)).await;
        assert_eq!(
            offsets.len(),
            1,
            "not restarted: the budget does not matter"
        );
        match escalated(&reports, &health, "gone") {
            // Its own supervisor must not restart it either.
            Exit::Unrecoverable(why) => {
                assert!(
                    why.contains("gone failed, and no restart can mend it"),
                    "{why}"
                )
            }
            other => panic!("the failure must stay unrecoverable upward: {other:?}"),
        }
    });
}

#[test]
fn the_top_of_a_node_gives_up_at_once_on_a_failure_no_restart_mends() {
    virtual_time_system().block_on(async {
        let (started, health, up) = at_the_top(|starts| unrecoverable("dag-a", starts)).await;
        assert_eq!(started, 1);
        assert!(matches!(
            health.snapshot().get("node/dag-a"),
            Some(ComponentState::GaveUp(why)) if why.contains("failure 1")
        ));
        assert_eq!(
            health.snapshot().get("node/dag-b"),
            Some(&ComponentState::Running)
        );
        assert!(up, "the node supervisor is still up");
    });
}
