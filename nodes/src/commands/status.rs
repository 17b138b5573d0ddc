//! `wellspring status [EXPERIMENT] [--plate N]`: where experiments stand, from a node's
//! status API: every experiment's progress per level; one experiment's plates and
//! incomplete reports; one plate as a map in its real geometry, one cell per well, the
//! state by character and colour, with a legend. `--watch` redraws in place, `--json`
//! prints the API's answer.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::time::Duration;

use clap::Args;
use wellspring_protocol::status::{
    ExperimentDetail, ExperimentList, ExperimentSummary, LevelState, PlateDetail,
};

use super::{CliError, CommandResult, flags, node_client, on_runtime};

#[derive(Args)]
pub struct StatusArgs {
    /// The experiment to show (default: every experiment).
    experiment: Option<String>,
    /// Show this plate of the experiment as a plate map.
    #[arg(long, requires = "experiment")]
    plate: Option<u32>,
    /// The node's API.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "WELLSPRING_URL")]
    url: String,
    /// Redraw in place until Ctrl-C.
    #[arg(long, conflicts_with = "json")]
    watch: bool,
    /// How often --watch redraws.
    #[arg(long, default_value = "1s", value_parser = flags::duration)]
    interval: Duration,
    /// Print the API's answer as JSON, for scripts.
    #[arg(long)]
    json: bool,
    /// Colour the plate map: auto (when stdout is a terminal and NO_COLOR is unset),
    /// always or never.
    #[arg(long, default_value = "auto", value_parser = ["auto", "always", "never"])]
    color: String,
}

/// What was asked for, as the node answered it.
enum Answer {
    All(ExperimentList),
    Experiment(Box<ExperimentDetail>),
    Plate(Box<PlateDetail>),
}

