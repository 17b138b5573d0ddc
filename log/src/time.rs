//! The clock seam: wall-clock time comes from a [`Clock`] so that the simulation harness
//! can run the real code in virtual time.
//!
//! Durations and timers use `tokio::time`, which a paused tokio runtime advances
//! virtually; [`TokioClock`] derives wall-clock readings from it, so a simulated run is
//! the same at every replay.

use std::time::{SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The machine's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
}

/// Wall-clock time that advances with tokio's (possibly paused, virtual) clock from a
/// fixed epoch: deterministic under a paused runtime.
#[derive(Debug, Clone)]
pub struct TokioClock {
    start: tokio::time::Instant,
    epoch_ms: i64,
    /// Added to every reading: simulates a node whose clock is off.
    skew_ms: i64,
}

impl TokioClock {
    pub fn new(epoch_ms: i64) -> Self {
        Self {
            start: tokio::time::Instant::now(),
            epoch_ms,
            skew_ms: 0,
        }
    }

    pub fn with_skew(mut self, skew_ms: i64) -> Self {
        self.skew_ms = skew_ms;
        self
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> i64 {
        self.epoch_ms + self.start.elapsed().as_millis() as i64 + self.skew_ms
    }
}
