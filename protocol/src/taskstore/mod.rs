//! The task store's language: [`model`], its data (call bodies, group settings, the
//! durable state of a task), and [`api`], the node's HTTP API it is served on (paths,
//! headers, query strings and the other bodies) as the server, its clients and the other
//! nodes speak it.
//!
//! The model's types are re-exported here: `taskstore::Claim` is `taskstore::model::Claim`.

pub mod api;
pub mod model;

pub use model::*;
