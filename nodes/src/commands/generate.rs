//! `wellspring generate`: publishes a synthetic experiment (its layout, then its images)
//! to Kafka, creating the topics when missing.

use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use wellspring_log::{Cleanup, KafkaLog, Log, LogError, TopicSpec};

use super::flags::WorkloadArgs;
use super::{CliError, CommandResult, TopicArgs, on_runtime, unix_seconds, wants_progress};
use crate::backend::KafkaArgs;
use crate::workload::{Workload, publish};

#[derive(Args)]
// The topics' help names the reference DAG's sources, which `generate` feeds.
#[command(
    mut_arg("images_topic", |a| a.help("The topic the images go to (the reference DAG's image source)")),
    mut_arg("metadata_topic", |a| a.help("The topic the experiment's layout goes to (the reference DAG's metadata table)")),
    mut_arg("partitions", |a| a.help("Partitions of the images topic, if it has to be created")),
)]
pub struct GenerateArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Plates in the experiment.
    #[arg(long, default_value_t = 1)]
    plates: u32,
    /// The experiment's id (default: EXP- and the current time).
    #[arg(long)]
    experiment: Option<String>,
    #[command(flatten)]
    shape: WorkloadArgs,
    #[command(flatten)]
    topics: TopicArgs,
    /// Print progress lines instead of a progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Leave this many channel images out (named on the output): the DAG reports their
    /// sites, wells and plates incomplete after its timeouts.
    #[arg(long, default_value_t = 0)]
    missing: usize,
}

/// The Kafka settings of an operator tool, which needs a cluster (`--kafka`).
pub(super) fn kafka_for(
    command: &str,
    kafka: &KafkaArgs,
) -> Result<wellspring_log::KafkaSettings, CliError> {
    match kafka.settings() {
        Ok(Some(settings)) => Ok(settings),
        Ok(None) => Err(CliError::could_not_run(format!(
            "wellspring {command} works on a Kafka cluster: give --kafka BROKERS (or set WELLSPRING_KAFKA)"
        ))),
        Err(e) => Err(CliError::could_not_run(e.to_string())),
    }
}

pub fn generate(args: GenerateArgs) -> CommandResult {
    let settings = kafka_for("generate", &args.kafka)?;
    let experiment = args
        .experiment
        .clone()
        .unwrap_or_else(|| format!("EXP-{}", unix_seconds()));
    let config = args.shape.config(experiment.clone(), args.plates);
    let mut workload =
        Workload::build(&config).map_err(|e| CliError::could_not_run(e.to_string()))?;
    let left_out = workload.leave_out(args.missing);
    let brokers = settings.brokers.clone();
    let progress = wants_progress(args.no_progress);
    let published = on_runtime(async {
        let log = KafkaLog::connect(settings).await?;
        let topics = [
            TopicSpec::new(
                args.topics.images_topic.clone(),
                args.topics.partitions,
                Cleanup::Delete,
            ),
            TopicSpec::new(args.topics.metadata_topic.clone(), 1, Cleanup::Compact),
        ];
        for spec in &topics {
            // A topic that exists is used as it is (the DAG's node may have made it).
            match log.partitions(&spec.name).await {
                Ok(_) => {}
                Err(LogError::UnknownTopic(_)) => log.ensure_topic(spec).await?,
                Err(e) => return Err(e),
            }
        }
        let producer = log.producer()?;
        let bar = if progress {
            ProgressBar::new(workload.messages.len() as u64)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template(
                "published [{bar:40.cyan/blue}] {pos}/{len} records {per_sec}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let started = Instant::now();
        let mut last_line = started;
        let mut sent = 0usize;
        publish(
            producer.as_ref(),
            &workload.messages,
            &args.topics.images_topic,
            &args.topics.metadata_topic,
            args.shape.rate,
            |batch| {
                sent += batch.len();
                bar.set_position(sent as u64);
                if !progress && last_line.elapsed() > Duration::from_secs(5) {
                    last_line = Instant::now();
                    eprintln!("published {sent}/{} records", workload.messages.len());
                }
            },
        )
        .await?;
        bar.finish_and_clear();
        Ok::<_, LogError>(started.elapsed())
    })?;
    let elapsed = published.map_err(|e| {
        let brokers = &brokers;
        CliError::failed(format!(
            "publishing to {brokers}: {e} (the DAG drops repeated images, so running it again with the same --experiment is safe)"
        ))
    })?;
    let images = workload.image_count();
    println!(
        "published experiment {experiment}: {} plate(s), {images} channel images ({} distinct, {} bad records) and its layout, to {brokers} in {:.1} s ({:.0} records/s)",
        args.plates,
        workload.layout.image_count(),
        args.shape.bad_records,
        elapsed.as_secs_f64(),
        workload.messages.len() as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    for key in &left_out {
        println!("left out on purpose: image {key}");
    }
    println!(
        "check its outputs with: wellspring verify --kafka {brokers} --experiment {experiment} --wait 5m"
    );
    Ok(())
}
