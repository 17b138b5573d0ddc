//! `wellspring demo`: a realistic experiment through the reference DAG, with nothing to
//! install or start.
//!
//! It starts the simulated microservices on loopback, runs the reference DAG on the
//! embedded log under the node's supervision tree, publishes the experiment (plates out
//! of order, duplicates, metadata after the first images), shows progress per level,
//! and checks that every expected aggregate came out exactly once.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::time::Instant;
use wellspring_actors::http::{ReqwestTransport, SharedRng};
use wellspring_actors::metrics::{Metrics, names};
use wellspring_actors::supervision::Health;
use wellspring_actors::{FunctionRegistry, Node, NodeEnv, RuntimeConfig};
use wellspring_log::{ConsumerConfig, EmbeddedLog, Log, NoListener, SystemClock, TopicPartition};
use wellspring_protocol::spec::NodeKind;
use wellspring_protocol::{Dag, SpecFormat};

use crate::services::{ServiceConfig, Services};
use crate::status::serve::{ServeError, StatusServer};
use crate::verify::{LevelReport, Tracker, reference_expectations, without_images};
use crate::workload::{Message, Workload, WorkloadConfig, publish};

/// The reference DAG shipped in `examples/`, built in so the demo runs from anywhere.
pub const REFERENCE_DAG: &str = include_str!("../../examples/reference-dag.yaml");
const IMAGES_TOPIC: &str = "images_channel";
const METADATA_TOPIC: &str = "experiment_metadata";

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub workload: WorkloadConfig,
    pub services: ServiceConfig,
    /// Images per second; `None`: as fast as the log takes them.
    pub rate: Option<f64>,
    /// Another DAG file with the reference DAG's topics and tasks.
    pub dag: Option<PathBuf>,
    /// Give up when nothing new has come out for this long.
    pub stall_timeout: Duration,
    pub progress: bool,
    /// Serve the status API here from the start of the run (and after it, for as long as
    /// the returned server lives; see [`run_serving`]).
    pub serve: Option<SocketAddr>,
    /// Channel images to leave out: their sites (and everything above) are reported
    /// incomplete.
    pub missing: usize,
    /// Every grouping's incomplete timeout, instead of the DAG's.
    pub incomplete_timeout: Option<Duration>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            workload: WorkloadConfig::default(),
            services: ServiceConfig::default(),
            rate: None,
            dag: None,
            stall_timeout: Duration::from_secs(60),
            progress: true,
            serve: None,
            missing: 0,
            incomplete_timeout: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot read the DAG file {path}: {source}")]
    ReadDag {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Dag(String),
    #[error("cannot start the simulated services on loopback: {0}")]
    Services(std::io::Error),
    #[error("cannot start the engine: {0}")]
    Start(String),
    #[error("the demo workload: {0}")]
    Workload(String),
    #[error("cannot start the actor system: {0}")]
    System(std::io::Error),
    #[error("{0}")]
    Serve(#[from] ServeError),
}

/// What the demo saw.
#[derive(Debug)]
pub struct DemoReport {
    pub experiment: String,
    /// What the demo ran on ("the embedded log (in memory)", "Kafka at ...").
    pub log: String,
    pub levels: Vec<LevelReport>,
    pub images_published: usize,
    pub distinct_images: u64,
    pub elapsed: Duration,
    pub retries: u64,
    pub dead_letters: Vec<(String, String)>,
    pub incomplete: Vec<String>,
    pub site_latency_p50: Option<Duration>,
    pub site_latency_p99: Option<Duration>,
    pub stalled: bool,
    /// Images per second the experiment was sent at (`None`: as fast as possible).
    pub rate: Option<f64>,
    pub failed_components: Vec<(String, String)>,
    pub panics: u64,
    /// Images left out on purpose (`--missing`).
    pub left_out: Vec<String>,
}

impl DemoReport {
    /// Every aggregate exactly once, every task output present or dead-lettered.
    pub fn ok(&self) -> bool {
        !self.stalled && self.levels.iter().all(LevelReport::ok)
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let _ = writeln!(
            out,
            "\nWellspring demo: experiment {} on {}\n  {} channel images ({} distinct) in {:.2} s, {:.0} events/s",
            self.experiment,
            self.log,
            self.images_published,
            self.distinct_images,
            secs,
            self.images_published as f64 / secs
        );
        let _ = writeln!(
            out,
            "\n  {:<16} {:>9} {:>9} {:>8} {:>8} {:>12}",
            "output", "expected", "present", "missing", "repeats", "dead-letter"
        );
        for level in &self.levels {
            let _ = writeln!(
                out,
                "  {:<16} {:>9} {:>9} {:>8} {:>8} {:>12}  {}",
                level.label,
                level.expected,
                level.present,
                level.missing.len(),
                level.repeats,
                level.dead_lettered,
                if level.ok() { "ok" } else { "FAILED" }
            );
        }
        let _ = writeln!(
            out,
            "\n  retries: {}   dead letters: {}   incomplete reports: {}   panics contained: {}",
            self.retries,
            self.dead_letters.len(),
            self.incomplete.len(),
            self.panics
        );
        if let (Some(p50), Some(p99)) = (self.site_latency_p50, self.site_latency_p99) {
            let _ = writeln!(
                out,
                "  latency from a site's last image to its site record: p50 {:.1} ms, p99 {:.1} ms",
                p50.as_secs_f64() * 1e3,
                p99.as_secs_f64() * 1e3
            );
            if self.rate.is_none() {
                let _ = writeln!(
                    out,
                    "  (images were sent as fast as possible, so latency includes queueing; --rate N measures it at a steady pace)"
                );
            }
        }
        let repeats: usize = self
            .levels
            .iter()
            .filter(|l| !l.aggregate)
            .map(|l| l.repeats)
            .sum();
        if repeats > 0 {
            let _ = writeln!(
                out,
                "  task outputs for images sent twice carry the same id ({repeats} repeats): consumers drop them by id"
            );
        }
        for (key, reason) in self.dead_letters.iter().take(5) {
            let _ = writeln!(out, "  dead letter {key}: {reason}");
        }
        for key in self.left_out.iter().take(5) {
            let _ = writeln!(out, "  left out on purpose: image {key}");
        }
        for report in self.incomplete.iter().take(8) {
            let _ = writeln!(out, "  incomplete: {report}");
        }
        for (component, reason) in &self.failed_components {
            let _ = writeln!(out, "  FAILED component {component}: {reason}");
        }
        for level in self.levels.iter().filter(|l| !l.ok()) {
            let show: Vec<&String> = level.missing.iter().take(5).collect();
            if !show.is_empty() {
                let _ = writeln!(
                    out,
                    "  missing {}: {show:?}{}",
                    level.label,
                    if level.missing.len() > 5 { " ..." } else { "" }
                );
            }
            if level.repeats > 0 && level.aggregate {
                let _ = writeln!(
                    out,
                    "  {} {} were emitted more than once",
                    level.repeats, level.label
                );
            }
        }
        if self.stalled {
            let _ = writeln!(
                out,
                "  the run stalled: nothing new came out within the stall timeout"
            );
        }
        let _ = writeln!(
            out,
            "\n  {}",
            if self.ok() {
                "every expected aggregate exactly once: OK"
            } else {
                "RESULT: FAILED"
            }
        );
        out
    }
}

/// Loads the DAG the demo runs, pointed at `services`.
pub fn load_dag(
    path: Option<&PathBuf>,
    registry: &FunctionRegistry,
    services: &Services,
) -> Result<Dag, DemoError> {
    let (name, text) = match path {
        Some(path) => (
            path.display().to_string(),
            std::fs::read_to_string(path).map_err(|source| DemoError::ReadDag {
                path: path.clone(),
                source,
            })?,
        ),
        None => ("reference-dag.yaml".to_owned(), REFERENCE_DAG.to_owned()),
    };
    let mut dag = Dag::load(&text, SpecFormat::detect(&name, &text), registry)
        .map_err(|e| DemoError::Dag(format!("{name}: {e}")))?;
    let variables = services
        .variables()
        .into_iter()
        .filter(|(k, _)| dag.variables.contains_key(k))
        .collect();
    dag.set_variables(&variables)
        .map_err(|e| DemoError::Dag(e.to_string()))?;
    Ok(dag)
}

/// Runs the demo to completion (or stall) in its own actor system, on `log` (a new
/// embedded log unless given).
/// Waits until each stage of the DAG owns its partitions, so that the latencies measured
/// are the pipeline's and not the consumer groups' first joins (seconds on Kafka).
async fn wait_until_every_stage_owns_partitions(
    metrics: &Metrics,
    dag: &str,
) -> Result<(), DemoError> {
    let started = Instant::now();
    let mut said = false;
    loop {
        let stages: Vec<(String, usize)> = metrics
            .owned_partitions()
            .into_iter()
            .filter(|(d, _, _)| d == dag)
            .map(|(_, stage, partitions)| (stage, partitions.len()))
            .collect();
        let waiting: Vec<&str> = stages
            .iter()
            .filter(|(_, owned)| *owned == 0)
            .map(|(stage, _)| stage.as_str())
            .collect();
        // The stages register when the DAG's supervisor builds them, just after start.
        if !stages.is_empty() && waiting.is_empty() {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(120) {
            return Err(DemoError::Start(format!(
                "after 2 minutes these stages still own no partition of their input: {}; \
                 is the consumer group held by another process?",
                waiting.join(", ")
            )));
        }
        if !said && started.elapsed() > Duration::from_secs(1) {
            eprintln!(
                "joining consumer groups: {} of {} stages ready...",
                stages.len() - waiting.len(),
                stages.len()
            );
            said = true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn run(options: DemoOptions, log: Option<Arc<dyn Log>>) -> Result<DemoReport, DemoError> {
    run_serving(options, log).map(|(report, _)| report)
}

/// [`run`], and with `options.serve` the status server, still serving the run's view.
pub fn run_serving(
    options: DemoOptions,
    log: Option<Arc<dyn Log>>,
) -> Result<(DemoReport, Option<StatusServer>), DemoError> {
    let system = actix_rt::System::new();
    let log = log.unwrap_or_else(|| Arc::new(EmbeddedLog::new()));
    let result = system.block_on(run_in_system(options, log));
    drop(system);
    result
}

struct Bars {
    multi: MultiProgress,
    images: ProgressBar,
    levels: Vec<ProgressBar>,
}

impl Bars {
    fn new(tracker: &Tracker, images: usize, visible: bool) -> Bars {
        let multi = MultiProgress::with_draw_target(if visible {
            ProgressDrawTarget::stderr_with_hz(10)
        } else {
            ProgressDrawTarget::hidden()
        });
        let style = ProgressStyle::with_template(
            "{prefix:>16} [{bar:40.cyan/blue}] {pos:>6}/{len:6} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        let bar = |label: &str, len: usize| {
            let bar = multi.add(ProgressBar::new(len as u64));
            bar.set_style(style.clone());
            bar.set_prefix(label.to_owned());
            bar
        };
        let images = bar("images sent", images);
        let levels = tracker
            .expected()
            .iter()
            .map(|e| bar(&e.label, e.keys.len()))
            .collect();
        Bars {
            multi,
            images,
            levels,
        }
    }
}

async fn run_in_system(
    options: DemoOptions,
    log: Arc<dyn Log>,
) -> Result<(DemoReport, Option<StatusServer>), DemoError> {
    let registry = Arc::new(FunctionRegistry::with_builtins());
    let services = Services::start(options.services.clone()).map_err(DemoError::Services)?;
    let mut dag = load_dag(options.dag.as_ref(), &registry, &services)?;
    if let Some(timeout) = options.incomplete_timeout {
        for node in &mut dag.nodes {
            if let NodeKind::StreamOperation(op) = &mut node.kind {
                op.incomplete_timeout = Some(timeout);
            }
        }
    }
    let mut workload = Workload::build(&options.workload).map_err(DemoError::Workload)?;
    let left_out = workload.leave_out(options.missing);

    let metrics = Metrics::default();
    let health = Health::default();
    let env = NodeEnv {
        log: log.clone(),
        clock: Arc::new(SystemClock),
        transport: Arc::new(ReqwestTransport::new().map_err(DemoError::Start)?),
        registry,
        metrics: metrics.clone(),
        health: health.clone(),
        rng: SharedRng::seeded(options.workload.seed),
        task_store: None,
        config: RuntimeConfig {
            node_id: "demo-0".into(),
            ..RuntimeConfig::default()
        },
    };
    let dag_name = dag.name.clone();
    let server = match options.serve {
        Some(addr) => {
            let server = StatusServer::start(
                addr,
                vec![dag.clone()],
                "demo-0",
                metrics.clone(),
                log.clone(),
                None,
            )?;
            eprintln!(
                "serving the status API at {url} (try {url}/api/experiments)",
                url = server.url()
            );
            Some(server)
        }
        None => None,
    };
    let tracker = Rc::new(RefCell::new(
        Tracker::new(
            without_images(reference_expectations(&workload.layout), &left_out),
            &dag.settings.dead_letter_topic,
            &dag.settings.incomplete_topic,
        )
        .scoped(&workload.layout.experiment.to_string()),
    ));
    let node = Node::start(env, vec![dag])
        .await
        .map_err(|e| DemoError::Start(e.to_string()))?;

    wait_until_every_stage_owns_partitions(&metrics, &dag_name).await?;

    // Watch the outputs, from their ends now (a shared log holds earlier runs' too).
    let mut assignment = Vec::new();
    let topics = tracker.borrow().topics();
    for topic in topics {
        let partitions = log
            .partitions(&topic)
            .await
            .map_err(|e| DemoError::Start(format!("{topic}: {e}")))?;
        for p in 0..partitions {
            let tp = TopicPartition::new(topic.as_str(), p);
            let end = log
                .end_offset(&tp)
                .await
                .map_err(|e| DemoError::Start(format!("{tp}: {e}")))?;
            assignment.push((tp, Some(end)));
        }
    }
    let mut watcher = log
        .consumer(ConsumerConfig::assign("demo-watcher", assignment))
        .map_err(|e| DemoError::Start(e.to_string()))?;
    let watching = Rc::new(std::cell::Cell::new(true));
    {
        let tracker = tracker.clone();
        let watching = watching.clone();
        actix_rt::spawn(async move {
            let mut listener = NoListener;
            while watching.get() {
                match watcher
                    .poll(&mut listener, 10_000, Duration::from_millis(50))
                    .await
                {
                    Ok(records) => {
                        let now = Instant::now();
                        let mut tracker = tracker.borrow_mut();
                        for record in &records {
                            tracker.observe(record, now);
                        }
                    }
                    Err(e) => {
                        tracing::error!("watching the outputs: {e}");
                        break;
                    }
                }
            }
        });
    }

    // Publish the experiment, remembering when each site's last image went out.
    let last_image_of_site: Rc<RefCell<HashMap<String, Instant>>> = Rc::default();
    let published = Rc::new(std::cell::Cell::new(0usize));
    let started = Instant::now();
    {
        let producer = log
            .producer()
            .map_err(|e| DemoError::Start(e.to_string()))?;
        let messages = workload.messages.clone();
        let last = last_image_of_site.clone();
        let published = published.clone();
        let rate = options.rate;
        actix_rt::spawn(async move {
            let result = publish(
                producer.as_ref(),
                &messages,
                IMAGES_TOPIC,
                METADATA_TOPIC,
                rate,
                |batch| {
                    let now = Instant::now();
                    let mut last = last.borrow_mut();
                    for message in batch {
                        if let Message::Image(image) = message {
                            last.insert(image.key.site_key().to_string(), now);
                            published.set(published.get() + 1);
                        }
                    }
                },
            )
            .await;
            if let Err(e) = result {
                tracing::error!("publishing the experiment: {e}");
            }
        });
    }

    let images = workload.image_count();
    // Each site, well and plate left incomplete is reported once its timeout passes
    // (the experiment's record never opens without its plates).
    let reports_due = |depth: usize| {
        left_out
            .iter()
            .map(|k| k.split('/').take(depth).collect::<Vec<_>>().join("/"))
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    };
    let due = [
        ("site ", reports_due(4)),
        ("well ", reports_due(3)),
        ("plate ", reports_due(2)),
    ];
    let bars = Bars::new(&tracker.borrow(), images, options.progress);
    let mut last_change = Instant::now();
    let mut last_seen = 0usize;
    let mut last_line = Instant::now();
    let stalled = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let tracker = tracker.borrow();
        bars.images.set_position(published.get() as u64);
        let mut seen = published.get() + tracker.dead_letters.len();
        for (bar, expected) in bars.levels.iter().zip(tracker.expected()) {
            let present = tracker.present(&expected.topic);
            bar.set_position(present as u64);
            seen += present;
        }
        if seen != last_seen {
            last_seen = seen;
            last_change = Instant::now();
        }
        if !options.progress && last_line.elapsed() > Duration::from_secs(5) {
            last_line = Instant::now();
            let summary: Vec<String> = tracker
                .expected()
                .iter()
                .map(|e| format!("{} {}/{}", e.label, tracker.present(&e.topic), e.keys.len()))
                .collect();
            eprintln!(
                "progress: images {}/{images}; {}",
                published.get(),
                summary.join(", ")
            );
        }
        let reported = due.iter().all(|(level, n)| {
            tracker
                .incomplete
                .iter()
                .filter(|r| r.starts_with(level))
                .count()
                >= *n
        });
        if published.get() >= images && tracker.complete() && reported {
            break false;
        }
        if last_change.elapsed() > options.stall_timeout {
            break true;
        }
        if !health.failed().is_empty() {
            break true;
        }
    };
    let elapsed = started.elapsed();
    for bar in bars.levels.iter().chain([&bars.images]) {
        bar.finish();
    }
    let _ = bars.multi.clear();

    node.shutdown().await;
    watching.set(false);

    let tracker = tracker.borrow();
    let mut histogram = Histogram::<u64>::new(3).map_err(|e| DemoError::Start(e.to_string()))?;
    for (site, published_at) in last_image_of_site.borrow().iter() {
        if let Some(seen) = tracker.first_seen("images_site", site) {
            let _ =
                histogram.record(seen.saturating_duration_since(*published_at).as_micros() as u64);
        }
    }
    let quantile =
        |q| (!histogram.is_empty()).then(|| Duration::from_micros(histogram.value_at_quantile(q)));
    Ok((
        DemoReport {
            experiment: workload.layout.experiment.to_string(),
            log: log.describe(),
            levels: tracker.report(),
            images_published: published.get(),
            distinct_images: workload.layout.image_count(),
            elapsed,
            retries: metrics.total(&dag_name, names::RETRIES),
            dead_letters: tracker.dead_letters.clone(),
            incomplete: tracker.incomplete.clone(),
            site_latency_p50: quantile(0.5),
            site_latency_p99: quantile(0.99),
            stalled,
            rate: options.rate,
            failed_components: health.failed(),
            panics: metrics.total(&dag_name, names::PANICS),
            left_out,
        },
        server,
    ))
}
