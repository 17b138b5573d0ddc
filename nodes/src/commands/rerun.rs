//! `wellspring rerun` and `wellspring backfill`: one DAG node's work done again for a
//! subset, in a new generation (`POST /api/reruns`), or done over history it never saw
//! (`POST /api/backfills`), by a node, with a progress bar.

use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use wellspring_actors::taskstore::{ApiClient, ClientError};
use wellspring_protocol::WellId;
use wellspring_protocol::rerun::{
    BackfillRequest, ReplayAnswer, ReplayProgress, RerunRequest, Subset,
};

use super::{CliError, CommandResult, NodeArgs, flags, on_runtime, wants_progress};

/// A re-run or a backfill reads a node's retained records whole: it may take long.
const CALL_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// The node to ask, and how the answer is shown.
#[derive(Args)]
struct CallArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// No progress bar (there is none when stderr is not a terminal anyway).
    #[arg(long)]
    no_progress: bool,
}

#[derive(Args)]
pub struct RerunArgs {
    /// The DAG.
    #[arg(long)]
    dag: String,
    /// The DAG node to re-run (a task or an operation: `site-features`, `images-site`).
    #[arg(long)]
    node: String,
    /// The experiment.
    #[arg(long)]
    experiment: String,
    /// Only this plate of it.
    #[arg(long)]
    plate: Option<u32>,
    /// Only these wells of the plate (`B02,C03`; `B2` is B02).
    #[arg(long, value_delimiter = ',', requires = "plate", value_parser = well)]
    wells: Vec<WellId>,
    /// The nodes downstream re-run too, for the aggregates the subset holds whole (a
    /// plate's wells and the plate; never its experiment, which holds other plates).
    #[arg(long)]
    downstream: bool,
    /// Say what would be sent; send nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    call: CallArgs,
}

#[derive(Args)]
pub struct BackfillArgs {
    /// The DAG.
    #[arg(long)]
    dag: String,
    /// The DAG node to backfill (one added after the history it should cover).
    #[arg(long)]
    node: String,
    /// Over this experiment's records.
    #[arg(long, conflicts_with = "since", required_unless_present_any = ["since", "open"])]
    experiment: Option<String>,
    /// Over the experiments still open (no experiment record yet): what a node of a new
    /// version does by itself for a node the upgrade added.
    #[arg(long)]
    open: bool,
    /// Over the records appended since: a duration ago (`2d`) or a UTC time.
    #[arg(long, value_parser = flags::since)]
    since: Option<i64>,
    /// Say what would be sent; send nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    call: CallArgs,
}

fn well(text: &str) -> Result<WellId, String> {
    WellId::parse(&text.trim().to_ascii_uppercase()).map_err(|e| e.to_string())
}

fn client(call: &CallArgs) -> Result<ApiClient, CliError> {
    let node = &call.node;
    let token = crate::run::token(node.token_file.as_ref())
        .map_err(|e| CliError::could_not_run(e.to_string()))?;
    let http = ApiClient::http(CALL_TIMEOUT)
        .map_err(|e| CliError::could_not_run(format!("cannot build the HTTP client: {e}")))?;
    Ok(ApiClient::with_http(http, &node.url, token))
}

/// A progress bar fed by the node's reports: reading, then sending.
fn bar(call: &CallArgs) -> ProgressBar {
    if !wants_progress(call.no_progress) || call.node.json {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg:8} [{bar:40}] {pos}/{len} records ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

fn report(bar: &ProgressBar, event: &ReplayProgress) {
    match event {
        ReplayProgress::Reading { read, total } => {
            bar.set_message("reading");
            bar.set_length(*total);
            bar.set_position(*read);
        }
        ReplayProgress::Sending { sent, total } => {
            bar.set_message("sending");
            bar.set_length(*total);
            bar.set_position(*sent);
        }
        ReplayProgress::Done { .. } | ReplayProgress::Failed { .. } => {}
    }
}

/// What the node said when it would not: 410 (what it needs is gone) and 400 failed
/// (1); 503 and an unreachable node could not run (2).
fn refused(error: ClientError) -> CliError {
    match &error {
        ClientError::Refused { status: 503, .. } => CliError::could_not_run(format!(
            "{error} (the node cannot do it now; run the same command again shortly: a re-run cut short takes a new generation)"
        )),
        _ => CliError::from(error),
    }
}

fn print(answer: &ReplayAnswer, json: bool, what: &str) -> CommandResult {
    if json {
        let text = serde_json::to_string_pretty(answer)
            .map_err(|e| CliError::could_not_run(e.to_string()))?;
        println!("{text}");
        return Ok(());
    }
    println!("{}", render(answer, what));
    Ok(())
}

fn render(answer: &ReplayAnswer, what: &str) -> String {
    let verb = if answer.dry_run { "would send" } else { "sent" };
    let mut out = format!(
        "{what} of {}/{}: {verb} {} of {} records read from {} into {}",
        answer.dag, answer.node, answer.sent, answer.read, answer.source, answer.topic
    );
    if answer.generation > 0 {
        out.push_str(&format!(
            "; its outputs are generation {} (header wellspring-generation)",
            answer.generation
        ));
    }
    for (experiment, count) in &answer.experiments {
        out.push_str(&format!("\n  {experiment}: {count} records"));
    }
    if answer.dry_run {
        out.push_str("\n(dry run: nothing was sent)");
    }
    out
}

pub fn rerun(args: RerunArgs) -> CommandResult {
    let request = RerunRequest {
        dag: args.dag,
        node: args.node,
        subset: Subset {
            experiment: args.experiment,
            plate: args.plate,
            wells: args.wells,
        },
        downstream: args.downstream,
        dry_run: args.dry_run,
    };
    let client = client(&args.call)?;
    let bar = bar(&args.call);
    let answer = on_runtime(client.rerun(&request, |event| report(&bar, event)))?;
    bar.finish_and_clear();
    print(&answer.map_err(refused)?, args.call.node.json, "re-run")
}

pub fn backfill(args: BackfillArgs) -> CommandResult {
    let request = BackfillRequest {
        dag: args.dag,
        node: args.node,
        experiment: args.experiment,
        since: args.since,
        open: args.open,
        dry_run: args.dry_run,
    };
    let client = client(&args.call)?;
    let bar = bar(&args.call);
    let answer = on_runtime(client.backfill(&request, |event| report(&bar, event)))?;
    bar.finish_and_clear();
    print(&answer.map_err(refused)?, args.call.node.json, "backfill")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_reads_as_what_was_done() {
        let answer = ReplayAnswer {
            dag: "lab".into(),
            node: "site-features".into(),
            generation: 2,
            dry_run: false,
            source: "wellspring.lab.site-features.input".into(),
            read: 100,
            sent: 24,
            topic: "wellspring.lab.site-features.input".into(),
            experiments: vec![("EXP-1".into(), 24)],
        };
        let text = render(&answer, "re-run");
        assert!(text.starts_with("re-run of lab/site-features: sent 24 of 100 records"));
        assert!(text.contains("generation 2") && text.contains("EXP-1: 24 records"));
        let dry = render(
            &ReplayAnswer {
                dry_run: true,
                generation: 0,
                ..answer
            },
            "backfill",
        );
        assert!(dry.contains("would send 24") && dry.contains("nothing was sent"));
        assert!(!dry.contains("generation"));
    }
}
