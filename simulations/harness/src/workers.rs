//! Task-store workers: they claim plate-feature tasks through any node that is up, work
//! for a while, and report; some vanish holding their lease. Every lease they hold is
//! recorded, so the run can check that no task was ever held by two at once.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::json;
use wellspring_actors::taskstore::Scope;
use wellspring_protocol::taskstore::{Claim, Millis, Report, TaskView};

use crate::cluster::LiveStores;
use crate::history::{EventKind, History};
use wellspring_lab::services;

/// The task-store group the simulation DAG's queue task submits to.
pub const GROUP: &str = "plate-features";
/// How long a claim leases a task.
pub const LEASE: Duration = Duration::from_secs(20);
/// How long a worker waits for an answer from a node.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A lease as the worker that held it saw it, in simulated milliseconds.
#[derive(Debug, Clone)]
pub struct Lease {
    pub task: uuid::Uuid,
    pub client: String,
    /// When the claim came back.
    pub from_ms: u64,
    /// When the worker stopped relying on it: it reported, or the lease ran out (counted
    /// from when the claim was sent, so never later than the task store's own expiry).
    pub until_ms: u64,
}

/// What the workers did.
#[derive(Debug, Default)]
pub struct WorkerLog {
    pub leases: Vec<Lease>,
    pub vanished: usize,
    pub reports: usize,
    pub refused_reports: usize,
}

pub struct Workers {
    pub log: Rc<RefCell<WorkerLog>>,
    stop: Rc<std::cell::Cell<bool>>,
}

impl Workers {
    /// Starts `count` workers on the current actor system.
    pub fn start(
        count: usize,
        vanish_rate: f64,
        live: LiveStores,
        history: History,
        seed: u64,
    ) -> Workers {
        let log = Rc::new(RefCell::new(WorkerLog::default()));
        let stop = Rc::new(std::cell::Cell::new(false));
        for i in 0..count {
            let worker = Worker {
                name: format!("worker-{i}"),
                generation: 0,
                vanish_rate,
                live: live.clone(),
                history: history.clone(),
                log: log.clone(),
                stop: stop.clone(),
                rng: StdRng::seed_from_u64(seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9)),
            };
            actix_rt::spawn(worker.run());
        }
        Workers { log, stop }
    }

    pub fn stop(&self) {
        self.stop.set(true);
    }
}

struct Worker {
    name: String,
    /// A worker that vanished comes back as a new client.
    generation: u32,
    vanish_rate: f64,
    live: LiveStores,
    history: History,
    log: Rc<RefCell<WorkerLog>>,
    stop: Rc<std::cell::Cell<bool>>,
    rng: StdRng,
}

impl Worker {
    fn client(&self) -> String {
        format!("{}.{}", self.name, self.generation)
    }

    async fn pause(&mut self, from_ms: u64, to_ms: u64) {
        let ms = self.rng.random_range(from_ms..=to_ms);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    async fn run(mut self) {
        while !self.stop.get() {
            let Some(store) = self.live.pick(&mut self.rng) else {
                self.pause(500, 1500).await;
                continue;
            };
            let claim = Claim {
                groups: vec![GROUP.to_owned()],
                client_id: self.client(),
                duration: Millis(LEASE.as_millis() as u64),
            };
            let sent_ms = self.history.now_ms();
            let task = match tokio::time::timeout(CALL_TIMEOUT, store.claim(claim, Scope::Cluster))
                .await
            {
                Ok(Ok(Some(task))) => task,
                _ => {
                    self.pause(500, 2000).await;
                    continue;
                }
            };
            self.work(task, sent_ms).await;
        }
    }

    async fn work(&mut self, task: TaskView, sent_ms: u64) {
        let client = self.client();
        let from_ms = self.history.now_ms();
        let expires_ms = sent_ms + LEASE.as_millis() as u64;
        let plate = format!(
            "{}/{}",
            task.labels.get("experiment").map_or("?", String::as_str),
            task.labels.get("plate").map_or("?", String::as_str)
        );
        self.history.record(
            EventKind::Data,
            format!(
                "{client} leases task {} (plate {plate}, version {}, attempt {})",
                task.id, task.version, task.attempts
            ),
        );
        if self.rng.random::<f64>() < self.vanish_rate {
            self.history.record(
                EventKind::Fault,
                format!("{client} vanishes holding task {} (plate {plate})", task.id),
            );
            self.record(task.id, &client, from_ms, expires_ms);
            self.log.borrow_mut().vanished += 1;
            self.generation += 1;
            self.pause(1000, 10_000).await;
            return;
        }
        // Mostly well within the lease; now and then past it.
        if self.rng.random_bool(0.05) {
            self.pause(25_000, 30_000).await;
        } else {
            self.pause(200, 5000).await;
        }
        let report_ms = self.history.now_ms();
        self.record(task.id, &client, from_ms, report_ms.min(expires_ms));
        let experiment = task.labels.get("experiment").cloned().unwrap_or_default();
        let plate_number: i64 = task
            .labels
            .get("plate")
            .and_then(|p| p.parse().ok())
            .unwrap_or_default();
        let output = services::plate_features(&json!({
            "experiment_id": experiment,
            "plate_number": plate_number,
            "wells": [],
        }));
        let report = Report {
            client_id: client.clone(),
            id: task.id,
            version: task.version,
            elapsed_time: Some(report_ms.saturating_sub(from_ms)),
            output: Some(output),
            error: None,
        };
        let Some(store) = self.live.pick(&mut self.rng) else {
            return;
        };
        match tokio::time::timeout(CALL_TIMEOUT, store.report(report, true, Scope::Cluster)).await {
            Ok(Ok(_)) => {
                self.log.borrow_mut().reports += 1;
                self.history.record(
                    EventKind::Data,
                    format!("{client} reports task {} (plate {plate}) done", task.id),
                );
            }
            Ok(Err(e)) => {
                self.log.borrow_mut().refused_reports += 1;
                self.history.record(
                    EventKind::Data,
                    format!(
                        "{client}'s report of task {} (plate {plate}) is refused: {e}",
                        task.id
                    ),
                );
            }
            Err(_) => {
                self.log.borrow_mut().refused_reports += 1;
                self.history.record(
                    EventKind::Data,
                    format!(
                        "{client}'s report of task {} (plate {plate}) got no answer",
                        task.id
                    ),
                );
            }
        }
    }

    fn record(&self, task: uuid::Uuid, client: &str, from_ms: u64, until_ms: u64) {
        self.log.borrow_mut().leases.push(Lease {
            task,
            client: client.to_owned(),
            from_ms,
            until_ms,
        });
    }
}

/// Pairs of leases of the same task, by different workers, that overlap in time.
pub fn overlapping_leases(leases: &[Lease]) -> Vec<(Lease, Lease)> {
    let mut by_task: std::collections::BTreeMap<uuid::Uuid, Vec<&Lease>> = Default::default();
    for lease in leases {
        by_task.entry(lease.task).or_default().push(lease);
    }
    let mut out = Vec::new();
    for mut held in by_task.into_values() {
        held.sort_by_key(|l| l.from_ms);
        for (i, a) in held.iter().enumerate() {
            for b in &held[i + 1..] {
                if a.client != b.client && b.from_ms < a.until_ms {
                    out.push(((*a).clone(), (*b).clone()));
                }
            }
        }
    }
    out
}
