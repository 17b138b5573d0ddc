//! The task store: a durable, lease-based queue of tasks for workers (the reference
//! task-queue API), kept on the log.
//!
//! - [`table`]: the tasks of one shard and the rules of their leases (plain data);
//! - [`shard`]: a shard actor per partition of the task topic this node owns: restores
//!   the partition, serves from memory, answers once a change is durable;
//! - [`groups`]: group settings, a compacted topic every node reads;
//! - [`store`]: the handle the HTTP API and the DAGs' queue tasks call;
//! - [`link`]: what a store forwards to another node's, and the [`PeerLink`] seam;
//! - [`peers`]: the links (another node's HTTP API, or its store in the same process);
//! - [`client`]: a typed client of a node's HTTP API (the peer link's and the CLI's).
//!
//! Modules depend one way: `peers` → `store` → `link`, and `peers` → `client`. The wire
//! protocol (paths, headers, bodies) is `wellspring_protocol::taskstore::api`.
//!
//! Shards are partitions of one topic shared by every group (`wellspring.tasks`); which
//! node owns which is decided by the consumer group `wellspring.task-store`.

pub mod client;
pub mod directory;
pub mod groups;
pub mod link;
pub mod peers;
pub mod runner;
pub mod shard;
pub mod store;
pub mod table;

pub use client::{ApiClient, ClientError};
pub use link::{PeerAnswer, PeerCall, PeerLink};
pub use peers::{HttpPeerLink, InProcessPeers};
pub use store::{Scope, TaskStore, TaskStoreConfig};
pub use table::{Change, TaskError, TaskTable};
