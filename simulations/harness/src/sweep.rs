//! Many seeds at once: a sweep over a range of seeds on every core, and the regression
//! list of seeds that once failed (each replayed exactly as it failed).

use std::ops::Range;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::{FaultRates, SimConfig};
use crate::run::{SimError, SimOutcome, run};

/// The verdict on a sweep.
#[derive(Debug, Default)]
pub struct SweepReport {
    pub runs: u64,
    /// Runs that broke an invariant, in seed order (with their traces).
    pub failures: Vec<SimOutcome>,
    /// Runs that could not be set up.
    pub errors: Vec<(u64, String)>,
    pub elapsed: std::time::Duration,
}

impl SweepReport {
    pub fn passed(&self) -> bool {
        self.failures.is_empty() && self.errors.is_empty()
    }

    pub fn seeds_per_second(&self) -> f64 {
        self.runs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs `template` for every seed of `seeds` on `jobs` threads; `progress` hears each
/// finished run.
pub fn sweep(
    template: &SimConfig,
    seeds: Range<u64>,
    jobs: usize,
    progress: &(dyn Fn(&SimOutcome) + Sync),
) -> SweepReport {
    let started = std::time::Instant::now();
    let next = AtomicU64::new(seeds.start);
    let report = Mutex::new(SweepReport::default());
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::SeqCst);
                    if seed >= seeds.end {
                        break;
                    }
                    let config = SimConfig {
                        seed,
                        ..template.clone()
                    };
                    let result = run(&config);
                    let mut report = report.lock().unwrap_or_else(|e| e.into_inner());
                    report.runs += 1;
                    match result {
                        Ok(mut outcome) => {
                            progress(&outcome);
                            if outcome.passed() {
                                continue;
                            }
                            outcome.history.clear();
                            report.failures.push(outcome);
                        }
                        Err(e) => report.errors.push((seed, e.to_string())),
                    }
                }
            });
        }
    });
    let mut report = report.into_inner().unwrap_or_else(|e| e.into_inner());
    report.failures.sort_by_key(|o| o.config.seed);
    report.errors.sort();
    report.elapsed = started.elapsed();
    report
}

/// The seeds that once failed, each with the settings it failed with:
/// `SEED NODES PLATES WORKERS FAULTS  # what it found`, one per line.
pub const REGRESSIONS: &str = include_str!("../regressions.txt");

/// The regression list, parsed.
pub fn regressions() -> Result<Vec<(SimConfig, String)>, String> {
    let mut out = Vec::new();
    for (number, line) in REGRESSIONS.lines().enumerate() {
        let (fields, note) = line.split_once('#').unwrap_or((line, ""));
        let fields: Vec<&str> = fields.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        let bad = |what: &str| format!("regressions.txt line {}: {what}", number + 1);
        let [seed, nodes, plates, workers, faults] = fields.as_slice() else {
            return Err(bad("expected SEED NODES PLATES WORKERS FAULTS"));
        };
        let number = |text: &str, what: &str| {
            text.parse::<u64>()
                .map_err(|_| bad(&format!("{what} {text:?} is not a number")))
        };
        let config = SimConfig {
            nodes: number(nodes, "nodes")? as usize,
            plates: number(plates, "plates")? as u32,
            workers: number(workers, "workers")? as usize,
            faults: FaultRates::parse(faults).map_err(|e| bad(&e))?,
            ..SimConfig::new(number(seed, "seed")?)
        };
        out.push((config, note.trim().to_owned()));
    }
    Ok(out)
}

/// Replays every regression seed; the ones that fail again.
pub fn run_regressions() -> Result<Vec<SimOutcome>, SimError> {
    let list = regressions().map_err(SimError::Setup)?;
    let mut failed = Vec::new();
    for (config, _) in list {
        let outcome = run(&config)?;
        if !outcome.passed() {
            failed.push(outcome);
        }
    }
    Ok(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_regression_list_parses() {
        let list = regressions().unwrap_or_else(|e| panic!("{e}"));
        assert!(!list.is_empty());
        for (config, note) in list {
            assert!(!note.is_empty(), "seed {} says what it found", config.seed);
        }
    }
}
