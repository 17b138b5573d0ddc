//! Deterministic simulation of Wellspring: the real actors of several nodes on one
//! embedded log, in virtual time, driven by one seed; faults injected at the seams; the
//! invariants checked at the end of every run.
//!
//! - [`run::run`] runs one seed: a [`cluster::Cluster`] of node incarnations (the real
//!   `Node`s, each behind a [`node_log::NodeLog`] through which the harness kills it and
//!   injects log faults, and a [`transport::SimTransport`] answering as the
//!   microservices), the [`lab::Lab`]'s experiments published over a minute, task-store
//!   [`workers`], and a fault driver; then it waits for the cluster to settle and checks
//!   the invariants ([`checks`]). Its [`run::SimOutcome`] carries a digest of the whole run (history
//!   and log contents): the same seed gives the same digest, byte for byte.
//! - [`sweep`] runs many seeds on every core with progress, and keeps the regression list.
//! - The lab it simulates (its messages, its microservices' answers, the output checks)
//!   is the `wellspring-lab` crate, which the `wellspring` command uses too; this crate's
//!   binary, `wellspring-sim` (`src/main.rs`), is the harness from the command line, and
//!   `wellspring sim` hands over to it.
//!
//! Time in Wellspring comes from tokio's clock (timers) and [`wellspring_log::Clock`]
//! (wall-clock readings), so a paused tokio runtime plus [`TokioClock`] makes a whole
//! node run in virtual time: a timer fires as soon as every task waits.

pub mod checks;
pub mod cluster;
pub mod config;
pub mod history;
pub mod lab;
pub mod node_log;
pub mod run;
pub mod sweep;
pub mod transport;
pub mod workers;

pub use config::{FaultRates, InjectedBug, SimConfig};
pub use run::{SimOutcome, Violation, run};

use actix_rt::SystemRunner;

pub use wellspring_log::time::TokioClock;

/// An actix system on a single-threaded tokio runtime whose clock is paused: hours of
/// simulated timers pass in milliseconds, and a run with no real I/O is deterministic.
pub fn virtual_time_system() -> std::io::Result<SystemRunner> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()?;
    Ok(actix_rt::System::with_tokio_rt(move || runtime))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use wellspring_log::Clock;

    use super::*;

    #[test]
    fn an_hour_of_timers_passes_at_once_and_the_clock_follows() {
        virtual_time_system().unwrap().block_on(async {
            let clock = TokioClock::new(1_000_000);
            tokio::time::sleep(Duration::from_secs(3600)).await;
            assert_eq!(clock.now_ms(), 1_000_000 + 3_600_000);
        });
    }
}
