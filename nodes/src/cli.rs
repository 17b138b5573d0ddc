//! The `wellspring` command.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use wellspring_actors::{FunctionRegistry, RuntimeConfig};
use wellspring_log::{Cleanup, KafkaLog, KafkaSettings, Log, LogError, TopicSpec};
use wellspring_protocol::spec::{to_dot, to_mermaid};
use wellspring_protocol::{Dag, SpecFormat};

use crate::backend::{KafkaArgs, block_on};
use crate::demo::{self, DemoOptions};
use crate::services::ServiceConfig;
use crate::verify::{VerifyOptions, verify_experiment};
use crate::workload::WorkloadConfig;
use crate::workload::{Workload, publish};

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
    /// Run a node: DAGs (optional) and the task-store API, until SIGINT or SIGTERM.
    Run(Box<RunArgs>),
    /// Talk to a node's task-store API.
    Tasks(TasksArgs),
    /// Publish a synthetic experiment (its layout, then its images) to Kafka.
    Generate(GenerateArgs),
    /// Check one experiment's outputs on Kafka: every missing and every duplicated
    /// aggregate (exit code 0 only when there are none).
    Verify(VerifyArgs),
    /// Stop a node as SIGTERM does (API first, then every stage flushes, commits and
    /// leaves its groups) and wait until it has: for a Kubernetes preStop hook.
    Drain(DrainArgs),
    /// Run the deterministic simulation harness: several nodes of the real engine in one
    /// process, in virtual time, with injected faults; one seed or a sweep.
    Sim(crate::sim::SimArgs),
}

#[derive(Args)]
struct DrainArgs {
    /// The node's API.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "WELLSPRING_URL")]
    url: String,
    /// How long to wait for the node to stop.
    #[arg(long, default_value = "2m")]
    wait: String,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Plates in the experiment.
    #[arg(long, default_value_t = 1)]
    plates: u32,
    /// The experiment's id (default: EXP- and the current time).
    #[arg(long)]
    experiment: Option<String>,
    #[command(flatten)]
    shape: WorkloadArgs,
    /// The topic the images go to (the reference DAG's image source).
    #[arg(long, default_value = "images_channel")]
    images_topic: String,
    /// The topic the experiment's layout goes to (the reference DAG's metadata table).
    #[arg(long, default_value = "experiment_metadata")]
    metadata_topic: String,
    /// Partitions of the images topic, if it has to be created.
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    /// Print progress lines instead of a progress bar.
    #[arg(long)]
    no_progress: bool,
}

#[derive(Args)]
struct VerifyArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// The experiment to check.
    #[arg(long)]
    experiment: String,
    /// The DAG that produced the outputs (default: the bundled reference DAG).
    #[arg(long)]
    dag: Option<PathBuf>,
    /// Keep reading while outputs are missing, up to this long (e.g. 2m).
    #[arg(long, default_value = "0s")]
    wait: String,
    /// Print progress lines instead of a spinner.
    #[arg(long)]
    no_progress: bool,
}

#[derive(Args)]
struct RunArgs {
    /// A DAG spec to run (repeat for several).
    #[arg(long = "dag", value_name = "FILE")]
    dags: Vec<PathBuf>,
    /// Override a DAG variable: --set name=value
    #[arg(long = "set", value_name = "NAME=VALUE")]
    set: Vec<String>,
    /// Where the API listens. Loopback unless you say otherwise.
    #[arg(long, default_value = "127.0.0.1:8080", env = "WELLSPRING_HTTP_ADDR")]
    http_addr: std::net::SocketAddr,
    /// This node's identity (its consumer-group membership).
    #[arg(long, default_value = "wellspring-0", env = "POD_NAME")]
    node_id: String,
    /// A file holding the bearer token the API requires (or set WELLSPRING_API_TOKEN).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Shards of the task store (fixed once its topic exists).
    #[arg(long, default_value_t = 8)]
    task_partitions: u32,
    /// Largest request body the API accepts, in bytes.
    #[arg(long, default_value_t = crate::api::DEFAULT_BODY_LIMIT)]
    body_limit: usize,
    /// Where other nodes reach this node's API (default: the pod's DNS name under
    /// --headless-service, else the address it listens on).
    #[arg(long, env = "WELLSPRING_ADVERTISE_URL")]
    advertise_url: Option<String>,
    /// The StatefulSet's headless service: the API is advertised at
    /// http://NODE-ID.SERVICE.NAMESPACE.svc:PORT.
    #[arg(long, env = "WELLSPRING_HEADLESS_SERVICE")]
    headless_service: Option<String>,
    /// The pod's namespace, for --headless-service.
    #[arg(long, default_value = "default", env = "POD_NAMESPACE")]
    namespace: String,
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    kube: crate::kube::KubeArgs,
    #[command(flatten)]
    telemetry: crate::telemetry::TelemetryArgs,
    /// Prefix of Wellspring's internal topics and consumer groups.
    #[arg(long, default_value = "wellspring.", env = "WELLSPRING_TOPIC_PREFIX")]
    topic_prefix: String,
    /// A node not heard from for this long loses its shards to the others.
    #[arg(long, default_value = "10s")]
    session_timeout: String,
    /// Shards of each grouping and task that sets none (overrides the DAG's
    /// settings.partitions; fixed once the topics exist).
    #[arg(long)]
    partitions: Option<u32>,
}

