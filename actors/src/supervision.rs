//! Supervision: restart with exponential back-off within a budget, escalate when the
//! budget is spent.
//!
//! The tree is node → DAG → one supervisor per DAG node (the stage actor, which
//! supervises its shard actors itself because restarting a shard means restoring its
//! state and rewinding its partition) → shard actors. [`Supervisor`] is the generic
//! supervisor for the upper levels; [`RestartTracker`] is the policy both use.
//!
//! A child tells its supervisor it ended through its [`ChildLink`] (from `stopped`). A
//! failed child is restarted after a back-off that doubles with each failure inside the
//! budget window; more failures than the budget allows inside the window escalate: the
//! supervisor stops its other children and fails itself, so its own supervisor decides.
//! At the top, a spent budget marks the component failed in [`Health`], and the node
//! reports not-ready instead of dying.
//!
//! A child that fails in a way no restart mends ([`Exit::Unrecoverable`]: a topic that
//! is gone, a partition that does not exist) is not restarted: its supervisor escalates
//! at once, and the top gives up on it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use parking_lot::Mutex;
use tokio::time::Instant;
use wellspring_log::LogError;

/// How a supervisor restarts failed children.
#[derive(Debug, Clone, PartialEq)]
pub struct RestartPolicy {
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub multiplier: f64,
    /// At most this many restarts within `window`; one more escalates.
    pub max_restarts: u32,
    pub window: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            multiplier: 2.0,
            max_restarts: 5,
            window: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartDecision {
    RestartAfter(Duration),
    /// The budget is spent: `failures` within the window.
    Escalate {
        failures: u32,
    },
}

/// Failure history of one child under a [`RestartPolicy`].
#[derive(Debug, Clone)]
pub struct RestartTracker {
    policy: RestartPolicy,
    failures: VecDeque<Instant>,
}

impl RestartTracker {
    pub fn new(policy: RestartPolicy) -> Self {
        Self {
            policy,
            failures: VecDeque::new(),
        }
    }

    pub fn on_failure(&mut self, now: Instant) -> RestartDecision {
        while self
            .failures
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.policy.window)
        {
            self.failures.pop_front();
        }
        self.failures.push_back(now);
        let failures = self.failures.len() as u32;
        if failures > self.policy.max_restarts {
            return RestartDecision::Escalate { failures };
        }
        let factor = self.policy.multiplier.powi(failures as i32 - 1);
        let backoff = self
            .policy
            .initial_backoff
            .mul_f64(factor)
            .min(self.policy.max_backoff);
        RestartDecision::RestartAfter(backoff)
    }
}

/// How a component is doing, for health reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ComponentState {
    Starting,
    Running,
    Restarting {
        failures: u32,
        reason: String,
    },
    /// Failed, and escalated: its supervisor decides what happens next.
    Failed(String),
    /// Failed for good: nothing restarts it while the process lives.
    GaveUp(String),
    Stopped,
}

/// The state of every supervised component of a node, by path (`dag/node`).
#[derive(Debug, Clone, Default)]
pub struct Health {
    components: Arc<Mutex<BTreeMap<String, ComponentState>>>,
}

impl Health {
    pub fn set(&self, component: &str, state: ComponentState) {
        self.components.lock().insert(component.to_owned(), state);
    }

    pub fn snapshot(&self) -> BTreeMap<String, ComponentState> {
        self.components.lock().clone()
    }

    /// The components that failed (escalated or for good), with their reasons.
    pub fn failed(&self) -> Vec<(String, String)> {
        self.components
            .lock()
            .iter()
            .filter_map(|(k, v)| match v {
                ComponentState::Failed(reason) | ComponentState::GaveUp(reason) => {
                    Some((k.clone(), reason.clone()))
                }
                _ => None,
            })
            .collect()
    }

