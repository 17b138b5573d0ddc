//! `wellspring dead-letters list|redrive`: the dead letters a node knows, with their
//! metadata (`GET /api/dead-letters`), and sending them back into the stage where each
//! failed, once (`POST /api/dead-letters/redrive`).

use std::fmt::Write as _;

use clap::{Args, Subcommand};
use wellspring_actors::taskstore::{ApiClient, ClientError};
use wellspring_protocol::redrive::{DeadLetterFilter, RedriveAnswer, RedriveItem, RedriveRequest};
use wellspring_protocol::status::{
    DeadLetterEntry, DeadLetterPage, DeadLetterQuery, MAX_DEAD_LETTER_LIMIT,
};

use super::{CliError, CommandResult, NodeArgs, flags, node_client_with_token, on_runtime};

#[derive(Args)]
pub struct DeadLettersArgs {
    #[command(subcommand)]
    command: DeadLettersCommand,
}

#[derive(Subcommand)]
enum DeadLettersCommand {
    /// The dead letters the node's status view keeps (the newest 10,000), oldest first:
    /// id, when, DAG node, experiment, plate, well, site, attempts and reason.
    List(ListArgs),
    /// Send dead letters back into the stage where each failed (that DAG node's input),
    /// once: a dead letter redriven before is skipped unless --again.
    Redrive(RedriveArgs),
}

/// Which dead letters.
#[derive(Args)]
struct FilterArgs {
    /// Only this experiment's.
    #[arg(long)]
    experiment: Option<String>,
    /// Only this plate's (of any experiment, unless --experiment).
    #[arg(long)]
    plate: Option<u32>,
    /// Only those of this DAG node (`image-metrics`, `images-site`, ...).
    #[arg(long)]
    node: Option<String>,
    /// Only those whose reason contains this text (any case).
    #[arg(long)]
    reason: Option<String>,
    /// Only those dead-lettered since: a duration ago (`2h`) or a UTC time
    /// (`2026-12-02T03:00:00Z`).
    #[arg(long, value_parser = flags::since)]
    since: Option<i64>,
}

impl FilterArgs {
    fn filter(&self) -> DeadLetterFilter {
        DeadLetterFilter {
            experiment: self.experiment.clone(),
            plate: self.plate,
            node: self.node.clone(),
            reason: self.reason.clone(),
            since: self.since,
        }
    }
}

#[derive(Args)]
struct ListArgs {
    #[command(flatten)]
    filter: FilterArgs,
    #[command(flatten)]
    node: NodeArgs,
}

#[derive(Args)]
struct RedriveArgs {
    /// A dead letter's id, as `list` shows it (repeat for several). With a filter too,
    /// only the ids that match it.
    #[arg(long = "id")]
    ids: Vec<String>,
    #[command(flatten)]
    filter: FilterArgs,
    /// Show what would be redriven and skipped; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Redrive dead letters that were redriven before, once more.
    #[arg(long)]
    again: bool,
    #[command(flatten)]
    node: NodeArgs,
}

pub fn dead_letters(args: DeadLettersArgs) -> CommandResult {
    match args.command {
        DeadLettersCommand::List(args) => list(args),
        DeadLettersCommand::Redrive(args) => redrive(args),
    }
}

fn client(node: &NodeArgs) -> Result<ApiClient, CliError> {
    node_client_with_token(&node.url, node.token_file.as_ref())
}

/// A node that answers 503 cannot reach its log now: the command could not run.
fn refused(error: ClientError) -> CliError {
    match &error {
        ClientError::Refused { status: 503, .. } => CliError::could_not_run(format!(
            "{error} (the node cannot do it now; run the same command again shortly)"
        )),
        _ => CliError::from(error),
    }
}

fn print_json(value: &impl serde::Serialize) -> CommandResult {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| CliError::could_not_run(e.to_string()))?;
    println!("{text}");
    Ok(())
}

fn list(args: ListArgs) -> CommandResult {
    let client = client(&args.node)?;
    let filter = args.filter.filter();
    // Every page, so that the list is whole however many the view keeps.
    let page = on_runtime(async {
        let mut all: Option<DeadLetterPage> = None;
        loop {
            let offset = all.as_ref().map_or(0, |p| p.dead_letters.len());
            let page = client
                .dead_letters(&DeadLetterQuery {
                    experiment: filter.experiment.clone(),
                    plate: filter.plate,
                    node: filter.node.clone(),
                    reason: filter.reason.clone(),
                    since: filter.since,
                    offset: Some(offset),
                    limit: Some(MAX_DEAD_LETTER_LIMIT),
                })
                .await
                .map_err(refused)?;
            let done =
                page.dead_letters.is_empty() || offset + page.dead_letters.len() >= page.total;
            match &mut all {
                Some(all) => all.dead_letters.extend(page.dead_letters),
                None => all = Some(page),
            }
            if done {
                break;
            }
        }
        Ok::<_, CliError>(all)
    })??;
    let Some(page) = page else {
        return Ok(());
    };
    if args.node.json {
        return print_json(&page);
    }
    print!("{}", render_list(&page));
    Ok(())
}

