//! The harness itself: runs pass on a quiet day, replay byte for byte, catch a known bug
//! with a seed, and the CI sweep of seeds with every fault switched on.
#![allow(clippy::unwrap_used)]

use wellspring_simulations::sweep::{regressions, run_regressions, sweep};
use wellspring_simulations::{FaultRates, InjectedBug, SimConfig, run};

/// Seeds the CI sweep runs, every fault on: as many as fit in about the minute and a half
/// the sweep had (1,000 seeds, before idle stages stopped cycling five times a second).
const CI_SEEDS: u64 = 2000;

#[test]
fn a_quiet_run_passes() {
    let config = SimConfig {
        faults: FaultRates::none(),
        ..SimConfig::new(2)
    };
    let outcome = run(&config).unwrap();
    assert!(outcome.passed(), "{}", outcome.render_failure());
    assert_eq!(outcome.stats.faults, 0);
    assert!(outcome.stats.images > 0 && outcome.stats.log_records > 0);
}

#[test]
fn the_same_seed_replays_byte_for_byte() {
    let config = SimConfig::new(8);
    let first = run(&config).unwrap();
    let second = run(&config).unwrap();
    assert!(
        first.stats.faults > 0,
        "faults were injected: {}",
        first.summary()
    );
    if let Some(i) = (0..first.history.len().min(second.history.len()))
        .find(|i| first.history[*i] != second.history[*i])
    {
        panic!(
            "the runs differ at event {i}:\n{}\n{}",
            first.history[i].render(),
            second.history[i].render()
        );
    }
    assert_eq!(first.history.len(), second.history.len());
    assert_eq!(first.digest, second.digest);
    let other = run(&SimConfig::new(9)).unwrap();
    assert_ne!(first.digest, other.digest);
}

/// Proof that the harness can fail: with offsets committed before the state and outputs
/// they cover, some seed loses aggregates when a node crashes in between, and the report
/// says so, with the command that replays it.
#[test]
fn the_harness_catches_a_commit_of_input_before_its_state() {
    let template = SimConfig {
        bug: Some(InjectedBug::CommitInputBeforeState),
        ..SimConfig::new(0)
    };
    let report = sweep(&template, 1..13, 2, &|_| {});
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let caught = report
        .failures
        .first()
        .unwrap_or_else(|| panic!("no seed of 1..13 caught the bug: the harness is blind to it"));
    let rendered = caught.render_failure();
    assert!(
        caught
            .violations
            .iter()
            .any(|v| v.invariant.contains("exactly once") || v.invariant.contains("lost")),
        "{rendered}"
    );
    assert!(
        rendered.contains(&format!(
            "wellspring sim --seed {} --nodes 3",
            caught.config.seed
        )) && rendered.contains("--inject-bug commit-input-before-state"),
        "{rendered}"
    );
    // The node whose state the bug loses ends in a crash or a stop, whichever the
    // first seed to catch it has: the trace shows it.
    assert!(
        rendered.contains("crashes") || rendered.contains("gets SIGTERM"),
        "the trace shows how the node ended: {rendered}"
    );
    // The same seed without the bug passes: the harness blames the bug, not the seed.
    let fixed = run(&SimConfig {
        bug: None,
        ..caught.config.clone()
    })
    .unwrap();
    assert!(fixed.passed(), "{}", fixed.render_failure());
}

#[test]
fn every_seed_that_ever_failed_passes_now() {
    assert!(!regressions().unwrap().is_empty());
    let failed = run_regressions().unwrap();
    let rendered: Vec<String> = failed.iter().map(|o| o.render_failure()).collect();
    assert!(failed.is_empty(), "{}", rendered.join("\n"));
}

/// The CI sweep: every fault on, `CI_SEEDS` seeds.
#[test]
fn sweep_of_seeds_with_every_fault_on() {
    let template = SimConfig::new(0);
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let report = sweep(&template, 0..CI_SEEDS, jobs, &|_| {});
    eprintln!(
        "{} seeds in {:.1} s ({:.2} seeds/s on {jobs} threads)",
        report.runs,
        report.elapsed.as_secs_f64(),
        report.seeds_per_second()
    );
    let rendered: Vec<String> = report.failures.iter().map(|o| o.render_failure()).collect();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(
        report.failures.is_empty(),
        "{} of {CI_SEEDS} seeds failed; add each to simulations/harness/regressions.txt once fixed:\n{}",
        report.failures.len(),
        rendered.join("\n")
    );
}