    /// The components that failed for good: only a restart of the process (the pod)
    /// runs them again.
    pub fn gave_up(&self) -> Vec<(String, String)> {
        self.components
            .lock()
            .iter()
            .filter_map(|(k, v)| match v {
                ComponentState::GaveUp(reason) => Some((k.clone(), reason.clone())),
                _ => None,
            })
            .collect()
    }
}

/// How a child ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Asked to stop, and did.
    Normal,
    /// Failed; a restart may mend it (its supervisor restarts it within the budget).
    Failed(String),
    /// Failed in a way no restart mends: its supervisor gives up on it at once.
    Unrecoverable(String),
}

impl Exit {
    /// A failure: [`Exit::Failed`] when a restart can help, else [`Exit::Unrecoverable`].
    pub fn failure(reason: impl Into<String>, retryable: bool) -> Self {
        if retryable {
            Exit::Failed(reason.into())
        } else {
            Exit::Unrecoverable(reason.into())
        }
    }
}

/// Whether doing again what failed with `error` can succeed: a log that is unreachable,
/// a rebalance, a fenced incarnation or an aborted commit pass; a topic or partition
/// that does not exist (or not as Wellspring needs it), brokers without transactions and
/// a consumer without a group stay as they are until an operator acts.
pub fn log_error_is_transient(error: &LogError) -> bool {
    match error {
        LogError::NotAssigned(_)
        | LogError::Fenced(_)
        | LogError::Unreachable(_)
        | LogError::CommitAborted(_)
        | LogError::Other(_) => true,
        LogError::UnknownTopic(_)
        | LogError::UnknownPartition { .. }
        | LogError::TopicMismatch { .. }
        | LogError::TransactionsUnsupported(_)
        | LogError::NoGroup(_) => false,
    }
}

#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct ChildExited {
    pub name: String,
    pub generation: u64,
    pub exit: Exit,
}

/// A child's line to its supervisor.
#[derive(Clone)]
pub struct ChildLink {
    pub name: String,
    generation: u64,
    supervisor: Option<Recipient<ChildExited>>,
}

impl ChildLink {
    /// A link to nobody: for actors started outside a supervisor (tests, tools).
    pub fn detached(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            generation: 0,
            supervisor: None,
        }
    }

    /// A link that reports to `supervisor` (the top of a tree, or a test).
    pub fn to(name: impl Into<String>, supervisor: Recipient<ChildExited>) -> Self {
        Self {
            name: name.into(),
            generation: 0,
            supervisor: Some(supervisor),
        }
    }

    pub fn report(&self, exit: Exit) {
        if let Some(supervisor) = &self.supervisor {
            supervisor.do_send(ChildExited {
                name: self.name.clone(),
                generation: self.generation,
                exit,
            });
        }
    }
}

/// Asks a child to stop cleanly (it reports `Exit::Normal` when done).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct StopChild;

type StartFn = Box<dyn Fn(ChildLink) -> Result<Recipient<StopChild>, String>>;

/// How to start (and restart) one child.
pub struct ChildSpec {
    pub name: String,
    pub start: StartFn,
}

impl ChildSpec {
    pub fn new(
        name: impl Into<String>,
        start: impl Fn(ChildLink) -> Result<Recipient<StopChild>, String> + 'static,
    ) -> Self {
        Self {
            name: name.into(),
            start: Box::new(start),
        }
    }
}

struct Child {
    spec: ChildSpec,
    tracker: RestartTracker,
    generation: u64,
    running: Option<Recipient<StopChild>>,
}

/// A generic supervisor of named children.
pub struct Supervisor {
    name: String,
    policy: RestartPolicy,
    children: BTreeMap<String, Child>,
    link: ChildLink,
    health: Health,
    shutting_down: bool,
    shutdown_waiters: Vec<tokio::sync::oneshot::Sender<()>>,
    exit: Exit,
    /// Whether a child's spent budget fails this supervisor too (else the child alone is
    /// marked failed and the others go on).
    escalate: bool,
}

