//! Invariants asserted where they are kept, as TigerBeetle does: in debug builds (every
//! test build and the simulation harness) the engine checks, at the place that keeps
//! the state, what must always hold of it: an aggregate is emitted once per key, a shard
//! is handed only records of the partition it owns, a committed position only grows.
//! Release builds compile the checks out.
//!
//! A violation is a bug in the engine, never in a user's function, so it must not be
//! contained like one: a shard catches panics (and the runtime swallows a panic that
//! kills an actor), and a run would go on past the bug. Outside this crate's own unit
//! tests a violation therefore aborts the process, naming what broke; inside them it
//! panics, so a `#[should_panic]` test can show that a check catches what it should.

/// Asserts an engine invariant in debug builds; the message names the values involved.
macro_rules! invariant {
    ($condition:expr, $($message:tt)+) => {
        if cfg!(debug_assertions) && !$condition {
            $crate::invariant::violated(format_args!($($message)+));
        }
    };
}

/// Reports a violated invariant: a panic in this crate's unit tests, else an abort.
#[cold]
#[track_caller]
pub(crate) fn violated(message: std::fmt::Arguments<'_>) -> ! {
    let at = std::panic::Location::caller();
    if cfg!(test) {
        panic!("invariant violated at {at}: {message}");
    }
    eprintln!("invariant violated at {at}: {message}");
    std::process::abort()
}
