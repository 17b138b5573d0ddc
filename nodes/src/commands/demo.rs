//! `wellspring demo`: a realistic experiment through the reference DAG on the embedded
//! log (or `--kafka`), simulated microservices on loopback (the demo itself is
//! `crate::demo`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use wellspring_actors::RuntimeConfig;

use super::flags::{self, WorkloadArgs};
use super::{CliError, CommandResult, connect, unix_seconds, wants_progress};
use crate::backend::KafkaArgs;
use crate::demo::{self, DemoOptions};
use crate::services::ServiceConfig;
use crate::telemetry::TelemetryArgs;
use crate::workload::WorkloadConfig;

#[derive(Args)]
pub struct DemoArgs {
    /// Plates in the experiment.
    #[arg(long, default_value_t = 2)]
    plates: u32,
    #[command(flatten)]
    telemetry: TelemetryArgs,
    #[command(flatten)]
    shape: WorkloadArgs,
    /// Fraction of microservice calls answered 503 (retried), 0 to 1.
    #[arg(long, default_value_t = 0.01, value_parser = flags::fraction)]
    error_rate: f64,
    /// Fraction answered 200 with X-Function-Error: Unhandled (retried), 0 to 1.
    #[arg(long, default_value_t = 0.005, value_parser = flags::fraction)]
    function_error_rate: f64,
    /// Typical microservice latency in milliseconds.
    #[arg(long, default_value_t = 2)]
    latency_ms: u64,
    /// Run this DAG file instead of the bundled reference DAG.
    #[arg(long)]
    dag: Option<PathBuf>,
    /// Give up when nothing new comes out for this long.
    #[arg(long, default_value = "60s", value_parser = flags::duration)]
    stall_timeout: Duration,
    /// Print progress lines instead of progress bars.
    #[arg(long)]
    no_progress: bool,
    /// The experiment's id (default: EXP-DEMO; on Kafka, EXP-DEMO- and the time, so
    /// runs do not mix).
    #[arg(long)]
    experiment: Option<String>,
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Serve the status API from the start of the run, and after it until Ctrl-C.
    #[arg(long)]
    serve: bool,
    /// Where --serve listens. Loopback unless you say otherwise.
    #[arg(long, default_value = "127.0.0.1:8080", requires = "serve")]
    http_addr: SocketAddr,
    /// Leave this many channel images out: their sites, wells, plates and the experiment
    /// are reported incomplete, naming what is missing.
    #[arg(long, default_value_t = 0)]
    missing: usize,
    /// Every grouping's incomplete timeout (default: the DAG's; 5s with --missing).
    #[arg(long, value_parser = flags::duration)]
    incomplete_timeout: Option<Duration>,
}

/// Blocks until SIGINT or SIGTERM.
fn wait_for_ctrl_c() -> CommandResult {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::could_not_run(e.to_string()))?;
    runtime.block_on(async {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            if let Ok(mut terminate) = signal(SignalKind::terminate()) {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
                return;
            }
        }
        let _ = tokio::signal::ctrl_c().await;
    });
    Ok(())
}

pub fn demo(args: DemoArgs) -> CommandResult {
    // Flushed when dropped, after the demo's report.
    let _telemetry =
        crate::telemetry::from_args(&args.telemetry, "demo").map_err(CliError::could_not_run)?;
    let log = connect(&args.kafka, &RuntimeConfig::default().prefix)?;
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
        stall_timeout: args.stall_timeout,
        progress: wants_progress(args.no_progress),
        serve: args.serve.then_some(args.http_addr),
        missing: args.missing,
        incomplete_timeout: args
            .incomplete_timeout
            .or((args.missing > 0).then_some(Duration::from_secs(5))),
    };
    let (report, server) =
        demo::run_serving(options, log).map_err(|e| CliError::could_not_run(e.to_string()))?;
    println!("{}", report.render());
    if let Some(server) = server {
        eprintln!(
            "the run is over; still serving its status at {} until Ctrl-C",
            server.url()
        );
        wait_for_ctrl_c()?;
        server.stop();
    }
    if report.ok() {
        Ok(())
    } else {
        Err(CliError::failed(
            "not every expected aggregate came out exactly once (see the report above)",
        ))
    }
}