pub fn status(args: StatusArgs) -> CommandResult {
    let client = node_client(&args.url)?;
    let colour = match args.color.as_str() {
        "always" => true,
        "never" => false,
        _ => std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    let fetch = || -> Result<Answer, CliError> {
        on_runtime(async {
            Ok::<_, CliError>(match (&args.experiment, args.plate) {
                (None, _) => Answer::All(client.status_experiments().await?),
                (Some(id), None) => {
                    Answer::Experiment(Box::new(client.status_experiment(id).await?))
                }
                (Some(id), Some(plate)) => {
                    Answer::Plate(Box::new(client.status_plate(id, plate).await?))
                }
            })
        })?
    };
    if args.json {
        let text = match fetch()? {
            Answer::All(list) => serde_json::to_string_pretty(&list),
            Answer::Experiment(detail) => serde_json::to_string_pretty(&detail),
            Answer::Plate(plate) => serde_json::to_string_pretty(&plate),
        }
        .map_err(|e| CliError::could_not_run(e.to_string()))?;
        println!("{text}");
        return Ok(());
    }
    if !args.watch {
        print!("{}", render(&fetch()?, colour));
        return Ok(());
    }
    loop {
        let text = match fetch() {
            Ok(answer) => render(&answer, colour),
            Err(e) => format!("{e}\n"),
        };
        // Home, draw, clear what is left of the previous frame.
        print!(
            "\x1b[H\x1b[2J{text}\n(refreshing every {:?}; Ctrl-C to stop)\n",
            args.interval
        );
        std::thread::sleep(args.interval);
    }
}

fn render(answer: &Answer, colour: bool) -> String {
    match answer {
        Answer::All(list) => render_list(list),
        Answer::Experiment(detail) => render_experiment(detail),
        Answer::Plate(plate) => render_plate(plate, colour),
    }
}

fn render_levels(out: &mut String, summary: &ExperimentSummary) {
    let _ = writeln!(
        out,
        "{}  {}  ({} plate{}, DAG {}){}",
        summary.id,
        summary.state.as_str(),
        summary.plates,
        if summary.plates == 1 { "" } else { "s" },
        summary.dag,
        if summary.layout_known {
            ""
        } else {
            "  layout not received yet"
        }
    );
    for level in &summary.levels {
        let expected = if summary.layout_known {
            level.expected.to_string()
        } else {
            "?".into()
        };
        let percent = if level.expected > 0 {
            format!(
                "{:>5.1}%",
                level.present as f64 * 100.0 / level.expected as f64
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "  {:<20} {:>9} / {:<9} {percent}{}",
            level.name,
            level.present,
            expected,
            if level.dead_lettered > 0 {
                format!("  {} dead-lettered", level.dead_lettered)
            } else {
                String::new()
            }
        );
    }
    let _ = writeln!(
        out,
        "  dead letters: {}   incomplete reports: {}",
        summary.dead_letters, summary.incomplete_reports
    );
}

fn render_list(list: &ExperimentList) -> String {
    let mut out = String::new();
    if let Some(error) = &list.view_error {
        let _ = writeln!(out, "STALE: the node's view cannot read the log: {error}\n");
    }
    if list.experiments.is_empty() {
        out.push_str("no experiments yet (images on the DAG's input topic start one)\n");
    }
    for summary in &list.experiments {
        render_levels(&mut out, summary);
        out.push('\n');
    }
    if list.evicted > 0 {
        let _ = writeln!(
            out,
            "({} older experiments forgotten by the view)",
            list.evicted
        );
    }
    out
}

fn render_experiment(detail: &ExperimentDetail) -> String {
    let mut out = String::new();
    render_levels(&mut out, &detail.summary);
    let _ = writeln!(
        out,
        "\n  {:>5}  {:<16} {:<11} {:>9} {:>13}  wells by state",
        "plate", "barcode", "state", "geometry", "images"
    );
    for plate in &detail.plate_list {
        let states: Vec<String> = plate
            .wells_by_state
            .iter()
            .map(|(state, n)| format!("{} {n}", state.as_str()))
            .collect();
        let _ = writeln!(
            out,
            "  {:>5}  {:<16} {:<11} {:>9} {:>13}  {}",
            plate.plate,
            plate.barcode.as_deref().unwrap_or("-"),
            plate.state.as_str(),
            format!("{}x{}", plate.geometry.rows, plate.geometry.columns),
            format!("{}/{}", plate.images.present, plate.images.expected),
            states.join(", ")
        );
    }
    if !detail.incomplete.is_empty() {
        let _ = writeln!(out, "\n  incomplete reports (newest last):");
        for report in &detail.incomplete {
            let _ = writeln!(out, "    {}", report.description);
        }
    }
    out
}

/// ANSI colour of a state (with its character, never alone).
fn paint(state: LevelState, text: &str, colour: bool) -> String {
    if !colour {
        return text.to_owned();
    }
    let code = match state {
        LevelState::Waiting => "2",
        LevelState::Partial => "33",
        LevelState::Complete => "32",
        LevelState::Incomplete => "1;35",
        LevelState::DeadLettered => "1;31",
        LevelState::NotInUse => "90",
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

fn row_name(row: u8) -> String {
    if row < 26 {
        char::from(b'A' + row).to_string()
    } else {
        format!("A{}", char::from(b'A' + row - 26))
    }
}

fn render_plate(plate: &PlateDetail, colour: bool) -> String {
    let mut out = String::new();
    let summary = &plate.summary;
    let geometry = summary.geometry;
    let _ = writeln!(
        out,
        "{} plate {}{}  {}  {} wells ({}x{}), {} in use, images {}/{}",
        plate.experiment,
        summary.plate,
        summary
            .barcode
            .as_deref()
            .map_or(String::new(), |b| format!(" ({b})")),
        summary.state.as_str(),
        geometry.wells,
        geometry.rows,
        geometry.columns,
        summary.wells_in_use,
        summary.images.present,
        summary.images.expected
    );
    // Wide plates get one character per well, the others a space between wells.
    let width = if geometry.columns > 24 { 1 } else { 3 };
    let mut header = String::from("    ");
    for column in 1..=geometry.columns {
        if width == 1 {
            header.push(char::from(b'0' + column % 10));
        } else {
            let _ = write!(header, "{column:>3}");
        }
    }
    let _ = writeln!(out, "{header}");
    for row in 0..geometry.rows {
        let _ = write!(out, "{:>3} ", row_name(row));
        for column in 1..=geometry.columns {
            let index = usize::from(row) * usize::from(geometry.columns) + usize::from(column) - 1;
            let state = plate
                .wells
                .get(index)
                .map_or(LevelState::NotInUse, |w| w.state);
            let cell = if width == 1 {
                state.symbol().to_string()
            } else {
                format!("  {}", state.symbol())
            };
            out.push_str(&paint(state, &cell, colour));
        }
        out.push('\n');
    }
    let legend: Vec<String> = LevelState::ALL
        .iter()
        .map(|state| {
            let n = summary.wells_by_state.get(state).copied().unwrap_or(0);
            format!(
                "{} {} {n}",
                paint(*state, &state.symbol().to_string(), colour),
                state.as_str()
            )
        })
        .collect();
    let _ = writeln!(out, "\n  legend: {}", legend.join("   "));
    let attention: Vec<String> = plate
        .wells
        .iter()
        .filter(|w| matches!(w.state, LevelState::Incomplete | LevelState::DeadLettered))
        .take(20)
        .map(|w| {
            let missing: Vec<String> = w
                .sites
                .iter()
                .filter(|s| !s.channels_missing.is_empty())
                .map(|s| format!("site {} channels {:?}", s.site, s.channels_missing))
                .collect();
            let dead: Vec<String> = w
                .tasks
                .iter()
                .filter(|t| t.dead_lettered > 0)
                .map(|t| format!("{} dead-lettered {}", t.task, t.dead_lettered))
                .collect();
            format!(
                "  {} {}: {}",
                w.well,
                w.state.as_str(),
                [missing, dead].concat().join("; ")
            )
        })
        .collect();
    if !attention.is_empty() {
        let _ = writeln!(out, "\n  wells that need attention:");
        for line in attention {
            let _ = writeln!(out, "{line}");
        }
    }
    if !plate.qc.is_empty() {
        let figures: Vec<String> = plate
            .qc
            .iter()
            .map(|(k, v)| format!("{k} {v:.3}"))
            .collect();
        let _ = writeln!(out, "\n  plate QC: {}", figures.join(", "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use wellspring_protocol::status::{Geometry, PlateSummary, Progress, WellStatus};

    fn well(row: u8, column: u8, state: LevelState) -> WellStatus {
        WellStatus::unseen(format!("{}{column:02}", row_name(row)), row, column, state)
    }

    #[test]
    fn a_1536_well_plate_map_has_one_character_per_well_and_a_legend() {
        let geometry = Geometry::fitting(32, 48);
        let mut wells = Vec::new();
        for row in 0..32 {
            for column in 1..=48 {
                wells.push(well(
                    row,
                    column,
                    if row == 1 && column == 2 {
                        LevelState::Incomplete
                    } else {
                        LevelState::Complete
                    },
                ));
            }
        }
        let plate = PlateDetail {
            experiment: "E".into(),
            summary: PlateSummary {
                plate: 1,
                barcode: None,
                state: LevelState::Partial,
                geometry,
                wells_in_use: 1536,
                wells_by_state: BTreeMap::new(),
                images: Progress::default(),
                first_image_ms: None,
                last_image_ms: None,
            },
            qc: BTreeMap::new(),
            qc_ranges: BTreeMap::new(),
            wells,
        };
        let text = render_plate(&plate, false);
        let rows: Vec<&str> = text.lines().skip(2).take(32).collect();
        assert_eq!(rows.len(), 32);
        assert!(rows.iter().all(|r| r.len() == 4 + 48), "{text}");
        assert_eq!(&rows[1][4..7], "#!#", "{text}");
        assert!(rows[31].starts_with(" AF "), "{text}");
        assert!(
            text.contains("legend: . waiting 0   o partial 0   # complete 0"),
            "{text}"
        );
        assert!(text.contains("B02 incomplete"), "{text}");
    }
}
