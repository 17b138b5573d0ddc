//! The allocator Wellspring's binaries and node benches run on, and its settings.
//!
//! mimalloc rather than glibc's malloc: with the HTTP API's threads, the actors' thread
//! and many small allocations, glibc's arenas cost a tenth of a node's time (task-store
//! lifecycles went from 7.3k to 9.3k per second, batched from 35k to 59k).
//!
//! Each binary declares the allocator and calls [`configure`] first thing in `main`:
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOCATOR: wellspring_allocator::Allocator = wellspring_allocator::Allocator;
//! ```

use std::time::Duration;

/// The global allocator (a unit struct: `Allocator` is also its value).
pub use mimalloc::MiMalloc as Allocator;

/// How long freed memory stays with the process before mimalloc returns it to the
/// kernel. mimalloc's own default is 1 s; a node's stage cycles free and take back tens
/// of megabytes again and again, and every page taken back after a purge is faulted in
/// and zeroed by the kernel anew (a 2-MB huge page at a time): `clear_page_erms` was 12%
/// of the lab pipeline bench's CPU. Ten seconds, jemalloc's default decay, keeps a busy
/// node's memory while still handing back what an idle one no longer uses.
pub const PURGE_DELAY: Duration = Duration::from_millis(PURGE_DELAY_MS as u64);

/// [`PURGE_DELAY`] as mimalloc takes it.
const PURGE_DELAY_MS: std::os::raw::c_long = 10_000;

/// `mi_option_purge_delay`, the 16th of mimalloc's `mi_option_t` (v2 names it
/// `reset_delay` too), which libmimalloc-sys does not name. The test checks that it is the
/// option whose default is the purge delay's.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Applies Wellspring's allocator settings; call it first in `main`.
pub fn configure() {
    // SAFETY: `mi_option_set` stores one option value; it takes no pointers and may be
    // called at any time (mimalloc reads its options atomically).
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS);
    }
}

/// The purge delay mimalloc runs with now (what [`configure`] set, or its default).
pub fn purge_delay() -> Duration {
    // SAFETY: `mi_option_get` reads one option value; no pointers.
    #[allow(unsafe_code)]
    let millis = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
    Duration::from_millis(u64::try_from(millis).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configure_sets_the_purge_delay() {
        // The option is the purge delay: mimalloc's default for it, until configured.
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(purge_delay(), Duration::from_secs(1));
        }
        configure();
        assert_eq!(purge_delay(), PURGE_DELAY);
    }
}
