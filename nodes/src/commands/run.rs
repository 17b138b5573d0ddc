//! `wellspring run`: a node running DAGs (optional) and serving the task-store API, until
//! SIGINT, SIGTERM or a drain (the runtime itself is `crate::run`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::data_dir::DataDirArgs;
use super::{CliError, CommandResult, connect, flags, read_dag};
use crate::backend::KafkaArgs;
use crate::kube::KubeArgs;
use crate::run::{RunOptions, pod_url};
use crate::telemetry::TelemetryArgs;
use crate::tls_args::TlsArgs;

#[derive(Args)]
pub struct RunArgs {
    /// A DAG spec to run (repeat for several).
    #[arg(long = "dag", value_name = "FILE")]
    dags: Vec<PathBuf>,
    /// Override a DAG variable: --set name=value
    #[arg(long = "set", value_name = "NAME=VALUE", value_parser = flags::pair)]
    set: Vec<(String, String)>,
    /// Where the API listens. Loopback unless you say otherwise.
    #[arg(long, default_value = "127.0.0.1:8080", env = "WELLSPRING_HTTP_ADDR")]
    http_addr: SocketAddr,
    /// This node's identity (its consumer-group membership).
    #[arg(long, default_value = "wellspring-0", env = "POD_NAME")]
    node_id: String,
    /// A file holding the bearer token the API requires (or set WELLSPRING_API_TOKEN).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Shards of the task store (fixed once its topic exists).
    #[arg(long, default_value_t = 8, value_parser = flags::count())]
    task_partitions: u32,
    /// Largest request body the API accepts, in bytes.
    #[arg(
        long,
        default_value_t = crate::api::DEFAULT_BODY_LIMIT,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
    )]
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
    data_dir: DataDirArgs,
    #[command(flatten)]
    kube: KubeArgs,
    #[command(flatten)]
    telemetry: TelemetryArgs,
    #[command(flatten)]
    tls: TlsArgs,
    /// Prefix of Wellspring's internal topics and consumer groups.
    #[arg(long, default_value = "wellspring.", env = "WELLSPRING_TOPIC_PREFIX")]
    topic_prefix: String,
    /// A node not heard from for this long loses its shards to the others (at least 1s).
    #[arg(
        long,
        default_value = "10s",
        value_parser = flags::duration_at_least(Duration::from_secs(1))
    )]
    session_timeout: Duration,
    /// Keep warm copies of the grouping shards this node does not own, following their
    /// changelogs, so that a shard it inherits from a lost or drained node restores in
    /// milliseconds instead of replaying its changelog (0: none). Which node inherits a
    /// partition is the broker's choice, so any value above 0 keeps a copy of every
    /// grouping partition this node does not own: memory for every open aggregate.
    #[arg(long, default_value_t = 0, env = "WELLSPRING_STANDBY_REPLICAS")]
    standby_replicas: u32,
    /// Shards of each grouping and task that sets none (overrides the DAG's
    /// settings.partitions; fixed once the topics exist).
    #[arg(long, value_parser = flags::count())]
    partitions: Option<u32>,
    /// Start DAGs that `wellspring upgrade-check` refuses against the ones the cluster
    /// runs (with a warning): what the refused changes break is lost.
    #[arg(long)]
    force_upgrade: bool,
    /// A node starting with a DAG version within this long of its first start by any
    /// node backfills the nodes that version added, over the experiments still open (a
    /// roll is going on); 0s: never (then `wellspring backfill` does it by hand).
    #[arg(long, default_value = "1h", value_parser = flags::duration)]
    rolling_backfill_window: Duration,
}

pub fn run(args: RunArgs) -> CommandResult {
    let mut dags = args
        .dags
        .iter()
        .map(|file| read_dag(file, &args.set))
        .collect::<Result<Vec<_>, _>>()?;
    // TLS files are read before anything starts, so a wrong path stops the node at once.
    let tls = args.tls.settings();
    wellspring_actors::http::ReqwestTransport::with_tls(&tls)
        .map_err(|e| CliError::could_not_run(e.to_string()))?;
    let token = crate::run::token(args.token_file.as_ref())
        .map_err(|e| CliError::could_not_run(e.to_string()))?;
    if let Some(partitions) = args.partitions {
        for dag in &mut dags {
            dag.settings.partitions = partitions;
        }
    }
    let _telemetry = crate::telemetry::from_args(&args.telemetry, &args.node_id)
        .map_err(CliError::could_not_run)?;
    let kube = args
        .kube
        .settings(&args.node_id, &args.namespace)
        .map_err(CliError::could_not_run)?;
    if args.kafka.is_kafka() && args.data_dir.data_dir.is_some() {
        return Err(CliError::could_not_run(
            "--data-dir keeps the embedded log on disk, --kafka runs on a broker: give one of them",
        ));
    }
    let log = match args.data_dir.open()? {
        Some(log) => Some(log),
        None => connect(&args.kafka, &args.topic_prefix)?,
    };
    let advertise_url = args.advertise_url.or_else(|| {
        args.headless_service.as_deref().map(|service| {
            pod_url(
                &args.node_id,
                service,
                &args.namespace,
                args.http_addr.port(),
            )
        })
    });
    let options = RunOptions {
        dags,
        node_id: args.node_id,
        token,
        task_partitions: args.task_partitions,
        body_limit: args.body_limit,
        advertise_url,
        prefix: args.topic_prefix,
        session_timeout: args.session_timeout,
        kube,
        tls,
        force_upgrade: args.force_upgrade,
        rolling_backfill_window: args.rolling_backfill_window,
        standby_replicas: args.standby_replicas,
        ..RunOptions::new(args.http_addr)
    };
    crate::run::run(options, log).map_err(|e| CliError::could_not_run(e.to_string()))
}
