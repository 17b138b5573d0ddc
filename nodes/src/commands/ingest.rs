//! `wellspring ingest`: scans a folder an imager writes (with `--watch`, follows it) and
//! publishes one `channel_level` record per new, stable channel image, after the
//! experiment's layout, to Kafka or to a node over HTTP (or, with `--dry-run`, prints
//! them). What to read and take is `wellspring_ingest`'s; this module is the command.
//!
//! Idempotent twice over: the published files are kept in a state file (a rescan
//! publishes nothing new), and each record's key is its channel key, read from the
//! file's location, so a repeat (a lost state file) is dropped by the engine.

mod publish;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use wellspring_ingest::{
    Convention, Ingest, LayoutFlags, PlateMap, ScanReport, Scanner, Stability, State, UserPattern,
};
use wellspring_protocol::{ExperimentId, ExperimentLayout};

pub use publish::{OutRecord, PostError, Sink, post_records, records_body};

use super::{CliError, CommandResult, TopicArgs, flags, on_runtime, wants_progress};
use crate::backend::KafkaArgs;

#[derive(Args)]
pub struct IngestArgs {
    /// The folder the imager writes (a plate's, or one with a plate per folder).
    dir: PathBuf,
    /// The imager's file names: phenix (r02c05f03p01-ch2sk1fk1fl1.tiff), imagexpress
    /// (B05_s3_w2.tif), cv8000 (PLATE_B05_T0001F003L01A01Z01C02.tif) or rxrx
    /// (Plate1/B05_s3_w2.png).
    #[arg(long, value_parser = ["phenix", "imagexpress", "cv8000", "cv7000", "rxrx"], required_unless_present = "pattern")]
    convention: Option<String>,
    /// Your own convention: a regular expression with named groups well (or row and
    /// column), channel, and optionally site, plane, timepoint, plate, barcode. Matched
    /// against the file name, or the path below DIR when it contains a '/'.
    #[arg(long, conflicts_with = "convention")]
    pattern: Option<String>,
    /// The experiment's id.
    #[arg(long)]
    experiment: String,
    /// Every image's plate number (default: from the folders, the plate map, or 1).
    #[arg(long, value_parser = flags::count())]
    plate: Option<u32>,
    /// Every image's plate barcode (default: from the names or folders).
    #[arg(long)]
    barcode: Option<String>,
    /// The experiment's layout as a CSV: CellProfiler LoadData (Metadata_Plate,
    /// Metadata_Well, Metadata_Site) or rxrx-style (experiment, plate, well, site).
    #[arg(long, value_name = "CSV")]
    plate_map: Option<PathBuf>,
    /// The layout's wells, for every plate, when there is no plate map: B02:O23,A01.
    #[arg(long, value_delimiter = ',')]
    wells: Vec<String>,
    /// The layout's sites per well.
    #[arg(long, value_parser = flags::count())]
    sites: Option<u32>,
    /// The layout's channels per site.
    #[arg(long, value_parser = flags::count())]
    channels: Option<u32>,
    /// The z-plane to take of z-stacks (names with a plane; others are passed over).
    #[arg(long, default_value_t = 1)]
    plane: u32,
    /// The time point to take of time series.
    #[arg(long, default_value_t = 1)]
    timepoint: u32,
    /// The cell type of the images, when the plate map does not say.
    #[arg(long, default_value = "unknown")]
    cell_type: String,
    /// A node to publish to, over HTTP (POST /api/topics/{topic}/records); its token
    /// from WELLSPRING_API_TOKEN.
    #[arg(long, value_name = "NODE")]
    url: Option<String>,
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Keep following the folder, publishing images as they become stable, until
    /// SIGINT or SIGTERM.
    #[arg(long)]
    watch: bool,
    /// How often --watch looks at the folder.
    #[arg(long, default_value = "2s", value_parser = flags::duration)]
    poll: Duration,
    /// A file is taken once its size and modification time have not changed for this long.
    #[arg(long, default_value = "2s", value_parser = flags::duration)]
    settle: Duration,
    /// Print the records it would publish, one JSON object a line, and publish nothing.
    #[arg(long)]
    dry_run: bool,
    /// Where the files already published are kept (default: DIR/.wellspring-ingest).
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,
    #[command(flatten)]
    topics: TopicArgs,
    /// Images per published batch.
    #[arg(long, default_value_t = 500, value_parser = flags::count())]
    batch: u32,
    /// Print progress lines instead of a progress bar.
    #[arg(long)]
    no_progress: bool,
}

