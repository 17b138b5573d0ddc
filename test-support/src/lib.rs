//! What the tests and benchmarks of several of Wellspring's crates share, as a crate of
//! its own instead of files included by path:
//!
//! - [`broker`]: a Kafka-compatible broker (tansu) on a free loopback port, stopped when
//!   dropped;
//! - [`node_process`]: `wellspring run --kafka` as a child process (started, stopped with
//!   SIGTERM, killed with SIGKILL);
//! - [`cluster_watch`]: a cluster of such processes watched from outside (records on
//!   topics, partitions owned);
//! - [`dags`]: DAG specs the benchmarks share;
//! - [`images`]: tiny real TIFF and PNG files, as microscopes write them;
//! - [`record_sink`]: a node's record ingest (`POST /api/topics/{topic}/records`) on a
//!   loopback port, keeping what it is sent.
//!
//! It depends on the log and plain libraries only, so that the log crate can use it in
//! its own tests. A failure to set something up is a failure of the test that asked for
//! it: these helpers panic with a message saying what did not work.

use std::path::{Path, PathBuf};

pub mod broker;
pub mod cluster_watch;
pub mod dags;
pub mod images;
pub mod node_process;
pub mod record_sink;

/// The repository's root directory (this crate's parent): where `examples/` and
/// `scripts/` are, and where a `wellspring` process runs.
pub fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("test-support/ lives inside the repository")
        .to_path_buf()
}
