//! `wellspring drain`: stops a node as SIGTERM does (the API first, then every stage
//! flushes, commits and leaves its groups) and waits until it has: for a Kubernetes
//! preStop hook.

use std::time::{Duration, Instant};

use clap::Args;
use wellspring_actors::taskstore::ClientError;

use super::{CliError, CommandResult, flags, node_client, on_runtime};

/// How often the node is asked whether it still answers.
const POLL: Duration = Duration::from_millis(100);

#[derive(Args)]
pub struct DrainArgs {
    /// The node's API.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "WELLSPRING_URL")]
    url: String,
    /// How long to wait for the node to stop.
    #[arg(long, default_value = "2m", value_parser = flags::duration)]
    wait: Duration,
}

/// Asks the node to drain, then waits until its API stops answering (the node answers
/// `/health/live` until the very end of its shutdown).
pub fn drain(args: DrainArgs) -> CommandResult {
    let client = node_client(&args.url)?;
    on_runtime(async {
        client.drain().await?;
        eprintln!(
            "draining {}: its stages flush, commit and leave their groups...",
            args.url
        );
        let started = Instant::now();
        loop {
            match client.live().await {
                Err(ClientError::Unreachable { .. }) => {
                    eprintln!(
                        "{} stopped after {:.1} s",
                        args.url,
                        started.elapsed().as_secs_f64()
                    );
                    return Ok(());
                }
                _ if started.elapsed() > args.wait => {
                    return Err(CliError::failed(format!(
                        "{} still answers after {:?}; its log says what it waits for (or give it longer with --wait)",
                        args.url, args.wait
                    )));
                }
                _ => tokio::time::sleep(POLL).await,
            }
        }
    })?
}