pub fn ingest(args: IngestArgs) -> CommandResult {
    let ingest = settings(&args)?;
    let layout_flags = LayoutFlags {
        wells: args.wells.clone(),
        sites: args.sites.map(|s| s.min(u32::from(u16::MAX)) as u16),
        channels: args.channels.map(|c| c.min(u32::from(u8::MAX)) as u8),
    };
    // Flags that cannot make a layout are refused before anything is scanned.
    let probe = BTreeMap::from([(ingest.plate.unwrap_or(1), String::new())]);
    ingest
        .layout(&layout_flags, &probe)
        .map_err(|e| CliError::could_not_run(e.to_string()))?;
    let state_file = args
        .state
        .clone()
        .unwrap_or_else(|| args.dir.join(".wellspring-ingest"));
    let state = State::open(&state_file, !args.dry_run).map_err(scan_error)?;
    let mut scanner = Scanner::new(
        &args.dir,
        ingest,
        Stability::new(args.settle),
        state,
        std::fs::canonicalize(&state_file)
            .ok()
            .or(Some(state_file.clone())),
    )
    .map_err(scan_error)?;
    on_runtime(run(&args, &mut scanner, &layout_flags))?
}

/// What to take, from the flags (and the plate map).
fn settings(args: &IngestArgs) -> Result<Ingest, CliError> {
    let experiment = ExperimentId::new(&args.experiment)
        .map_err(|e| CliError::could_not_run(format!("--experiment: {e}")))?;
    let convention = match (&args.pattern, &args.convention) {
        (Some(pattern), _) => Convention::Pattern(
            UserPattern::new(pattern).map_err(|e| CliError::could_not_run(e.to_string()))?,
        ),
        (None, Some(name)) => Convention::named(name).ok_or_else(|| {
            CliError::could_not_run(format!("--convention {name} is not a known convention"))
        })?,
        (None, None) => {
            return Err(CliError::could_not_run(
                "give --convention phenix|imagexpress|cv8000|rxrx, or --pattern REGEX",
            ));
        }
    };
    let plate_map = args
        .plate_map
        .as_ref()
        .map(|path| PlateMap::read(path, experiment.as_str()))
        .transpose()
        .map_err(|e| CliError::could_not_run(e.to_string()))?;
    Ok(Ingest {
        experiment,
        convention,
        plate: args.plate,
        barcode: args.barcode.clone(),
        plane: args.plane,
        timepoint: args.timepoint,
        cell_type: args.cell_type.clone(),
        plate_map,
    })
}

/// Where the records go, from `--dry-run`, `--url` or `--kafka`.
async fn sink(args: &IngestArgs) -> Result<(Sink, String), CliError> {
    if args.dry_run {
        return Ok((Sink::dry_run(), "standard output".into()));
    }
    match (&args.url, args.kafka.settings()) {
        (Some(_), Ok(Some(_))) => Err(CliError::could_not_run(
            "give --url NODE or --kafka BROKERS, not both (WELLSPRING_KAFKA may be set)",
        )),
        (Some(url), _) => {
            let token =
                crate::run::token(None).map_err(|e| CliError::could_not_run(e.to_string()))?;
            let sink = Sink::node(url, token)
                .map_err(|e| CliError::could_not_run(format!("cannot make an HTTP client: {e}")))?;
            Ok((sink, url.clone()))
        }
        (None, Ok(Some(settings))) => {
            let brokers = settings.brokers.clone();
            let sink = Sink::kafka(
                settings,
                &args.topics.images_topic,
                &args.topics.metadata_topic,
                args.topics.partitions,
            )
            .await
            .map_err(|e| CliError::could_not_run(format!("Kafka at {brokers}: {e}")))?;
            Ok((sink, format!("Kafka at {brokers}")))
        }
        (None, Ok(None)) => Err(CliError::could_not_run(
            "say where the records go: --url NODE (a node's HTTP API), --kafka BROKERS, or --dry-run to print them",
        )),
        (None, Err(e)) => Err(CliError::could_not_run(e.to_string())),
    }
}

