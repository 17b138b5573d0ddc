//! `wellspring-sim` (also run as `wellspring sim`): the deterministic simulation harness
//! from the command line. One seed (with its digest, and its full history on request), or
//! a sweep over a range of seeds with a progress bar; a failing seed prints the command
//! that replays it and the trace that led to the violation.

use std::ops::Range;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use wellspring_simulations::sweep::{run_regressions, sweep};
use wellspring_simulations::{FaultRates, InjectedBug, SimConfig, SimOutcome, run};

/// The allocator of the `wellspring` binary (whose `wellspring sim` runs the same harness).
#[global_allocator]
static ALLOCATOR: wellspring_allocator::Allocator = wellspring_allocator::Allocator;

/// Run the deterministic simulation harness: several nodes of the real engine in one
/// process, in virtual time, with injected faults; one seed or a sweep.
#[derive(Parser)]
#[command(name = "wellspring-sim", version)]
struct SimArgs {
    /// The seed of one run.
    #[arg(long, conflicts_with_all = ["seeds", "regressions"])]
    seed: Option<u64>,
    /// A sweep over seeds A (included) to B (excluded): `--seeds 0..200`.
    #[arg(long, value_name = "A..B", conflicts_with = "regressions")]
    seeds: Option<String>,
    /// Replay every seed of the regression list (seeds that once failed).
    #[arg(long)]
    regressions: bool,
    /// Nodes at the start.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Plates over all experiments of a run.
    #[arg(long, default_value_t = 2)]
    plates: u32,
    /// Task-store workers.
    #[arg(long, default_value_t = 3)]
    workers: usize,
    /// Faults and their rates: `all`, `none`, or changes such as
    /// `all,crash=2,clock-skew-ms=0` (names: crash, restart, preempt, join per simulated
    /// minute; log-delay, redelivery, service-error, service-timeout, service-slow,
    /// worker-vanish as fractions; clock-skew-ms).
    #[arg(long, default_value = "all")]
    faults: String,
    /// Switch on a known bug, to see the harness catch it: commit-input-before-state.
    #[arg(long, value_name = "BUG")]
    inject_bug: Option<String>,
    /// Simulated seconds during which faults happen.
    #[arg(long, default_value_t = 90)]
    fault_window: u64,
    /// Runs in parallel during a sweep (default: one per core).
    #[arg(long)]
    jobs: Option<usize>,
    /// Print the whole history of a single run.
    #[arg(long)]
    history: bool,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
}

fn parse_range(text: &str) -> Result<Range<u64>, String> {
    let (from, to) = text
        .split_once("..")
        .ok_or_else(|| format!("--seeds {text:?}: expected A..B, e.g. 0..200"))?;
    let number = |s: &str| {
        s.trim()
            .parse::<u64>()
            .map_err(|_| format!("--seeds {text:?}: {s:?} is not a seed"))
    };
    let range = number(from)?..number(to)?;
    if range.is_empty() {
        return Err(format!(
            "--seeds {text:?}: the range is empty (B must be above A)"
        ));
    }
    Ok(range)
}

impl SimArgs {
    fn config(&self) -> Result<SimConfig, String> {
        if self.nodes == 0 {
            return Err("--nodes must be at least 1".into());
        }
        Ok(SimConfig {
            nodes: self.nodes,
            plates: self.plates.max(1),
            workers: self.workers,
            faults: FaultRates::parse(&self.faults).map_err(|e| format!("--faults: {e}"))?,
            bug: self
                .inject_bug
                .as_deref()
                .map(InjectedBug::parse)
                .transpose()
                .map_err(|e| format!("--inject-bug: {e}"))?,
            fault_window: Duration::from_secs(self.fault_window),
            ..SimConfig::new(self.seed.unwrap_or(0))
        })
    }
}

fn main() -> ExitCode {
    wellspring_allocator::configure();
    // Nothing logged unless asked: the injected faults would flood the terminal with errors.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    sim_command(SimArgs::parse())
}

fn sim_command(args: SimArgs) -> ExitCode {
    let template = match args.config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if args.regressions {
        return regressions();
    }
    let Some(range) = args.seeds.as_deref() else {
        return single(&template, args.history);
    };
    let range = match parse_range(range) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let jobs = args.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let bar = if !args.no_progress && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        ProgressBar::new(range.end - range.start)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} seeds {pos}/{len} [{bar:30}] {per_sec} eta {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let failures = std::sync::atomic::AtomicU64::new(0);
    let report = sweep(&template, range.clone(), jobs, &|outcome: &SimOutcome| {
        if !outcome.passed() {
            let n = failures.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            bar.set_message(format!("{n} failed"));
            let line = format!("seed {} FAILED", outcome.config.seed);
            if bar.is_hidden() {
                eprintln!("{line}");
            } else {
                bar.println(line);
            }
        }
        bar.inc(1);
    });
    bar.finish_and_clear();
    for outcome in &report.failures {
        println!("{}", outcome.render_failure());
    }
    for (seed, error) in &report.errors {
        println!("seed {seed}: could not run: {error}");
    }
    println!(
        "{} seeds ({}..{}) in {:.1} s: {:.2} seeds/s on {jobs} threads; {} failed, {} could not run",
        report.runs,
        range.start,
        range.end,
        report.elapsed.as_secs_f64(),
        report.seeds_per_second(),
        report.failures.len(),
        report.errors.len()
    );
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn single(config: &SimConfig, history: bool) -> ExitCode {
    let started = std::time::Instant::now();
    match run(config) {
        Ok(outcome) => {
            if history {
                for event in &outcome.history {
                    println!("{}", event.render());
                }
            }
            if outcome.passed() {
                println!(
                    "{} in {:.1} s",
                    outcome.summary(),
                    started.elapsed().as_secs_f64()
                );
                ExitCode::SUCCESS
            } else {
                println!("{}", outcome.render_failure());
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn regressions() -> ExitCode {
    match run_regressions() {
        Ok(failed) if failed.is_empty() => {
            println!("every regression seed passes");
            ExitCode::SUCCESS
        }
        Ok(failed) => {
            for outcome in &failed {
                println!("{}", outcome.render_failure());
            }
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
