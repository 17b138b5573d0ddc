//! The simulated microscopy lab, as both the `wellspring` command and the simulation
//! harness (`wellspring-simulations`) use it:
//!
//! - [`workload`]: what the lab sends: synthetic experiments, their layouts and images
//!   (out of order, duplicated, malformed as asked), and publishing them to a log;
//! - [`services`]: what the lab's microservices answer (image metrics, site features,
//!   well thumbnails, plate features), computed from the request alone: the demo serves
//!   them over HTTP, the harness in process;
//! - [`expectations`]: which keys each output topic of a DAG must carry for a layout;
//! - [`verify`]: what must come out: every expected aggregate exactly once, every input
//!   accounted for.
//!
//! Nothing here pauses or drives time: the release binary links this crate, and only the
//! harness runs tokio with its test utilities.

pub mod expectations;
pub mod services;
pub mod verify;
pub mod workload;