/// What a whole run did, for its closing lines.
#[derive(Default)]
struct Totals {
    published: usize,
    files: usize,
    already_published: usize,
    still_written: usize,
    not_images: usize,
    other_plane: usize,
    other_timepoint: usize,
    unmatched: usize,
    conflicts: usize,
    /// What below the folder could not be read, each reported once.
    unreadable: BTreeSet<String>,
}

/// A scan or state error, with what to do about a folder the command cannot write.
fn scan_error(error: wellspring_ingest::ScanError) -> CliError {
    match error {
        wellspring_ingest::ScanError::State { .. } => CliError::could_not_run(format!(
            "{error} (a read-only folder? keep the state elsewhere with --state FILE)"
        )),
        wellspring_ingest::ScanError::Folder { .. } => CliError::could_not_run(error.to_string()),
    }
}

fn publish_failed(target: &str, e: publish::PublishError) -> CliError {
    if let publish::PublishError::Http(PostError::Unreachable { .. }) = e {
        return CliError::could_not_run(format!(
            "{e} (is a node running there? start one with `wellspring run`, or check --url)"
        ));
    }
    CliError::failed(format!(
        "publishing to {target}: {e} (what was published is kept in the state file: running the same command again publishes the rest)"
    ))
}

/// Publishes `layout` unless the state says it already was, as it is.
async fn send_layout(
    args: &IngestArgs,
    sink: &mut Sink,
    target: &str,
    scanner: &mut Scanner,
    layout: &ExperimentLayout,
) -> CommandResult {
    let record = OutRecord {
        topic: args.topics.metadata_topic.clone(),
        key: layout.experiment.to_string(),
        value: layout.to_value().to_json_string(),
    };
    // The state remembers the layout as it was published (a name no scanned file has:
    // scans pass hidden files over), so a rescan sends it only when it changed.
    let entry = PathBuf::from(format!(".layout {}", record.value));
    if !scanner.is_published(&entry) {
        sink.publish(&[record])
            .await
            .map_err(|e| publish_failed(target, e))?;
        scanner.mark_published(&[entry]).map_err(scan_error)?;
    }
    Ok(())
}

