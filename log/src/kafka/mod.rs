//! The Kafka log: the [`Log`](crate::Log) interface on rdkafka (its bundled librdkafka).
//!
//! How the pieces fit: [`KafkaLog`] holds the clients it shares with its consumers (a
//! `Connection`). Topics go through the admin client; records go to
//! `partition_for_key(key)`, computed here as on the embedded log. A consumer is a group
//! member or a reader; each of its librdkafka clients is polled on a thread of its own,
//! which hands records and rebalance events to the async side in order: a revocation
//! blocks that thread until the departing shards have flushed and committed (so they
//! move only after), an assignment arrives before any record of the new partitions (so
//! shards restore first). A commit is a transaction (with `transactions` off: outputs
//! first, delivered, then the offsets). Consumers read `read_committed`.
//!
//! - `settings.rs`: [`KafkaSettings`]; `call.rs`: librdkafka's blocking calls off the
//!   async threads, its errors in words that say what to do.
//! - `leave.rs`: leaving a group at once as a static member; `eviction.rs`: removing a
//!   lost static member by standing in for it and leaving.
//! - `connection.rs`: the shared clients, the partition counts seen, the static groups
//!   joined; `admin.rs`: topics created or checked, partition counts, end offsets;
//!   `producer.rs`: records, their placement, the plain (idempotent) producer.
//! - `events.rs`: the channels between a poll thread and its consumer; `context.rs`:
//!   the rebalance callbacks; `poll_thread.rs`: a client and the thread that polls it.
//! - `transactions.rs`: the member's transactional producer and one commit as a
//!   transaction (`send_offsets_to_transaction`, which the group fences: a member that
//!   lost a partition cannot commit for it); `commit.rs`: a batch refused for
//!   partitions not owned, committed, and the member's record of its committed offsets.
//! - `member.rs`: a group member's client (timing, cooperative-sticky, static
//!   membership); `reader.rs`: a reader's clients (partitions assigned directly, one
//!   client per topic, so the end of a partition says which is caught up).
//! - `continuity.rs`: each partition's next offset without transactions, so a hole the
//!   broker served (a batch skipped while another producer appended) is read again.
//! - `consumer.rs`: the [`Consumer`](crate::Consumer) on those clients; `kafka_log.rs`:
//!   the [`Log`](crate::Log).
//!
//! Each module uses only the modules listed before it, never the other way.

mod admin;
mod call;
mod commit;
mod connection;
mod consumer;
mod context;
mod continuity;
mod events;
mod eviction;
mod kafka_log;
mod leave;
mod member;
mod poll_thread;
mod producer;
mod reader;
mod settings;
mod transactions;

pub use kafka_log::KafkaLog;
pub use settings::KafkaSettings;