impl Supervisor {
    pub fn new(
        name: impl Into<String>,
        policy: RestartPolicy,
        link: ChildLink,
        health: Health,
    ) -> Self {
        Self {
            name: name.into(),
            policy,
            children: BTreeMap::new(),
            link,
            health,
            shutting_down: false,
            shutdown_waiters: Vec::new(),
            exit: Exit::Normal,
            escalate: true,
        }
    }

    /// Adds a child, started with the supervisor. (Children are not messages: their
    /// start functions may hold thread-local state, since a supervisor and its children
    /// share one arbiter.)
    pub fn with_child(mut self, spec: ChildSpec) -> Self {
        self.children.insert(
            spec.name.clone(),
            Child {
                tracker: RestartTracker::new(self.policy.clone()),
                spec,
                generation: 0,
                running: None,
            },
        );
        self
    }

    /// A supervisor that keeps its other children running when one fails for good: the
    /// top of a node, so that one broken DAG does not stop the others.
    pub fn without_escalation(mut self) -> Self {
        self.escalate = false;
        self
    }

    fn path(&self, child: &str) -> String {
        format!("{}/{child}", self.name)
    }

    fn start_child(&mut self, name: &str, ctx: &mut Context<Self>) {
        let recipient = ctx.address().recipient();
        let path = self.path(name);
        let Some(child) = self.children.get_mut(name) else {
            return;
        };
        child.generation += 1;
        let link = ChildLink {
            name: name.to_owned(),
            generation: child.generation,
            supervisor: Some(recipient),
        };
        match (child.spec.start)(link) {
            Ok(stop) => {
                child.running = Some(stop);
                self.health.set(&path, ComponentState::Running);
            }
            Err(reason) => {
                // Starting failed: treat it like a failure of the child.
                let generation = child.generation;
                ctx.notify(ChildExited {
                    name: name.to_owned(),
                    generation,
                    exit: Exit::Failed(format!("could not start: {reason}")),
                });
            }
        }
    }

    fn running_children(&self) -> usize {
        self.children
            .values()
            .filter(|c| c.running.is_some())
            .count()
    }

    fn stop_all(&mut self) {
        for child in self.children.values() {
            if let Some(stop) = &child.running {
                stop.do_send(StopChild);
            }
        }
    }

    fn finish_shutdown_if_done(&mut self, ctx: &mut Context<Self>) {
        if self.shutting_down && self.running_children() == 0 {
            for waiter in self.shutdown_waiters.drain(..) {
                let _ = waiter.send(());
            }
            ctx.stop();
        }
    }

    /// A child failed and its supervisor cannot go on without it: fail this supervisor
    /// too (its own supervisor decides), stopping the other children first.
    fn escalate(&mut self, path: &str, reason: String, why: String, retryable: bool) {
        tracing::error!(supervisor = %self.name, "{why}; escalating");
        self.health.set(path, ComponentState::Failed(reason));
        self.health
            .set(&self.name, ComponentState::Failed(why.clone()));
        self.exit = Exit::failure(why, retryable);
        // Stop the other children; the supervisor stops once they are down.
        self.shutting_down = true;
        self.stop_all();
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let names: Vec<String> = self.children.keys().cloned().collect();
        for name in names {
            self.health.set(&self.path(&name), ComponentState::Starting);
            self.start_child(&name, ctx);
        }
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.link.report(self.exit.clone());
    }
}

/// Restarts a child after its back-off.
#[derive(Message)]
#[rtype(result = "()")]
struct Restart {
    name: String,
}

impl Handler<Restart> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: Restart, ctx: &mut Self::Context) {
        if !self.shutting_down {
            tracing::info!(supervisor = %self.name, child = %msg.name, "restarting");
            self.start_child(&msg.name, ctx);
        }
    }
}