async fn run(
    args: &IngestArgs,
    scanner: &mut Scanner,
    layout_flags: &LayoutFlags,
) -> CommandResult {
    let (mut sink, target) = sink(args).await?;
    let publish_error = |e: publish::PublishError| publish_failed(&target, e);
    let layout_error = |e: wellspring_ingest::LayoutError| CliError::could_not_run(e.to_string());
    let waits = scanner.ingest().layout_waits_for_images(layout_flags);
    let mut layout = None;
    if !waits {
        layout = scanner
            .ingest()
            .layout(layout_flags, &BTreeMap::new())
            .map_err(layout_error)?;
        match &layout {
            Some(l) => send_layout(args, &mut sink, &target, scanner, l).await?,
            None => eprintln!(
                "note: no layout published (give --plate-map CSV, or --wells, --sites and --channels): the pipeline completes a site, well or plate only once it knows the layout"
            ),
        }
    }
    let mut outside_layout = BTreeSet::new();
    let progress = wants_progress(args.no_progress);
    let mut totals = Totals::default();
    let started = Instant::now();
    let stop = stop_signal();
    tokio::pin!(stop);
    loop {
        let files = list(scanner, &mut totals)?;
        let mut report = if args.watch || args.settle.is_zero() {
            scan(scanner, &files, progress)
        } else {
            // One look now, one after the settle time: files still being written wait.
            scanner.look(&files);
            tokio::time::sleep(args.settle).await;
            let files = list(scanner, &mut totals)?;
            scan(scanner, &files, progress)
        };
        let images = std::mem::take(&mut report.images);
        if waits && layout.is_none() && !scanner.plates_seen().is_empty() {
            // The layout's plates are those the first images name.
            let made = scanner
                .ingest()
                .layout(layout_flags, &scanner.plates_seen())
                .map_err(layout_error)?;
            if let Some(l) = &made {
                send_layout(args, &mut sink, &target, scanner, l).await?;
            }
            layout = made;
        }
        if let Some(layout) = &layout {
            for (_, image) in &images {
                let plate = image.key.plate;
                if layout.plate(plate).is_none() && outside_layout.insert(plate) {
                    eprintln!(
                        "warning: plate {plate} ({}) is not in the layout published: its wells will not complete (give a --plate-map that has it, or ingest it with --plate)",
                        image.plate_barcode
                    );
                }
            }
        }
        for batch in images.chunks(args.batch as usize) {
            let records: Vec<OutRecord> = batch
                .iter()
                .map(|(_, image)| OutRecord {
                    topic: args.topics.images_topic.clone(),
                    key: image.key.to_string(),
                    value: image.to_value().to_json_string(),
                })
                .collect();
            sink.publish(&records).await.map_err(publish_error)?;
            let files: Vec<PathBuf> = batch.iter().map(|(f, _)| f.clone()).collect();
            scanner.mark_published(&files).map_err(scan_error)?;
            totals.published += batch.len();
        }
        tell(&report, images.len(), args.watch);
        add(&mut totals, &report);
        if !args.watch {
            break;
        }
        tokio::select! {
            () = &mut stop => break,
            () = tokio::time::sleep(args.poll) => {}
        }
    }
    let elapsed = started.elapsed().as_secs_f64().max(1e-9);
    let summary = format!(
        "ingested {}: {} channel images published to {target} in {elapsed:.1} s ({:.0} files/s); {} files seen: {} already published, {} still being written, {} not images, {} of other z-planes, {} of other time points, {} names that fit no convention, {} conflicts",
        scanner.root().display(),
        totals.published,
        totals.files as f64 / elapsed,
        totals.files,
        totals.already_published,
        totals.still_written,
        totals.not_images,
        totals.other_plane,
        totals.other_timepoint,
        totals.unmatched,
        totals.conflicts,
    );
    let summary = if totals.unreadable.is_empty() {
        summary
    } else {
        format!(
            "{summary}, {} unreadable folders or files",
            totals.unreadable.len()
        )
    };
    // A dry run's standard output is its records.
    if args.dry_run {
        eprintln!("{summary}");
    } else {
        println!("{summary}");
    }
    if totals.published == 0 && totals.already_published == 0 && totals.unmatched > 0 {
        return Err(CliError::failed(format!(
            "no file name fits the {} convention (is --convention right? --pattern takes any other)",
            scanner.ingest().convention.name()
        )));
    }
    if totals.still_written > 0 && !args.watch {
        eprintln!(
            "note: {} file(s) were still being written: run the command again once they are done, or follow the folder with --watch",
            totals.still_written
        );
    }
    Ok(())
}

/// The folder's files now; what below it cannot be read is reported once and counted.
fn list(scanner: &Scanner, totals: &mut Totals) -> Result<Vec<PathBuf>, CliError> {
    let listing = scanner.list().map_err(scan_error)?;
    for problem in listing.unreadable {
        if totals.unreadable.insert(problem.clone()) {
            eprintln!("skipped: {problem}");
        }
    }
    Ok(listing.files)
}

fn scan(scanner: &mut Scanner, files: &[PathBuf], progress: bool) -> ScanReport {
    let bar = if progress {
        ProgressBar::new(files.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("scanned [{bar:40.cyan/blue}] {pos}/{len} files {per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let report = scanner.scan(files, || bar.inc(1));
    bar.finish_and_clear();
    report
}

/// Reports what a scan passed over that the user should know about (once a file).
fn tell(report: &ScanReport, published: usize, watch: bool) {
    const SHOWN: usize = 20;
    for error in report.unmatched.iter().take(SHOWN) {
        eprintln!("skipped: {error}");
    }
    if report.unmatched.len() > SHOWN {
        eprintln!(
            "skipped: {} more names that fit no convention",
            report.unmatched.len() - SHOWN
        );
    }
    for conflict in report.conflicts.iter().take(SHOWN) {
        eprintln!("skipped: {conflict}");
    }
    if report.conflicts.len() > SHOWN {
        eprintln!("skipped: {} more conflicts", report.conflicts.len() - SHOWN);
    }
    if watch && published > 0 {
        eprintln!("published {published} channel image(s)");
    }
}

fn add(totals: &mut Totals, report: &ScanReport) {
    totals.files = report.files;
    totals.already_published = report.already_published;
    totals.still_written = report.still_written.len();
    totals.not_images = report.not_images;
    totals.other_plane = report.other_plane;
    totals.other_timepoint = report.other_timepoint;
    totals.unmatched += report.unmatched.len();
    totals.conflicts += report.conflicts.len();
}

/// Resolves at SIGINT or SIGTERM.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
