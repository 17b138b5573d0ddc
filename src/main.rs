//! The `wellspring` binary: see `wellspring --help`.

// mimalloc, with Wellspring's settings (see the wellspring-allocator crate for why).
#[global_allocator]
static ALLOCATOR: wellspring_allocator::Allocator = wellspring_allocator::Allocator;

fn main() -> std::process::ExitCode {
    wellspring_allocator::configure();
    wellspring_nodes::cli::main()
}
