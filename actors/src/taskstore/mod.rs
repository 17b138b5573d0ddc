//! The task store: a durable, lease-based queue of tasks for workers (the reference
//! task-queue API), kept on the log.
//!
//! - [`table`]: the tasks of one shard and the rules of their leases (plain data);
//! - [`shard`]: a shard actor per partition of the task topic this node owns: restores
//!   the partition, serves from memory, answers once a change is durable;
//! - [`groups`]: group settings, a compacted topic every node reads;
//! - [`store`]: the handle the HTTP API and the DAGs' queue tasks call;
//! - [`peers`]: how a store reaches the other nodes' (HTTP, or in-process for simulations).
//!
//! Shards are partitions of one topic shared by every group (`wellspring.tasks`); which
//! node owns which is decided by the consumer group `wellspring.task-store`.

pub mod directory;
pub mod groups;
pub mod peers;
pub mod runner;
pub mod shard;
pub mod store;
pub mod table;

pub use peers::{HttpPeerLink, InProcessPeers, PeerAnswer, PeerCall, PeerLink};
pub use store::{ForwardedAnswer, ForwardedSubmit, Scope, TaskStore, TaskStoreConfig};
pub use table::{Change, TaskError, TaskTable};
