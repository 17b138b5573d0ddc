//! Deterministic simulation of Wellspring: the real actors on the embedded log, in
//! virtual time, driven by one seeded random source.
//!
//! For now this crate holds the virtual-time runtime that tests use; the harness (many
//! nodes, injected faults, invariants checked on every run, seed sweeps) builds on it.
//! Time in Wellspring comes from tokio's clock (timers) and [`wellspring_log::Clock`]
//! (wall-clock readings), so a paused tokio runtime plus [`TokioClock`] makes a whole
//! node run in virtual time: a timer fires as soon as every task waits.

use actix_rt::SystemRunner;

pub use wellspring_log::time::TokioClock;

/// An actix system on a single-threaded tokio runtime whose clock is paused: hours of
/// simulated timers pass in milliseconds, and a run with no real I/O is deterministic.
pub fn virtual_time_system() -> std::io::Result<SystemRunner> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
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