#[derive(Args)]
struct TasksArgs {
    /// The node's API.
    #[arg(
        long,
        global = true,
        default_value = "http://127.0.0.1:8080",
        env = "WELLSPRING_URL"
    )]
    url: String,
    #[command(subcommand)]
    command: TasksCommand,
}

#[derive(Subcommand)]
enum TasksCommand {
    /// Create a group (or update its settings).
    CreateGroup {
        name: String,
        /// A task running longer is presumed hanging: halted and retried.
        #[arg(long, default_value = "1h")]
        max_run_time: String,
        #[arg(long, default_value_t = 3)]
        max_attempts: u32,
        #[arg(long, default_value = "1s")]
        initial_backoff: String,
        #[arg(long, default_value = "60s")]
        max_backoff: String,
        #[arg(long, default_value_t = 10)]
        tasks_per_worker: u32,
        #[arg(long, default_value_t = 0)]
        min_workers: u32,
        #[arg(long, default_value_t = 10)]
        max_workers: u32,
        /// Keep the replicas of this Kubernetes Deployment at the desired workers.
        #[arg(long, conflicts_with = "worker_job")]
        worker_deployment: Option<String>,
        /// Keep this many Jobs made from this worker template (see `run
        /// --worker-templates`) running.
        #[arg(long)]
        worker_job: Option<String>,
    },
    /// Submit a task: `wellspring tasks submit --group G -- program args...`
    Submit {
        #[arg(long)]
        group: String,
        /// A label: --label name=value (repeat).
        #[arg(long = "label", value_name = "NAME=VALUE")]
        labels: Vec<String>,
        #[arg(long)]
        idempotency_key: Option<String>,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Lease the next task of the groups.
    Claim {
        #[arg(long = "group", required = true)]
        groups: Vec<String>,
        #[arg(long)]
        client_id: String,
        #[arg(long, default_value = "30s")]
        duration: String,
    },
    /// List a group's tasks.
    List {
        #[arg(long)]
        group: String,
        /// available, leased, succeeded or dead-lettered
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// A group's statistics and desired workers.
    Stats {
        #[arg(long)]
        group: String,
    },
    /// Read one task.
    Get { id: String },
}

#[derive(Clone, Copy, ValueEnum)]
enum GraphFormat {
    Mermaid,
    Dot,
}

/// What `demo` and `generate` share about the experiment they make up.
#[derive(Args)]
struct WorkloadArgs {
    /// Wells in use per plate (308: the interior of a 384-well plate).
    #[arg(long, default_value_t = 308)]
    wells: usize,
    /// Sites imaged per well.
    #[arg(long, default_value_t = 4)]
    sites: u16,
    /// Channels imaged per site.
    #[arg(long, default_value_t = 6)]
    channels: u8,
    /// Fraction of images sent twice.
    #[arg(long, default_value_t = 0.02)]
    duplicates: f64,
    /// Malformed records mixed into the images (they go to the dead-letter topic).
    #[arg(long, default_value_t = 0)]
    bad_records: usize,
    /// Images published per second (default: as fast as the log takes them).
    #[arg(long)]
    rate: Option<f64>,
    /// Seed of the image order and repeats (and of the demo's simulated failures).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

impl WorkloadArgs {
    fn config(&self, experiment: String, plates: u32) -> WorkloadConfig {
        WorkloadConfig {
            experiment,
            plates,
            wells: self.wells,
            sites: self.sites,
            channels: self.channels,
            duplicates: self.duplicates,
            bad_records: self.bad_records,
            seed: self.seed,
            ..WorkloadConfig::default()
        }
    }
}

#[derive(Args)]
struct DemoArgs {
    /// Plates in the experiment.
    #[arg(long, default_value_t = 2)]
    plates: u32,
    #[command(flatten)]
    telemetry: crate::telemetry::TelemetryArgs,
    #[command(flatten)]
    shape: WorkloadArgs,
    /// Fraction of microservice calls answered 503 (retried).
    #[arg(long, default_value_t = 0.01)]
    error_rate: f64,
    /// Fraction answered 200 with X-Function-Error: Unhandled (retried).
    #[arg(long, default_value_t = 0.005)]
    function_error_rate: f64,
    /// Typical microservice latency in milliseconds.
    #[arg(long, default_value_t = 2)]
    latency_ms: u64,
    /// Run this DAG file instead of the bundled reference DAG.
    #[arg(long)]
    dag: Option<PathBuf>,
    /// Give up when nothing new comes out for this many seconds.
    #[arg(long, default_value_t = 60)]
    stall_timeout: u64,
    /// Print progress lines instead of progress bars.
    #[arg(long)]
    no_progress: bool,
    /// The experiment's id (default: EXP-DEMO; on Kafka, EXP-DEMO- and the time, so
    /// runs do not mix).
    #[arg(long)]
    experiment: Option<String>,
    #[command(flatten)]
    kafka: KafkaArgs,
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

fn pairs(
    items: &[String],
    flag: &str,
) -> Result<std::collections::BTreeMap<String, String>, String> {
    items
        .iter()
        .map(|item| {
            item.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| format!("{flag} {item:?} must look like name=value"))
        })
        .collect()
}

fn duration_ms(text: &str, flag: &str) -> Result<u64, String> {
    wellspring_protocol::spec::parse_duration_text(text)
        .map(|d| d.as_millis() as u64)
        .map_err(|e| format!("{flag}: {e}"))
}

/// A client of the node's API at `url` (with the token from `WELLSPRING_API_TOKEN`, if
/// set) and a runtime to call it on.
fn api_client(url: &str) -> Result<(tokio::runtime::Runtime, crate::client::Client), String> {
    let token = crate::run::token(None)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    let client = crate::client::Client::new(url, token).map_err(|e| e.to_string())?;
    Ok((runtime, client))
}

/// Asks the node to drain, then waits until its API stops answering (the node answers
/// `/health/live` until the very end of its shutdown).
fn drain_command(args: DrainArgs) -> ExitCode {
    use crate::client::ClientError;
    let wait = match wellspring_protocol::spec::parse_duration_text(&args.wait) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: --wait {:?}: {e}", args.wait);
            return ExitCode::from(2);
        }
    };
    let (runtime, client) = match api_client(&args.url) {
        Ok(ready) => ready,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(async {
        if let Err(e) = client
            .call(reqwest::Method::POST, "/admin/drain", None)
            .await
        {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
        eprintln!(
            "draining {}: its stages flush, commit and leave their groups...",
            args.url
        );
        let started = std::time::Instant::now();
        loop {
            match client
                .call(reqwest::Method::GET, "/health/live", None)
                .await
            {
                Err(ClientError::Unreachable { .. }) => {
                    eprintln!(
                        "{} stopped after {:.1} s",
                        args.url,
                        started.elapsed().as_secs_f64()
                    );
                    return ExitCode::SUCCESS;
                }
                _ if started.elapsed() > wait => {
                    eprintln!(
                        "error: {} still answers after {}; its log says what it waits for",
                        args.url, args.wait
                    );
                    return ExitCode::from(1);
                }
                _ => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        }
    })
}

fn tasks_command(args: TasksArgs) -> ExitCode {
    use serde_json::json;

    use crate::client::{Reply, segment};
    let request = || -> Result<(reqwest::Method, String, Option<serde_json::Value>), String> {
        Ok(match &args.command {
            TasksCommand::CreateGroup {
                name,
                max_run_time,
                max_attempts,
                initial_backoff,
                max_backoff,
                tasks_per_worker,
                min_workers,
                max_workers,
                worker_deployment,
                worker_job,
            } => {
                let mut body = json!({
                    "name": name,
                    "max-run-time": duration_ms(max_run_time, "--max-run-time")?,
                    "retry": {
                        "max-attempts": max_attempts,
                        "initial-backoff": duration_ms(initial_backoff, "--initial-backoff")?,
                        "max-backoff": duration_ms(max_backoff, "--max-backoff")?,
                    },
                    "autoscaling": {"tasks-per-worker": tasks_per_worker, "min-workers": min_workers, "max-workers": max_workers},
                });
                if let Some(name) = worker_deployment {
                    body["worker-deployment"] = json!(name);
                }
                if let Some(name) = worker_job {
                    body["worker-job"] = json!(name);
                }
                (reqwest::Method::POST, "/groups".into(), Some(body))
            }
            TasksCommand::Submit {
                group,
                labels,
                idempotency_key,
                cmd,
            } => {
                let mut body =
                    json!({"cmd": cmd, "group": group, "labels": pairs(labels, "--label")?});
                if let Some(key) = idempotency_key {
                    body["idempotency-key"] = json!(key);
                }
                (reqwest::Method::POST, "/tasks".into(), Some(body))
            }
            TasksCommand::Claim {
                groups,
                client_id,
                duration,
            } => (
                reqwest::Method::POST,
                "/tasks/claim".into(),
                Some(
                    json!({"groups": groups, "client-id": client_id, "duration": duration_ms(duration, "--duration")?}),
                ),
            ),
            TasksCommand::List {
                group,
                status,
                limit,
            } => {
                let status = status
                    .as_deref()
                    .map(|s| format!("&status={}", segment(s)))
                    .unwrap_or_default();
                (
                    reqwest::Method::GET,
                    format!("/groups/{}/tasks?limit={limit}{status}", segment(group)),
                    None,
                )
            }
            TasksCommand::Stats { group } => (
                reqwest::Method::GET,
                format!("/groups/{}/stats", segment(group)),
                None,
            ),
            TasksCommand::Get { id } => (
                reqwest::Method::GET,
                format!("/tasks/{}", segment(id)),
                None,
            ),
        })
    };
    let (method, path, body) = match request() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let (runtime, client) = match api_client(&args.url) {
        Ok(ready) => ready,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(client.call(method, &path, body.as_ref()));
    match result {
        Ok(Reply::Json(json)) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&json).unwrap_or_else(|_| json.to_string())
            );
            ExitCode::SUCCESS
        }
        Ok(Reply::Empty) => {
            println!("no task available");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The Kafka log when `--kafka` was given (checked and probed), else `None`.
fn connect(kafka: &KafkaArgs, prefix: &str) -> Result<Option<Arc<dyn Log>>, ExitCode> {
    if !kafka.is_kafka() {
        return Ok(None);
    }
    match block_on(kafka.connect(prefix)) {
        Ok(Ok(Some(log))) => Ok(Some(Arc::new(log))),
        Ok(Ok(None)) => Ok(None),
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            Err(ExitCode::from(2))
        }
        Err(e) => {
            eprintln!("error: cannot start a runtime: {e}");
            Err(ExitCode::from(2))
        }
    }
}

/// A Kafka log for the operator tools, which need one (`--kafka`).
fn kafka_for(command: &str, kafka: &KafkaArgs) -> Result<KafkaSettings, ExitCode> {
    match kafka.settings() {
        Ok(Some(settings)) => Ok(settings),
        Ok(None) => {
            eprintln!(
                "error: wellspring {command} works on a Kafka cluster: give --kafka BROKERS (or set WELLSPRING_KAFKA)"
            );
            Err(ExitCode::from(2))
        }
        Err(e) => {
            eprintln!("error: {e}");
            Err(ExitCode::from(2))
        }
    }
}

fn generate_command(args: GenerateArgs) -> ExitCode {
    let settings = match kafka_for("generate", &args.kafka) {
        Ok(s) => s,
        Err(code) => return code,
    };
    if !(0.0..=1.0).contains(&args.shape.duplicates) {
        eprintln!(
            "error: --duplicates must be between 0 and 1, not {}",
            args.shape.duplicates
        );
        return ExitCode::from(2);
    }
    if args.partitions == 0 {
        eprintln!("error: --partitions must be at least 1");
        return ExitCode::from(2);
    }
    let experiment = args
        .experiment
        .clone()
        .unwrap_or_else(|| format!("EXP-{}", unix_seconds()));
    let config = args.shape.config(experiment.clone(), args.plates);
    let workload = match Workload::build(&config) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let brokers = settings.brokers.clone();
    let progress = !args.no_progress && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let result = block_on(async {
        let log = KafkaLog::connect(settings).await?;
        let topics = [
            TopicSpec::new(args.images_topic.clone(), args.partitions, Cleanup::Delete),
            TopicSpec::new(args.metadata_topic.clone(), 1, Cleanup::Compact),
        ];
        for spec in &topics {
            // A topic that exists is used as it is (the DAG's node may have made it).
            match log.partitions(&spec.name).await {
                Ok(_) => {}
                Err(LogError::UnknownTopic(_)) => log.ensure_topic(spec).await?,
                Err(e) => return Err(e),
            }
        }
        let producer = log.producer()?;
        let bar = if progress {
            ProgressBar::new(workload.messages.len() as u64)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template(
                "published [{bar:40.cyan/blue}] {pos}/{len} records {per_sec}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let started = std::time::Instant::now();
        let mut last_line = started;
        let mut sent = 0usize;
        publish(
            producer.as_ref(),
            &workload.messages,
            &args.images_topic,
            &args.metadata_topic,
            args.shape.rate,
            |batch| {
                sent += batch.len();
                bar.set_position(sent as u64);
                if !progress && last_line.elapsed() > Duration::from_secs(5) {
                    last_line = std::time::Instant::now();
                    eprintln!("published {sent}/{} records", workload.messages.len());
                }
            },
        )
        .await?;
        bar.finish_and_clear();
        Ok::<_, LogError>(started.elapsed())
    });
    match result {
        Ok(Ok(elapsed)) => {
            let images = workload.image_count();
            println!(
                "published experiment {experiment}: {} plate(s), {images} channel images ({} distinct, {} bad records) and its layout, to {brokers} in {:.1} s ({:.0} records/s)",
                args.plates,
                workload.layout.image_count(),
                args.shape.bad_records,
                elapsed.as_secs_f64(),
                workload.messages.len() as f64 / elapsed.as_secs_f64().max(1e-9)
            );
            println!(
                "check its outputs with: wellspring verify --kafka {brokers} --experiment {experiment} --wait 5m"
            );
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: cannot start a runtime: {e}");
            ExitCode::from(2)
        }
    }
}

fn verify_command(args: VerifyArgs) -> ExitCode {
    let settings = match kafka_for("verify", &args.kafka) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let wait = match wellspring_protocol::spec::parse_duration_text(&args.wait) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: --wait: {e}");
            return ExitCode::from(2);
        }
    };
    let registry = FunctionRegistry::with_builtins();
    let dag = match &args.dag {
        Some(file) => match read_dag(file, &[]) {
            Ok(dag) => dag,
            Err(code) => return code,
        },
        None => match Dag::load(demo::REFERENCE_DAG, SpecFormat::Yaml, &registry) {
            Ok(dag) => dag,
            Err(e) => {
                eprintln!("error: the bundled reference DAG: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let mut options = VerifyOptions::for_dag(&dag, &args.experiment);
    options.wait = wait;
    let progress = !args.no_progress && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let result = block_on(async {
        let log = KafkaLog::connect(settings).await?;
        let spinner = if progress {
            ProgressBar::new_spinner()
        } else {
            ProgressBar::hidden()
        };
        spinner.enable_steady_tick(Duration::from_millis(200));
        let mut last_line = std::time::Instant::now();
        let report = verify_experiment(&log, &options, |read| {
            spinner.set_message(format!("{read} output records read"));
            if !progress && last_line.elapsed() > Duration::from_secs(5) {
                last_line = std::time::Instant::now();
                eprintln!("{read} output records read");
            }
        })
        .await;
        spinner.finish_and_clear();
        report
    });
    match result {
        Ok(Ok(report)) => {
            print!("{}", report.render());
            if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: cannot start a runtime: {e}");
            ExitCode::from(2)
        }
    }
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
        Command::Tasks(args) => tasks_command(args),
        Command::Generate(args) => generate_command(args),
        Command::Verify(args) => verify_command(args),
        Command::Drain(args) => drain_command(args),
        Command::Sim(args) => crate::sim::sim_command(args),
        Command::Run(args) => {
            let args = *args;
            let mut dags = Vec::new();
            for file in &args.dags {
                match read_dag(file, &args.set) {
                    Ok(dag) => dags.push(dag),
                    Err(code) => return code,
                }
            }
            let token = match crate::run::token(args.token_file.as_ref()) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            if args.task_partitions == 0 || args.partitions == Some(0) {
                eprintln!("error: --task-partitions and --partitions must be at least 1");
                return ExitCode::from(2);
            }
            if let Some(partitions) = args.partitions {
                for dag in &mut dags {
                    dag.settings.partitions = partitions;
                }
            }
            let session_timeout =
                match wellspring_protocol::spec::parse_duration_text(&args.session_timeout) {
                    Ok(d) if d >= Duration::from_secs(1) => d,
                    Ok(_) => {
                        eprintln!("error: --session-timeout must be at least 1s");
                        return ExitCode::from(2);
                    }
                    Err(e) => {
                        eprintln!("error: --session-timeout: {e}");
                        return ExitCode::from(2);
                    }
                };
            let _telemetry = match crate::telemetry::from_args(&args.telemetry, &args.node_id) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let kube = match args.kube.settings(&args.node_id, &args.namespace) {
                Ok(kube) => kube,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let log = match connect(&args.kafka, &args.topic_prefix) {
                Ok(log) => log,
                Err(code) => return code,
            };
            let advertise_url = args.advertise_url.or_else(|| {
                args.headless_service.as_deref().map(|service| {
                    crate::run::pod_url(
                        &args.node_id,
                        service,
                        &args.namespace,
                        args.http_addr.port(),
                    )
                })
            });
            let options = crate::run::RunOptions {
                dags,
                node_id: args.node_id,
                token,
                task_partitions: args.task_partitions,
                body_limit: args.body_limit,
                advertise_url,
                prefix: args.topic_prefix,
                session_timeout,
                kube,
                ..crate::run::RunOptions::new(args.http_addr)
            };
            match crate::run::run(options, log) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Demo(args) => {
            for (name, value) in [
                ("--error-rate", args.error_rate),
                ("--function-error-rate", args.function_error_rate),
                ("--duplicates", args.shape.duplicates),
            ] {
                if !(0.0..=1.0).contains(&value) {
                    eprintln!("error: {name} must be between 0 and 1, not {value}");
                    return ExitCode::from(2);
                }
            }
            // Flushed when dropped, after the demo's report.
            let _telemetry = match crate::telemetry::from_args(&args.telemetry, "demo") {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let log = match connect(&args.kafka, &RuntimeConfig::default().prefix) {
                Ok(log) => log,
                Err(code) => return code,
            };
            let experiment = args.experiment.unwrap_or_else(|| {
                if log.is_some() {
                    format!("EXP-DEMO-{}", unix_seconds())
                } else {
                    WorkloadConfig::default().experiment
                }
            });
            let options = DemoOptions {
                workload: args.shape.config(experiment, args.plates),
                services: ServiceConfig {
                    latency: Duration::from_millis(args.latency_ms),
                    error_rate: args.error_rate,
                    function_error_rate: args.function_error_rate,
                    seed: args.shape.seed,
                    ..ServiceConfig::default()
                },
                rate: args.shape.rate,
                dag: args.dag,
                stall_timeout: Duration::from_secs(args.stall_timeout),
                progress: !args.no_progress && std::io::IsTerminal::is_terminal(&std::io::stderr()),
            };
            match demo::run(options, log) {
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
