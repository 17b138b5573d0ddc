//! The `wellspring` binary: see `wellspring --help`.

fn main() -> std::process::ExitCode {
    wellspring_nodes::cli::main()
}
