//! `wellspring validate`: checks a DAG spec and reports every error, with node and field.

use std::path::PathBuf;

use clap::Args;

use super::{CommandResult, flags, read_dag};

#[derive(Args)]
pub struct ValidateArgs {
    file: PathBuf,
    /// Override a variable: --set name=value
    #[arg(long = "set", value_name = "NAME=VALUE", value_parser = flags::pair)]
    set: Vec<(String, String)>,
}

pub fn validate(args: ValidateArgs) -> CommandResult {
    let dag = read_dag(&args.file, &args.set)?;
    println!(
        "{}: DAG {} is valid: {} nodes, {} topics, {} tasks (version {})",
        args.file.display(),
        dag.name,
        dag.nodes.len(),
        dag.topics.len(),
        dag.tasks.len(),
        dag.version
    );
    Ok(())
}