fn place(entry: &DeadLetterEntry) -> String {
    let mut out = entry.experiment.clone().unwrap_or_else(|| "-".into());
    if let Some(plate) = entry.plate {
        let _ = write!(out, " plate {plate}");
    }
    if let Some(well) = &entry.well {
        let _ = write!(out, " {well}");
    }
    if let Some(site) = entry.site {
        let _ = write!(out, " site {site}");
    }
    out
}

fn when(ms: i64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(time).to_string()
}

fn render_list(page: &DeadLetterPage) -> String {
    let mut out = String::new();
    if page.dead_letters.is_empty() {
        out.push_str("no dead letters match\n");
    }
    for entry in &page.dead_letters {
        let _ = writeln!(
            out,
            "{}  {}  {}  {}  key {}  attempts {}\n    {}",
            entry.id,
            when(entry.timestamp_ms),
            entry.node,
            place(entry),
            entry.key.as_deref().unwrap_or("-"),
            entry.attempts,
            entry.reason
        );
    }
    let _ = writeln!(
        out,
        "{} dead letter{}",
        page.total,
        if page.total == 1 { "" } else { "s" }
    );
    if page.evicted > 0 {
        let _ = writeln!(
            out,
            "({} older ones are no longer kept by the node's view; a redrive by filter still finds them on the log)",
            page.evicted
        );
    }
    out
}

fn redrive(args: RedriveArgs) -> CommandResult {
    let request = RedriveRequest {
        ids: args.ids.clone(),
        filter: args.filter.filter(),
        dry_run: args.dry_run,
        again: args.again,
    };
    if request.problem().is_some() {
        return Err(CliError::could_not_run(
            "say which dead letters to redrive: --id ID (repeatable), or a filter (--experiment, \
             --plate, --node, --reason, --since); `wellspring dead-letters list` shows them",
        ));
    }
    let client = client(&args.node)?;
    let answer = on_runtime(client.redrive(&request))?.map_err(refused)?;
    if args.node.json {
        print_json(&answer)?;
    } else {
        print!("{}", render_redrive(&answer));
    }
    if !answer.unknown_ids.is_empty() {
        return Err(CliError::failed(format!(
            "no dead letter has the id{} {} (`wellspring dead-letters list` shows the ids)",
            if answer.unknown_ids.len() == 1 {
                ""
            } else {
                "s"
            },
            answer.unknown_ids.join(", ")
        )));
    }
    Ok(())
}

fn item_line(out: &mut String, item: &RedriveItem) {
    let _ = write!(
        out,
        "  {}  {}  key {}",
        item.id,
        item.node,
        item.key.as_deref().unwrap_or("-")
    );
    if let (Some(topic), Some(partition)) = (&item.topic, item.partition) {
        let _ = write!(out, "  -> {topic}[{partition}]");
    }
    if let Some(why) = &item.why {
        let _ = write!(out, "\n      {why}");
    }
    out.push('\n');
}

fn render_redrive(answer: &RedriveAnswer) -> String {
    let mut out = String::new();
    let n = answer.redriven.len();
    let plural = if n == 1 { "" } else { "s" };
    if answer.dry_run {
        let _ = writeln!(
            out,
            "dry run: would redrive {n} dead letter{plural} (nothing was sent)"
        );
    } else {
        let _ = writeln!(out, "redrove {n} dead letter{plural}");
    }
    for item in &answer.redriven {
        item_line(&mut out, item);
    }
    if !answer.skipped.is_empty() {
        let _ = writeln!(out, "skipped {}", answer.skipped.len());
        for item in &answer.skipped {
            item_line(&mut out, item);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, why: Option<&str>) -> RedriveItem {
        RedriveItem {
            id: id.into(),
            dag: "lab".into(),
            node: "features".into(),
            key: Some("E/1/B02/1".into()),
            experiment: Some("E".into()),
            plate: Some(1),
            well: Some("B02".into()),
            site: Some(1),
            topic: Some("wellspring.lab.features.input".into()),
            partition: Some(1),
            redriven_before: u32::from(why.is_some()),
            why: why.map(str::to_owned),
        }
    }

    #[test]
    fn a_redrive_says_what_went_where_and_why_the_rest_did_not() {
        let answer = RedriveAnswer {
            dry_run: false,
            redriven: vec![item("a", None)],
            skipped: vec![item("b", Some("redriven before (1 time)"))],
            unknown_ids: Vec::new(),
        };
        let text = render_redrive(&answer);
        assert!(text.starts_with("redrove 1 dead letter\n"), "{text}");
        assert!(
            text.contains("  a  features  key E/1/B02/1  -> wellspring.lab.features.input[1]"),
            "{text}"
        );
        assert!(text.contains("skipped 1\n  b  features"), "{text}");
        assert!(text.contains("redriven before (1 time)"), "{text}");
        let dry = render_redrive(&RedriveAnswer {
            dry_run: true,
            ..answer
        });
        assert!(
            dry.starts_with("dry run: would redrive 1 dead letter (nothing was sent)"),
            "{dry}"
        );
    }
}