impl Handler<ChildExited> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: ChildExited, ctx: &mut Self::Context) {
        let path = self.path(&msg.name);
        let Some(child) = self.children.get_mut(&msg.name) else {
            return;
        };
        if child.generation != msg.generation {
            return; // A report from an incarnation already replaced.
        }
        child.running = None;
        match msg.exit {
            Exit::Normal => {
                self.health.set(&path, ComponentState::Stopped);
            }
            Exit::Failed(_) | Exit::Unrecoverable(_) if self.shutting_down => {
                self.health.set(&path, ComponentState::Stopped);
            }
            // No restart mends it: the budget does not matter.
            Exit::Unrecoverable(reason) if !self.escalate => {
                tracing::error!(supervisor = %self.name, child = %msg.name, %reason, "child failed, and no restart can mend it; it stays stopped");
                self.health.set(
                    &path,
                    ComponentState::GaveUp(format!("no restart can mend it: {reason}")),
                );
            }
            Exit::Unrecoverable(reason) => {
                let why = format!("{} failed, and no restart can mend it: {reason}", msg.name);
                self.escalate(&path, reason, why, false);
            }
            Exit::Failed(reason) => match child.tracker.on_failure(Instant::now()) {
                RestartDecision::RestartAfter(delay) => {
                    tracing::warn!(supervisor = %self.name, child = %msg.name, %reason, ?delay, "child failed; restarting after back-off");
                    self.health.set(
                        &path,
                        ComponentState::Restarting {
                            failures: child.tracker.failures.len() as u32,
                            reason,
                        },
                    );
                    ctx.notify_later(Restart { name: msg.name }, delay);
                }
                RestartDecision::Escalate { failures } if !self.escalate => {
                    tracing::error!(supervisor = %self.name, child = %msg.name, failures, %reason, "child failed for good; it stays stopped");
                    self.health.set(
                        &path,
                        ComponentState::GaveUp(format!(
                            "failed {failures} times within {:?}; last: {reason}",
                            self.policy.window
                        )),
                    );
                }
                RestartDecision::Escalate { failures } => {
                    let why = format!(
                        "{} failed {failures} times within {:?}; last: {reason}",
                        msg.name, self.policy.window
                    );
                    // A restart of the whole may still mend what a restart of the part
                    // did not.
                    self.escalate(&path, reason, why, true);
                }
            },
        }
        self.finish_shutdown_if_done(ctx);
    }
}

/// Stops every child cleanly, then the supervisor; answers when all are down.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown(pub tokio::sync::oneshot::Sender<()>);

impl Handler<Shutdown> for Supervisor {
    type Result = ();

    fn handle(&mut self, Shutdown(done): Shutdown, ctx: &mut Self::Context) {
        self.shutting_down = true;
        self.shutdown_waiters.push(done);
        self.stop_all();
        self.finish_shutdown_if_done(ctx);
    }
}

impl Handler<StopChild> for Supervisor {
    type Result = ();

    fn handle(&mut self, _: StopChild, ctx: &mut Self::Context) {
        self.shutting_down = true;
        self.stop_all();
        self.finish_shutdown_if_done(ctx);
    }
}

/// Turns a caught panic's payload into words.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-text payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_the_budget_escalates() {
        let policy = RestartPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
            multiplier: 2.0,
            max_restarts: 3,
            window: Duration::from_secs(10),
        };
        let mut tracker = RestartTracker::new(policy);
        let t0 = Instant::now();
        assert_eq!(
            tracker.on_failure(t0),
            RestartDecision::RestartAfter(Duration::from_millis(100))
        );
        assert_eq!(
            tracker.on_failure(t0),
            RestartDecision::RestartAfter(Duration::from_millis(200))
        );
        assert_eq!(
            tracker.on_failure(t0),
            RestartDecision::RestartAfter(Duration::from_millis(350))
        );
        assert_eq!(
            tracker.on_failure(t0),
            RestartDecision::Escalate { failures: 4 }
        );
        // Failures age out of the window: a quiet child starts over.
        let later = t0 + Duration::from_secs(11);
        assert_eq!(
            tracker.on_failure(later),
            RestartDecision::RestartAfter(Duration::from_millis(100))
        );
    }
}
