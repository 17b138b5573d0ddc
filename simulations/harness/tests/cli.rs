//! `wellspring-sim` (and so `wellspring sim`, which hands over to it) as a user runs it.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

fn wellspring_sim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wellspring-sim"))
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn sim_runs_a_seed_replays_it_and_sweeps() {
    let digest = |out: &Output| {
        let stdout = text(&out.stdout);
        stdout
            .split("digest ")
            .nth(1)
            .map(|rest| {
                rest.split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            })
            .unwrap_or_else(|| panic!("no digest in {stdout}"))
    };
    let first = wellspring_sim(&["--seed", "3", "--faults", "all,crash=2"]);
    assert!(first.status.success(), "{}", text(&first.stdout));
    assert!(text(&first.stdout).contains("seed 3: ok"));
    let again = wellspring_sim(&["--seed", "3", "--faults", "all,crash=2"]);
    assert_eq!(
        digest(&first),
        digest(&again),
        "the same seed, the same run"
    );
    let sweep = wellspring_sim(&["--seeds", "10..12", "--no-progress"]);
    assert!(sweep.status.success(), "{}", text(&sweep.stdout));
    assert!(
        text(&sweep.stdout).contains("2 seeds (10..12)"),
        "{}",
        text(&sweep.stdout)
    );
}

#[test]
fn sim_explains_bad_settings() {
    for (args, expected) in [
        (vec!["--faults", "crsh=1"], "\"crsh\" is not a fault"),
        (vec!["--seeds", "5..2"], "the range is empty"),
        (vec!["--inject-bug", "nope"], "not a known bug"),
        (vec!["--nodes", "0"], "--nodes must be at least 1"),
    ] {
        let out = wellspring_sim(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            text(&out.stderr).contains(expected),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}
