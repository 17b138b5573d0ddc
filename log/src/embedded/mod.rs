//! The embedded log: every topic and consumer group in this process's memory.
//!
//! Its consumer groups behave like Kafka's with the cooperative-sticky assignor and
//! static membership:
//! - a member that joins or leaves triggers a rebalance; partitions that stay put keep
//!   their owner, partitions that move are first revoked from their owner (at its next
//!   poll, through its listener, which commits) and only then assigned to the new one;
//! - a member not heard from within its session timeout is presumed dead: its
//!   partitions move without a commit (it finds them `lost` if it comes back);
//! - a member with an instance id that rejoins while its old self is still registered
//!   takes over the old assignment with no rebalance;
//! - a commit is atomic (outputs and offsets together, as with Kafka transactions and
//!   `read_committed`) and refused for partitions the member no longer owns.
//!
//! Time is tokio's, so under a paused runtime sessions expire in virtual time.
//! Everything is kept in memory; compacted topics drop superseded values as they grow.
//! A durable log ([`EmbeddedLog::open`]) also journals every change to a directory
//! before acknowledging it, and restores from it (`durable/`).
//!
//! The pieces, each using only those listed before it: `storage.rs` (the topics and
//! their records), `coordinator.rs` (each group's members, assignment, holders and
//! committed offsets), `durable/` (the on-disk journal and snapshots), `shared.rs` (both under one lock, and the change counter that
//! wakes waiting consumers), `consumer.rs` (a member or reader polling, committing,
//! closing), `embedded_log.rs` ([`EmbeddedLog`]: the [`Log`](crate::Log) and its
//! producer).

mod consumer;
mod coordinator;
mod durable;
mod embedded_log;
mod shared;
mod storage;

pub use coordinator::GroupView;
pub use durable::{DurableOptions, Fsync, Retention, StorageError};
pub use embedded_log::EmbeddedLog;
