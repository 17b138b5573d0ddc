//! What a simulated run does: its seed, cluster, workload and the faults it injects.

use std::fmt::Write as _;
use std::time::Duration;

/// The faults a run injects, each with a rate.
///
/// Cluster events (`crash`, `restart`, `preempt`, `join`) are expected events per simulated
/// minute of the fault window; the others are fractions of the operations they hit.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultRates {
    /// A node dies at once: its memory is lost, its shards move after the session timeout.
    pub crash: f64,
    /// A node stops cleanly and comes straight back (a rolling restart).
    pub restart: f64,
    /// SIGTERM, then a crash if the node has not stopped within the grace period.
    pub preempt: f64,
    /// A new node joins the cluster.
    pub join: f64,
    /// Polls whose records arrive late (up to [`FaultRates::MAX_LOG_DELAY`]).
    pub log_delay: f64,
    /// Commits the log refuses or a rebalance aborts: the stage restarts, or rewinds its
    /// shards in place, and reads its uncommitted input again.
    pub redelivery: f64,
    /// Microservice calls answered `503`, or `200` with `X-Function-Error: Unhandled`.
    pub service_error: f64,
    /// Microservice calls that never answer within the task's timeout.
    pub service_timeout: f64,
    /// Microservice calls answered fifty times slower than usual.
    pub service_slow: f64,
    /// Workers that claim a task and vanish without a word.
    pub worker_vanish: f64,
    /// Each node's clock is off by up to this much (either way).
    pub clock_skew: Duration,
}

/// The names `--faults` accepts, in the order they are printed.
const NAMES: [&str; 11] = [
    "crash",
    "restart",
    "preempt",
    "join",
    "log-delay",
    "redelivery",
    "service-error",
    "service-timeout",
    "service-slow",
    "worker-vanish",
    "clock-skew-ms",
];

impl FaultRates {
    pub const MAX_LOG_DELAY: Duration = Duration::from_secs(2);

    /// No faults: the run shows the engine's behaviour on a quiet day.
    pub fn none() -> Self {
        Self {
            crash: 0.0,
            restart: 0.0,
            preempt: 0.0,
            join: 0.0,
            log_delay: 0.0,
            redelivery: 0.0,
            service_error: 0.0,
            service_timeout: 0.0,
            service_slow: 0.0,
            worker_vanish: 0.0,
            clock_skew: Duration::ZERO,
        }
    }

    /// Every fault, often enough that most runs meet several of each kind.
    pub fn all() -> Self {
        Self {
            crash: 1.0,
            restart: 0.5,
            preempt: 0.5,
            join: 0.3,
            log_delay: 0.02,
            redelivery: 0.005,
            service_error: 0.05,
            service_timeout: 0.01,
            service_slow: 0.02,
            worker_vanish: 0.1,
            clock_skew: Duration::from_millis(500),
        }
    }

