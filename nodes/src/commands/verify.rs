//! `wellspring verify`: checks one experiment's outputs on Kafka (or, with `--data-dir`,
//! on a stopped node's durable embedded log) and lists every missing, duplicated and
//! unexpected aggregate (exit code 0 only when there are none).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::ProgressBar;
use wellspring_actors::FunctionRegistry;
use wellspring_log::{DurableOptions, Fsync, KafkaLog, Log, Retention};
use wellspring_protocol::{Dag, SpecFormat};

use super::data_dir::open_dir;
use super::generate::kafka_for;
use super::{CliError, CommandResult, flags, on_runtime, read_dag, wants_progress};
use crate::backend::KafkaArgs;
use crate::demo;
use crate::verify::{VerifyOptions, verify_experiment};

#[derive(Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Read a stopped node's durable log in DIR (what `run --data-dir DIR` kept) instead
    /// of Kafka.
    #[arg(long, value_name = "DIR", conflicts_with = "kafka")]
    data_dir: Option<PathBuf>,
    /// The experiment to check.
    #[arg(long)]
    experiment: String,
    /// The DAG that produced the outputs (default: the bundled reference DAG).
    #[arg(long)]
    dag: Option<PathBuf>,
    /// Keep reading while outputs are missing, up to this long (e.g. 2m).
    #[arg(long, default_value = "0s", value_parser = flags::duration)]
    wait: Duration,
    /// Print progress lines instead of a spinner.
    #[arg(long)]
    no_progress: bool,
}

pub fn verify(args: VerifyArgs) -> CommandResult {
    let disk: Option<Box<dyn Log>> = match &args.data_dir {
        Some(dir) => {
            if !dir.is_dir() {
                return Err(CliError::could_not_run(format!(
                    "{} is not a directory (give the --data-dir a node ran with)",
                    dir.display()
                )));
            }
            // Everything on disk is read (no retention) and nothing is appended; a torn
            // tail is truncated as a restart would.
            let mut options = DurableOptions::new(dir);
            options.retention = Retention::default();
            options.fsync = Fsync::Never;
            Some(Box::new(open_dir(options)?))
        }
        None => None,
    };
    let settings = match disk {
        Some(_) => None,
        None => Some(kafka_for("verify", &args.kafka)?),
    };
    let dag = match &args.dag {
        Some(file) => read_dag(file, &[])?,
        None => Dag::load(
            demo::REFERENCE_DAG,
            SpecFormat::Yaml,
            &FunctionRegistry::with_builtins(),
        )
        .map_err(|e| CliError::could_not_run(format!("the bundled reference DAG: {e}")))?,
    };
    let mut options = VerifyOptions::for_dag(&dag, &args.experiment);
    options.wait = args.wait;
    let progress = wants_progress(args.no_progress);
    let report = on_runtime(async {
        // The Kafka client lives on the runtime that reads with it.
        let log: Box<dyn Log> = match (disk, settings) {
            (Some(log), _) => log,
            (None, Some(settings)) => Box::new(KafkaLog::connect(settings).await?),
            (None, None) => unreachable!("verify reads a data directory or Kafka"),
        };
        let spinner = if progress {
            ProgressBar::new_spinner()
        } else {
            ProgressBar::hidden()
        };
        spinner.enable_steady_tick(Duration::from_millis(200));
        let mut last_line = Instant::now();
        let report = verify_experiment(log.as_ref(), &options, |read| {
            spinner.set_message(format!("{read} output records read"));
            if !progress && last_line.elapsed() > Duration::from_secs(5) {
                last_line = Instant::now();
                eprintln!("{read} output records read");
            }
        })
        .await;
        spinner.finish_and_clear();
        report
    })?
    .map_err(|e| CliError::could_not_run(e.to_string()))?;
    print!("{}", report.render());
    if report.ok() {
        Ok(())
    } else {
        Err(CliError::failed(format!(
            "experiment {} is not complete exactly once (see above); --wait 5m keeps reading while outputs are missing",
            args.experiment
        )))
    }
}
