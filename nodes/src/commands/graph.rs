//! `wellspring graph`: a DAG as a Mermaid flowchart (GitHub renders it) or Graphviz DOT.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use wellspring_protocol::spec::{to_dot, to_mermaid};

use super::{CommandResult, read_dag};

#[derive(Clone, Copy, ValueEnum)]
enum GraphFormat {
    Mermaid,
    Dot,
}

#[derive(Args)]
pub struct GraphArgs {
    file: PathBuf,
    #[arg(long, value_enum, default_value_t = GraphFormat::Mermaid)]
    format: GraphFormat,
}

pub fn graph(args: GraphArgs) -> CommandResult {
    let dag = read_dag(&args.file, &[])?;
    print!(
        "{}",
        match args.format {
            GraphFormat::Mermaid => to_mermaid(&dag),
            GraphFormat::Dot => to_dot(&dag),
        }
    );
    Ok(())
}
