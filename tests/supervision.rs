//! The supervision tree: restart with exponential back-off, a spent budget escalates, and
//! the top of a node keeps its other children running. Runs in virtual time (a paused
//! tokio clock), so back-off delays are checked exactly.
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

/// A child that fails `failures` times (right after it starts), then stays up.
struct Flaky {
    link: ChildLink,
    starts: Arc<Mutex<Vec<Instant>>>,
    failures: usize,
    exit: Exit,
}

impl Actor for Flaky {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let mut starts = self.starts.lock();
        starts.push(Instant::now());
        if starts.len() <= self.failures {
            self.exit = Exit::Failed(format!("failure {}", starts.len()));
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

fn flaky(name: &str, failures: usize, starts: Arc<Mutex<Vec<Instant>>>) -> ChildSpec {
    ChildSpec::new(name, move |link| {
        Ok(Flaky {
            link,
            starts: starts.clone(),
            failures,
            exit: Exit::Normal,
        }
        .start()
        .recipient())
    })
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

#[test]
fn a_failing_child_is_restarted_with_exponential_backoff() {
    virtual_time_system().block_on(async {
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
        .with_child(flaky("stage", 2, starts.clone()))
        .start();
        settle().await;
        let offsets: Vec<Duration> = starts.lock().iter().map(|t| *t - t0).collect();
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
        assert!(reports.lock().is_empty(), "nothing escalated");
    });
}

#[test]
fn a_spent_restart_budget_escalates_to_the_parent() {
    virtual_time_system().block_on(async {
        let starts = Arc::new(Mutex::new(Vec::new()));
        let sibling_starts = Arc::new(Mutex::new(Vec::new()));
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
        .with_child(flaky("broken", usize::MAX, starts.clone()))
        .with_child(flaky("healthy", 0, sibling_starts.clone()))
        .start();
        settle().await;
        let offsets: Vec<Duration> = starts.lock().iter().map(|t| *t - t0).collect();
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
        let reports = reports.lock();
        assert_eq!(reports.len(), 1, "the supervisor failed upward once");
        match &reports[0].exit {
            Exit::Failed(why) => assert!(why.contains("broken failed 4 times"), "{why}"),
            Exit::Normal => panic!("escalation must report a failure"),
        }
        assert!(matches!(
            health.snapshot().get("dag/broken"),
            Some(ComponentState::Failed(_))
        ));
        // Escalating stopped the healthy sibling too (the parent decides what happens next).
        assert_eq!(
            health.snapshot().get("dag/healthy"),
            Some(&ComponentState::Stopped)
        );
    });
}

#[test]
fn the_top_of_a_node_keeps_other_children_running_when_one_fails_for_good() {
    virtual_time_system().block_on(async {
        let broken = Arc::new(Mutex::new(Vec::new()));
        let healthy = Arc::new(Mutex::new(Vec::new()));
        let health = Health::default();
        let supervisor = Supervisor::new(
            "node",
            policy(),
            ChildLink::detached("node"),
            health.clone(),
        )
        .without_escalation()
        .with_child(flaky("dag-a", usize::MAX, broken.clone()))
        .with_child(flaky("dag-b", 0, healthy.clone()))
        .start();
        settle().await;
        assert_eq!(broken.lock().len(), 4);
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
        assert!(supervisor.connected(), "the node supervisor is still up");
    });
}
