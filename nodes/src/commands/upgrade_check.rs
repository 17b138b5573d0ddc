//! `wellspring upgrade-check OLD NEW`: every change from the spec a cluster runs to the
//! one it would roll to, each safe, backfilled or refused, with the reason and what to
//! do instead (the comparison is `wellspring_protocol::spec::upgrade`).

use std::fmt::Write;
use std::path::{Path, PathBuf};

use clap::Args;
use wellspring_protocol::Dag;
use wellspring_protocol::spec::upgrade::{self, ChangeClass, UpgradeReport};

use super::{CliError, CommandResult, read_dag};

#[derive(Args)]
pub struct UpgradeCheckArgs {
    /// The spec the cluster runs now.
    old: PathBuf,
    /// The spec it would roll to.
    new: PathBuf,
    /// Print the report as JSON (the exit code is the same).
    #[arg(long)]
    json: bool,
}

pub fn upgrade_check(args: UpgradeCheckArgs) -> CommandResult {
    let old = read_spec(&args.old)?;
    let new = read_spec(&args.new)?;
    let report = upgrade::compare(&old, &new).map_err(|e| CliError::failed(e.to_string()))?;
    if args.json {
        let json = serde_json::json!({
            "dag": report.dag,
            "old_version": report.old_version,
            "new_version": report.new_version,
            "verdict": report.verdict(),
            "changes": report.changes,
        });
        println!("{json:#}");
    } else {
        print!("{}", render(&report));
    }
    verdict(&report)
}

/// A spec that cannot be read or does not validate: the check could not run (exit 2).
fn read_spec(file: &Path) -> Result<Dag, CliError> {
    read_dag(file, &[]).map_err(|e| {
        CliError::could_not_run(format!(
            "{e}\n(upgrade-check compares two valid specs: fix this one first; `wellspring validate {}` lists every error)",
            file.display()
        ))
    })
}

/// Exit 0 when a cluster may roll to the new spec, 1 when any change is refused.
fn verdict(report: &UpgradeReport) -> CommandResult {
    let refused = report.refused().count();
    if refused == 0 {
        return Ok(());
    }
    Err(CliError::failed(format!(
        "the upgrade of {} from version {} to {} is refused: {refused} change{} would break what the running cluster holds (see \"instead\" above); `wellspring run` refuses the new spec as well unless started with --force-upgrade",
        report.dag,
        report.old_version,
        report.new_version,
        if refused == 1 { "" } else { "s" }
    )))
}

/// The report for a person: a summary line, then each change with its class, reason and
/// advice.
pub fn render(report: &UpgradeReport) -> String {
    let mut out = String::new();
    let count = |class| report.of_class(class).count();
    let _ = writeln!(
        out,
        "DAG {}: version {} -> {}, {} change{}: {} safe, {} backfilled, {} refused",
        report.dag,
        report.old_version,
        report.new_version,
        report.changes.len(),
        if report.changes.len() == 1 { "" } else { "s" },
        count(ChangeClass::Safe),
        count(ChangeClass::Backfilled),
        count(ChangeClass::Refused),
    );
    if report.changes.is_empty() {
        let _ = writeln!(out, "  the two specs are the same DAG");
    }
    let width = report
        .changes
        .iter()
        .map(|c| c.location.len())
        .max()
        .unwrap_or(0);
    for change in &report.changes {
        let _ = writeln!(
            out,
            "\n  {:<10}  {:<width$}  {}",
            change.class.as_str(),
            change.location,
            change.change
        );
        let _ = writeln!(out, "  {:<10}  why: {}", "", change.reason);
        if let Some(advice) = &change.advice {
            let label = match change.class {
                ChangeClass::Refused => "instead",
                _ => "what it needs",
            };
            let _ = writeln!(out, "  {:<10}  {label}: {advice}", "");
        }
    }
    out
}
