//! Wellspring's node runtime and the `wellspring` command: the demo and its simulated
//! microservices, workload generation, output verification, and the command line.
//!
//! Start with [`cli::main`] for the commands, or [`demo::run`] for the demo as a library.

pub mod cli;
pub mod demo;
pub mod services;
pub mod verify;
pub mod workload;
