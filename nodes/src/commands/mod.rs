//! The `wellspring` commands, one module each (its flags beside its body), and what they
//! share: [`CliError`], the one way a command fails, and the helpers that read a DAG,
//! connect to Kafka and decide on progress bars.
//!
//! A command returns `Ok(())` or a [`CliError`] carrying its exit code (1: what was
//! checked failed; 2: the command could not run) and a message that says what to do next;
//! `cli::main` prints it once. `sim` (the simulation harness) stays in `crate::sim`.

pub mod data_dir;
pub mod dead_letters;
pub mod demo;
pub mod drain;
pub mod flags;
pub mod generate;
pub mod graph;
pub mod ingest;
pub mod rerun;
pub mod run;
pub mod services;
pub mod status;
pub mod tasks;
pub mod upgrade_check;
pub mod validate;
pub mod verify;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use wellspring_actors::FunctionRegistry;
use wellspring_actors::taskstore::{ApiClient, ClientError};
use wellspring_log::Log;
use wellspring_protocol::{Dag, SpecFormat};

use crate::backend::{KafkaArgs, block_on};

/// How a command ended when it did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// What the command checked failed: a DAG spec with errors, missing outputs, a call
    /// the node refused, a node that did not stop in time.
    Failed = 1,
    /// The command could not run: a file it cannot read, a node or broker it cannot
    /// reach, settings that do not fit together.
    CouldNotRun = 2,
}

/// Why a command failed, in plain words, with its exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    pub exit: Exit,
    message: String,
}

impl CliError {
    /// What the command checked failed (exit code 1).
    pub fn failed(message: impl Into<String>) -> Self {
        Self::new(Exit::Failed, message.into())
    }

    /// The command could not run (exit code 2).
    pub fn could_not_run(message: impl Into<String>) -> Self {
        Self::new(Exit::CouldNotRun, message.into())
    }

    fn new(exit: Exit, message: String) -> Self {
        // Printed as one message: a multi-line one (a DAG's errors) ends without a newline.
        let message = message.trim_end().to_owned();
        Self { exit, message }
    }

    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.exit as u8)
    }
}

impl From<ClientError> for CliError {
    /// A node that did not answer could not be asked (2); a call it refused failed (1).
    fn from(error: ClientError) -> Self {
        match error {
            ClientError::Unreachable { .. } => CliError::could_not_run(format!(
                "{error} (is a node running? start one with `wellspring run`, or pass --url)"
            )),
            ClientError::Refused { .. } => CliError::failed(error.to_string()),
            ClientError::Unreadable { .. } | ClientError::Unwritable { .. } => {
                CliError::could_not_run(format!(
                    "{error} (is --url a Wellspring node of this version?)"
                ))
            }
        }
    }
}

/// The result of every command.
pub type CommandResult = Result<(), CliError>;

/// Runs `future` on a small runtime of the command's own.
pub fn on_runtime<T>(future: impl std::future::Future<Output = T>) -> Result<T, CliError> {
    block_on(future).map_err(|e| CliError::could_not_run(format!("cannot start a runtime: {e}")))
}

/// A client of the node's API at `url`, with the token from `WELLSPRING_API_TOKEN` if set.
pub fn node_client(url: &str) -> Result<ApiClient, CliError> {
    node_client_with_token(url, None)
}

/// A client of the node's API at `url`, with the token from `token_file` (else from
/// `WELLSPRING_API_TOKEN`, if set).
pub fn node_client_with_token(
    url: &str,
    token_file: Option<&std::path::PathBuf>,
) -> Result<ApiClient, CliError> {
    let token =
        crate::run::token(token_file).map_err(|e| CliError::could_not_run(e.to_string()))?;
    Ok(ApiClient::new(url, token)?)
}

/// The two topics a synthetic or ingested experiment goes to (those of the reference
/// DAG's sources), and the images topic's partitions when it has to be created: the
/// flags of `generate` and `ingest`.
#[derive(clap::Args)]
pub struct TopicArgs {
    /// The topic the images go to.
    #[arg(long, default_value = "images_channel")]
    pub images_topic: String,
    /// The topic the experiment's layout goes to.
    #[arg(long, default_value = "experiment_metadata")]
    pub metadata_topic: String,
    /// Partitions of the images topic on Kafka, if it has to be created.
    #[arg(long, default_value_t = 8, value_parser = flags::count())]
    pub partitions: u32,
}

/// The node a command asks, and how: its API, its token, the answer as JSON.
#[derive(clap::Args)]
pub struct NodeArgs {
    /// The node's API.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "WELLSPRING_URL")]
    pub url: String,
    /// A file holding the node's bearer token (or set WELLSPRING_API_TOKEN).
    #[arg(long)]
    pub token_file: Option<std::path::PathBuf>,
    /// Print the API's answer as JSON, for scripts.
    #[arg(long)]
    pub json: bool,
}

/// Reads and validates the DAG spec in `file`, with `overrides` for its variables.
pub fn read_dag(file: &Path, overrides: &[(String, String)]) -> Result<Dag, CliError> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        CliError::could_not_run(format!(
            "cannot read {}: {e} (give the path of a DAG spec, JSON or YAML)",
            file.display()
        ))
    })?;
    let registry = FunctionRegistry::with_builtins();
    let name = file.display().to_string();
    let mut dag = Dag::load(&text, SpecFormat::detect(&name, &text), &registry)
        .map_err(|errors| CliError::failed(format!("{name}: {errors}")))?;
    let values: BTreeMap<String, String> = overrides.iter().cloned().collect();
    dag.set_variables(&values)
        .map_err(|errors| CliError::failed(format!("{name}: {errors}")))?;
    Ok(dag)
}

/// The Kafka log when `--kafka` was given (checked and probed), else `None`.
pub fn connect(kafka: &KafkaArgs, prefix: &str) -> Result<Option<Arc<dyn Log>>, CliError> {
    if !kafka.is_kafka() {
        return Ok(None);
    }
    match on_runtime(kafka.connect(prefix))? {
        Ok(Some(log)) => Ok(Some(Arc::new(log))),
        Ok(None) => Ok(None),
        Err(e) => Err(CliError::could_not_run(e.to_string())),
    }
}

/// Progress bars only for a person at a terminal, unless `--no-progress`.
pub fn wants_progress(no_progress: bool) -> bool {
    !no_progress && std::io::IsTerminal::is_terminal(&std::io::stderr())
}

pub fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