    /// `none`, `all`, or `all` / `none` followed by `name=value` changes, comma-separated:
    /// `all,crash=2,clock-skew-ms=0`. A bare list of `name=value` starts from `none`.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut rates = Self::none();
        for (i, part) in spec.split(',').map(str::trim).enumerate() {
            match part {
                "" => {}
                "none" if i == 0 => rates = Self::none(),
                "all" if i == 0 => rates = Self::all(),
                _ => {
                    let (name, value) = part.split_once('=').ok_or_else(|| {
                        format!(
                            "{part:?} is not a fault setting: expected none, all, or name=value (names: {})",
                            NAMES.join(", ")
                        )
                    })?;
                    let value: f64 = value
                        .trim()
                        .parse()
                        .ok()
                        .filter(|v: &f64| v.is_finite() && *v >= 0.0)
                        .ok_or_else(|| {
                            format!("{name}: {value:?} is not a rate (a number, 0 or more)")
                        })?;
                    rates.set(name.trim(), value)?;
                }
            }
        }
        for (name, fraction) in [
            ("log-delay", rates.log_delay),
            ("redelivery", rates.redelivery),
            ("worker-vanish", rates.worker_vanish),
        ] {
            if fraction > 1.0 {
                return Err(format!("{name} is a fraction of operations: at most 1"));
            }
        }
        if rates.service_error + rates.service_timeout + rates.service_slow > 1.0 {
            return Err(
                "service-error + service-timeout + service-slow are fractions of the same calls: together at most 1"
                    .into(),
            );
        }
        Ok(rates)
    }

    fn set(&mut self, name: &str, value: f64) -> Result<(), String> {
        match name {
            "crash" => self.crash = value,
            "restart" => self.restart = value,
            "preempt" => self.preempt = value,
            "join" => self.join = value,
            "log-delay" => self.log_delay = value,
            "redelivery" => self.redelivery = value,
            "service-error" => self.service_error = value,
            "service-timeout" => self.service_timeout = value,
            "service-slow" => self.service_slow = value,
            "worker-vanish" => self.worker_vanish = value,
            "clock-skew-ms" => self.clock_skew = Duration::from_millis(value as u64),
            _ => {
                return Err(format!(
                    "{name:?} is not a fault (names: {})",
                    NAMES.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// The settings as `--faults` takes them: `parse(render())` gives them back.
    pub fn render(&self) -> String {
        let values = [
            self.crash,
            self.restart,
            self.preempt,
            self.join,
            self.log_delay,
            self.redelivery,
            self.service_error,
            self.service_timeout,
            self.service_slow,
            self.worker_vanish,
            self.clock_skew.as_millis() as f64,
        ];
        let mut out = String::new();
        for (name, value) in NAMES.iter().zip(values) {
            if value != 0.0 {
                let _ = write!(
                    out,
                    "{}{name}={value}",
                    if out.is_empty() { "" } else { "," }
                );
            }
        }
        if out.is_empty() { "none".into() } else { out }
    }

    pub fn any(&self) -> bool {
        *self != Self::none()
    }
}

/// A known bug the harness can switch on, to show that it catches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InjectedBug {
    /// Input offsets are committed first and the outputs and changelog written a moment
    /// later: a crash in between loses them.
    CommitInputBeforeState,
}

impl InjectedBug {
    pub fn parse(name: &str) -> Result<Self, String> {
        match name {
            "commit-input-before-state" => Ok(Self::CommitInputBeforeState),
            _ => Err(format!(
                "{name:?} is not a known bug (known: commit-input-before-state)"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::CommitInputBeforeState => "commit-input-before-state",
        }
    }
}

/// One simulated run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    /// Nodes at the start.
    pub nodes: usize,
    /// Plates over all experiments (each experiment gets at least one).
    pub plates: u32,
    /// Task-store workers.
    pub workers: usize,
    pub faults: FaultRates,
    pub bug: Option<InjectedBug>,
    /// Faults happen during this much simulated time from the start.
    pub fault_window: Duration,
    /// After the last fault (and the last input), the cluster must have converged (every
    /// shard owned, every backlog empty, every output and task done) within this long.
    pub convergence_bound: Duration,
}

impl SimConfig {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            nodes: 3,
            plates: 2,
            workers: 3,
            faults: FaultRates::all(),
            bug: None,
            fault_window: Duration::from_secs(90),
            convergence_bound: Duration::from_secs(300),
        }
    }

    /// The command that replays this run.
    pub fn replay_command(&self) -> String {
        let mut command = format!(
            "wellspring sim --seed {} --nodes {} --plates {} --workers {} --faults {}",
            self.seed,
            self.nodes,
            self.plates,
            self.workers,
            self.faults.render()
        );
        if self.fault_window != Self::new(0).fault_window {
            let _ = write!(command, " --fault-window {}", self.fault_window.as_secs());
        }
        if let Some(bug) = self.bug {
            let _ = write!(command, " --inject-bug {}", bug.name());
        }
        command
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_settings_parse_render_and_refuse_nonsense() {
        assert_eq!(FaultRates::parse("none"), Ok(FaultRates::none()));
        assert_eq!(FaultRates::parse("all"), Ok(FaultRates::all()));
        let some =
            FaultRates::parse("all,crash=2,clock-skew-ms=0").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(some.crash, 2.0);
        assert_eq!(some.clock_skew, Duration::ZERO);
        assert_eq!(FaultRates::parse(&some.render()), Ok(some));
        assert_eq!(
            FaultRates::parse(&FaultRates::all().render()),
            Ok(FaultRates::all())
        );
        assert_eq!(FaultRates::none().render(), "none");
        let only = FaultRates::parse("crash=1").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            only,
            FaultRates {
                crash: 1.0,
                ..FaultRates::none()
            }
        );
        for bad in [
            "crash",
            "crsh=1",
            "crash=-1",
            "crash=x",
            "redelivery=2",
            "service-error=0.6,service-timeout=0.6",
        ] {
            assert!(FaultRates::parse(bad).is_err(), "{bad} should be refused");
        }
    }
}
