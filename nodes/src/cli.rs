//! The `wellspring` command.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use wellspring_actors::FunctionRegistry;
use wellspring_protocol::spec::{to_dot, to_mermaid};
use wellspring_protocol::{Dag, SpecFormat};

use crate::demo::{self, DemoOptions};
use crate::services::ServiceConfig;
use crate::workload::WorkloadConfig;

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
    Demo(DemoArgs),
    /// Check a DAG spec (JSON or YAML) and report every error, with node and field.
    Validate {
        file: PathBuf,
        /// Override a variable: --set name=value
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
    },
    /// Print a DAG as a Mermaid flowchart (renders on GitHub) or Graphviz DOT.
    Graph {
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = GraphFormat::Mermaid)]
        format: GraphFormat,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum GraphFormat {
    Mermaid,
    Dot,
}

#[derive(Args)]
struct DemoArgs {
    /// Plates in the experiment.
    #[arg(long, default_value_t = 2)]
    plates: u32,
    /// Wells in use per plate (308: the interior of a 384-well plate).
    #[arg(long, default_value_t = 308)]
    wells: usize,
    /// Sites imaged per well.
    #[arg(long, default_value_t = 4)]
    sites: u16,
    /// Channels imaged per site.
    #[arg(long, default_value_t = 6)]
    channels: u8,
    /// Fraction of microservice calls answered 503 (retried).
    #[arg(long, default_value_t = 0.01)]
    error_rate: f64,
    /// Fraction answered 200 with X-Function-Error: Unhandled (retried).
    #[arg(long, default_value_t = 0.005)]
    function_error_rate: f64,
    /// Typical microservice latency in milliseconds.
    #[arg(long, default_value_t = 2)]
    latency_ms: u64,
    /// Fraction of images sent twice.
    #[arg(long, default_value_t = 0.02)]
    duplicates: f64,
    /// Malformed records mixed into the input (they go to the dead-letter topic).
    #[arg(long, default_value_t = 0)]
    bad_records: usize,
    /// Images published per second (default: as fast as the log takes them).
    #[arg(long)]
    rate: Option<f64>,
    /// Seed of the workload and the simulated failures.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Run this DAG file instead of the bundled reference DAG.
    #[arg(long)]
    dag: Option<PathBuf>,
    /// Give up when nothing new comes out for this many seconds.
    #[arg(long, default_value_t = 60)]
    stall_timeout: u64,
    /// Print progress lines instead of progress bars.
    #[arg(long)]
    no_progress: bool,
}

fn read_dag(file: &PathBuf, overrides: &[String]) -> Result<Dag, ExitCode> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        eprintln!("error: cannot read {}: {e}", file.display());
        ExitCode::from(2)
    })?;
    let registry = FunctionRegistry::with_builtins();
    let name = file.display().to_string();
    let mut dag =
        Dag::load(&text, SpecFormat::detect(&name, &text), &registry).map_err(|errors| {
            eprint!("{name}: {errors}");
            ExitCode::from(1)
        })?;
    let mut values = std::collections::BTreeMap::new();
    for item in overrides {
        let Some((k, v)) = item.split_once('=') else {
            eprintln!("error: --set {item:?} must look like name=value");
            return Err(ExitCode::from(2));
        };
        values.insert(k.to_owned(), v.to_owned());
    }
    dag.set_variables(&values).map_err(|errors| {
        eprint!("{name}: {errors}");
        ExitCode::from(1)
    })?;
    Ok(dag)
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Validate { file, set } => match read_dag(&file, &set) {
            Ok(dag) => {
                let tasks = dag.tasks.len();
                println!(
                    "{}: DAG {} is valid: {} nodes, {} topics, {tasks} tasks",
                    file.display(),
                    dag.name,
                    dag.nodes.len(),
                    dag.topics.len()
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Graph { file, format } => match read_dag(&file, &[]) {
            Ok(dag) => {
                print!(
                    "{}",
                    match format {
                        GraphFormat::Mermaid => to_mermaid(&dag),
                        GraphFormat::Dot => to_dot(&dag),
                    }
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Demo(args) => {
            for (name, value) in [
                ("--error-rate", args.error_rate),
                ("--function-error-rate", args.function_error_rate),
                ("--duplicates", args.duplicates),
            ] {
                if !(0.0..=1.0).contains(&value) {
                    eprintln!("error: {name} must be between 0 and 1, not {value}");
                    return ExitCode::from(2);
                }
            }
            let options = DemoOptions {
                workload: WorkloadConfig {
                    plates: args.plates,
                    wells: args.wells,
                    sites: args.sites,
                    channels: args.channels,
                    duplicates: args.duplicates,
                    bad_records: args.bad_records,
                    seed: args.seed,
                    ..WorkloadConfig::default()
                },
                services: ServiceConfig {
                    latency: Duration::from_millis(args.latency_ms),
                    error_rate: args.error_rate,
                    function_error_rate: args.function_error_rate,
                    seed: args.seed,
                    ..ServiceConfig::default()
                },
                rate: args.rate,
                dag: args.dag,
                stall_timeout: Duration::from_secs(args.stall_timeout),
                progress: !args.no_progress && std::io::IsTerminal::is_terminal(&std::io::stderr()),
            };
            match demo::run(options) {
                Ok(report) => {
                    println!("{}", report.render());
                    if report.ok() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    }
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}
