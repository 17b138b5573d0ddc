//! The `wellspring` command: its subcommands and their dispatch. Each command's flags and
//! body are in [`crate::commands`]; a failed command's error is printed here, once.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::commands::{self, CommandResult};

#[derive(Parser)]
#[command(
    name = "wellspring",
    version,
    about = "Streaming workflow engine for high-throughput microscopy"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a realistic experiment through the reference DAG: embedded log, simulated
    /// microservices on loopback, nothing to install.
    Demo(commands::demo::DemoArgs),
    /// Check a DAG spec (JSON or YAML) and report every error, with node and field.
    Validate(commands::validate::ValidateArgs),
    /// Print a DAG as a Mermaid flowchart (renders on GitHub) or Graphviz DOT.
    Graph(commands::graph::GraphArgs),
    /// Compare the spec a cluster runs (OLD) with the one it would roll to (NEW): each
    /// change safe, backfilled or refused, with the reason and what to do instead (exit
    /// code 1 when any is refused).
    UpgradeCheck(commands::upgrade_check::UpgradeCheckArgs),
    /// Run a node: DAGs (optional) and the task-store API, until SIGINT or SIGTERM.
    Run(Box<commands::run::RunArgs>),
    /// Talk to a node's task-store API.
    Tasks(commands::tasks::TasksArgs),
    /// Where experiments, plates and wells stand (a plate map with --plate), from a
    /// node's status API.
    Status(commands::status::StatusArgs),
    /// List dead letters with their metadata, or send them back into the stage where
    /// each failed, once (from a node's API).
    DeadLetters(commands::dead_letters::DeadLettersArgs),
    /// Re-run one DAG node for an experiment, a plate or some wells, from its retained
    /// inputs, in a new generation (its outputs get new ids and a generation header);
    /// --downstream re-runs the nodes after it too.
    Rerun(commands::rerun::RerunArgs),
    /// Run a DAG node over retained history it never saw (a node added after an
    /// experiment finished): an experiment, or everything since a time.
    Backfill(commands::rerun::BackfillArgs),
    /// Publish a synthetic experiment (its layout, then its images) to Kafka.
    Generate(commands::generate::GenerateArgs),
    /// Publish the images a microscope writes into a folder (one channel_level record
    /// each, after the experiment's layout), to Kafka or to a node; --watch follows it.
    Ingest(Box<commands::ingest::IngestArgs>),
    /// Check one experiment's outputs on Kafka: every missing and every duplicated
    /// aggregate (exit code 0 only when there are none).
    Verify(commands::verify::VerifyArgs),
    /// Stop a node as SIGTERM does (API first, then every stage flushes, commits and
    /// leaves its groups) and wait until it has: for a Kubernetes preStop hook.
    Drain(commands::drain::DrainArgs),
    /// Start the demo's simulated microservices on the reference DAG's usual ports
    /// (9101-9104), so `run --dag examples/reference-dag.yaml` works without the demo.
    Services(commands::services::ServicesArgs),
    /// Run the deterministic simulation harness: several nodes of the real engine in one
    /// process, in virtual time, with injected faults; one seed or a sweep.
    Sim(crate::sim::SimArgs),
}

/// Logs at `RUST_LOG`, else at `default` (warnings for every command; nothing for the
/// simulator, whose injected faults would otherwise flood the terminal with errors).
fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(match cli.command {
        Command::Sim(_) => "off",
        _ => "warn",
    });
    let result: CommandResult = match cli.command {
        // The harness reports on its own terms (a failing seed, its replay command).
        Command::Sim(args) => return crate::sim::sim_command(args),
        Command::Demo(args) => commands::demo::demo(args),
        Command::Validate(args) => commands::validate::validate(args),
        Command::Graph(args) => commands::graph::graph(args),
        Command::UpgradeCheck(args) => commands::upgrade_check::upgrade_check(args),
        Command::Run(args) => commands::run::run(*args),
        Command::Tasks(args) => commands::tasks::tasks(args),
        Command::Status(args) => commands::status::status(args),
        Command::DeadLetters(args) => commands::dead_letters::dead_letters(args),
        Command::Rerun(args) => commands::rerun::rerun(args),
        Command::Backfill(args) => commands::rerun::backfill(args),
        Command::Generate(args) => commands::generate::generate(args),
        Command::Ingest(args) => commands::ingest::ingest(*args),
        Command::Verify(args) => commands::verify::verify(args),
        Command::Drain(args) => commands::drain::drain(args),
        Command::Services(args) => commands::services::services(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            error.exit_code()
        }
    }
}
