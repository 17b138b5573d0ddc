//! `wellspring services`: the demo's simulated microservices on the reference DAG's usual
//! ports (image metrics on 9101, site features on 9102, well thumbnails on 9103, plate
//! features on 9104), so that `wellspring run --dag examples/reference-dag.yaml` works
//! by hand without the demo. Until SIGINT or SIGTERM.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use clap::Args;

use super::{CliError, CommandResult, flags};
use crate::run::StopSignals;
use crate::services::{ServiceConfig, Services};

/// The reference DAG's variables, in the order of their ports.
const SERVICES: [&str; 4] = [
    "image-metrics-url",
    "site-features-url",
    "well-thumbnails-url",
    "plate-features-url",
];

#[derive(Args)]
pub struct ServicesArgs {
    /// The address they listen on. Loopback unless you say otherwise.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// The first port: image metrics there, then one port each for site features, well
    /// thumbnails and plate features (the reference DAG's defaults from 9101). 0: any
    /// free ports (the `--set` flags to use are printed).
    #[arg(long, default_value_t = 9101)]
    first_port: u16,
    /// Typical time each call takes.
    #[arg(long, default_value = "2ms", value_parser = flags::duration)]
    latency: Duration,
    /// Fraction of calls answered 503 (to watch retries), 0 to 1.
    #[arg(long, default_value_t = 0.0, value_parser = flags::fraction)]
    error_rate: f64,
}

pub fn services(args: ServicesArgs) -> CommandResult {
    let config = ServiceConfig {
        latency: args.latency,
        error_rate: args.error_rate,
        ..ServiceConfig::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::could_not_run(format!("cannot start a runtime: {e}")))?;
    let mut signals = {
        let _context = runtime.enter();
        StopSignals::install()
            .map_err(|e| CliError::could_not_run(format!("cannot catch SIGINT/SIGTERM: {e}")))?
    };
    let mut running = Vec::new();
    for (i, variable) in SERVICES.iter().enumerate() {
        let port = match args.first_port {
            0 => Some(0),
            first => first.checked_add(i as u16),
        };
        let port = port.ok_or_else(|| {
            CliError::could_not_run(format!(
                "--first-port {} leaves no room for four ports",
                args.first_port
            ))
        })?;
        let addr = SocketAddr::new(args.host, port);
        let services = Services::start_at(addr, config.clone()).map_err(|e| {
            CliError::could_not_run(format!(
                "cannot listen on {addr} for {variable}: {e} (is `wellspring services` or the demo already running? --first-port moves them)"
            ))
        })?;
        running.push((*variable, services));
    }
    eprintln!("simulated microservices, until Ctrl-C:");
    let mut sets = Vec::new();
    for (variable, services) in &running {
        eprintln!("  {variable:<20} {}", services.url());
        sets.push(format!("--set {variable}={}", services.url()));
    }
    if args.first_port != 9101 || !args.host.is_loopback() {
        eprintln!(
            "run the reference DAG against them with: {}",
            sets.join(" ")
        );
    }
    let signal = runtime.block_on(signals.wait());
    eprintln!("{signal}: stopping the simulated microservices");
    Ok(())
}
