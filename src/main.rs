//! The `wellspring` binary: see `wellspring --help`.

// mimalloc rather than glibc's malloc: with the HTTP API's threads, the actors' thread and
// many small allocations, glibc's arenas cost a tenth of the node's time (task-store
// lifecycles went from 7.3k to 9.3k per second, batched from 35k to 59k).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    wellspring_nodes::cli::main()
}
