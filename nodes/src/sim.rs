//! `wellspring sim`: hands over to `wellspring-sim`, the simulation harness's own binary
//! (crate `wellspring-simulations`). The harness runs tokio with a paused clock, which
//! needs tokio's test utilities: the `wellspring` binary does not link it.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

/// The harness's binary.
const HARNESS: &str = "wellspring-sim";

#[derive(Args)]
#[command(disable_help_flag = true)]
pub struct SimArgs {
    /// Everything after `sim`, for `wellspring-sim` (`wellspring sim --help` lists it).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    args: Vec<OsString>,
}

/// Runs `wellspring-sim ARGS...` in this process's place: the binary beside this one (as
/// `cargo build` leaves them), else the first on `PATH`.
pub fn sim_command(args: SimArgs) -> ExitCode {
    let Some(harness) = find_harness() else {
        eprintln!(
            "error: `wellspring sim` runs the simulation harness, `{HARNESS}`, which is \
             neither beside this binary nor on PATH; build it with `cargo build --release \
             -p wellspring-simulations` (it lands beside `wellspring` in target/release), \
             or run it with `cargo run --release -p wellspring-simulations -- ARGS`"
        );
        return ExitCode::from(2);
    };
    let mut command = std::process::Command::new(&harness);
    command.args(&args.args);
    hand_over(command, &harness)
}

fn find_harness() -> Option<PathBuf> {
    let name = format!("{HARNESS}{}", std::env::consts::EXE_SUFFIX);
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join(&name)));
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(&name));
    beside
        .into_iter()
        .chain(on_path)
        .find(|path| path.is_file())
}

/// Replaces this process (its usage lines then say `wellspring sim`).
#[cfg(unix)]
fn hand_over(mut command: std::process::Command, harness: &std::path::Path) -> ExitCode {
    use std::os::unix::process::CommandExt;
    let error = command.arg0("wellspring sim").exec();
    eprintln!("error: could not run {}: {error}", harness.display());
    ExitCode::from(2)
}

/// Runs it and answers its exit code.
#[cfg(not(unix))]
fn hand_over(mut command: std::process::Command, harness: &std::path::Path) -> ExitCode {
    match command.status() {
        Ok(status) => ExitCode::from(status.code().map_or(1, |code| code as u8)),
        Err(error) => {
            eprintln!("error: could not run {}: {error}", harness.display());
            ExitCode::from(2)
        }
    }
}
