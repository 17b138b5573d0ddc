//! Wellspring's node runtime and the `wellspring` command: the demo and its simulated
//! microservices, workload generation, output verification, and the command line.
//!
//! Start with [`cli::main`] for the commands, or [`demo::run`] for the demo as a library.

pub mod api;
pub mod backend;
pub mod cli;
pub mod commands;
pub mod demo;
pub mod kube;
pub mod log_io;
pub mod redrive;
pub mod replay;
pub mod run;
pub mod services;
pub mod sim;
pub mod status;
pub mod telemetry;
pub mod tls_args;
// The lab's workload and the output checks live in the simulated lab (`wellspring-lab`),
// which the simulation harness uses too; the commands use them from here.
pub use wellspring_lab::{verify, workload};
