//! Wellspring's actors: the supervision tree that runs DAGs on one node.
//!
//! Start with [`node::Node::start`]: it takes validated DAGs and a [`dag::NodeEnv`] (the
//! log, the clock, the HTTP transport, the function registry) and runs every DAG node as
//! actors under supervisors. The flow of one channel image:
//!
//! source shard (validate, route) → grouping shards (site, then well, plate,
//! experiment: [`aggregation`]) → task shards (HTTP calls: [`http`]) → publish topics.
//!
//! Every hop goes through the log, and each shard commits its input offsets together with
//! the outputs and state changes they caused ([`stage`]). Time, randomness and the
//! network to microservices are seams ([`wellspring_log::Clock`], [`http::SharedRng`],
//! [`http::HttpTransport`]) so the simulation harness can run this same code.

// First: the other modules use its macro.
#[macro_use]
mod invariant;

pub mod aggregation;
pub mod dag;
pub mod functions;
pub mod http;
pub mod metadata;
pub mod metrics;
pub mod node;
pub mod reader;
pub mod routing;
pub mod running_dags;
pub mod stage;
pub mod supervision;
pub mod table;
pub mod taskstore;
pub mod telemetry;

pub use dag::{NodeEnv, RuntimeConfig};
pub use functions::FunctionRegistry;
pub use node::Node;
