//! `wellspring tasks ...`: the task store's calls from the command line, through the
//! typed client. Each prints the node's answer as JSON.

use std::time::Duration;

use clap::{Args, Subcommand};
use serde::Serialize;
use uuid::Uuid;
use wellspring_protocol::taskstore::{
    AutoscalingSettings, Claim, GroupSettings, Millis, NewTask, RetrySettings, TaskStatus,
};

use super::{CliError, CommandResult, flags, node_client, on_runtime};

#[derive(Args)]
pub struct TasksArgs {
    /// The node's API.
    #[arg(
        long,
        global = true,
        default_value = "http://127.0.0.1:8080",
        env = "WELLSPRING_URL"
    )]
    url: String,
    #[command(subcommand)]
    command: TasksCommand,
}

#[derive(Subcommand)]
enum TasksCommand {
    /// Create a group (or update its settings).
    CreateGroup(CreateGroupArgs),
    /// Submit a task: `wellspring tasks submit --group G -- program args...`
    Submit {
        #[arg(long)]
        group: String,
        /// A label: --label name=value (repeat).
        #[arg(long = "label", value_name = "NAME=VALUE", value_parser = flags::pair)]
        labels: Vec<(String, String)>,
        #[arg(long)]
        idempotency_key: Option<String>,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Lease the next task of the groups.
    Claim {
        #[arg(long = "group", required = true)]
        groups: Vec<String>,
        #[arg(long)]
        client_id: String,
        #[arg(long, default_value = "30s", value_parser = flags::duration)]
        duration: Duration,
    },
    /// List a group's tasks.
    List {
        #[arg(long)]
        group: String,
        /// available, leased, succeeded or dead-lettered
        #[arg(long, value_parser = status)]
        status: Option<TaskStatus>,
        #[arg(long, default_value_t = 100, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
        limit: usize,
    },
    /// A group's statistics and desired workers.
    Stats {
        #[arg(long)]
        group: String,
    },
    /// Read one task.
    Get { id: Uuid },
}

#[derive(Args)]
struct CreateGroupArgs {
    name: String,
    /// A task running longer is presumed hanging: halted and retried.
    #[arg(long, default_value = "1h", value_parser = flags::duration)]
    max_run_time: Duration,
    #[arg(long, default_value_t = 3, value_parser = flags::count())]
    max_attempts: u32,
    #[arg(long, default_value = "1s", value_parser = flags::duration)]
    initial_backoff: Duration,
    #[arg(long, default_value = "60s", value_parser = flags::duration)]
    max_backoff: Duration,
    #[arg(long, default_value_t = 10, value_parser = flags::count())]
    tasks_per_worker: u32,
    #[arg(long, default_value_t = 0)]
    min_workers: u32,
    #[arg(long, default_value_t = 10)]
    max_workers: u32,
    /// Keep the replicas of this Kubernetes Deployment at the desired workers.
    #[arg(long, conflicts_with = "worker_job")]
    worker_deployment: Option<String>,
    /// Keep this many Jobs made from this worker template (see `run
    /// --worker-templates`) running.
    #[arg(long)]
    worker_job: Option<String>,
}

impl CreateGroupArgs {
    fn settings(self) -> GroupSettings {
        GroupSettings {
            max_run_time: Millis::from(self.max_run_time),
            retry: RetrySettings {
                max_attempts: self.max_attempts,
                initial_backoff: Millis::from(self.initial_backoff),
                max_backoff: Millis::from(self.max_backoff),
                ..RetrySettings::default()
            },
            autoscaling: AutoscalingSettings {
                tasks_per_worker: self.tasks_per_worker,
                min_workers: self.min_workers,
                max_workers: self.max_workers,
            },
            worker_deployment: self.worker_deployment,
            worker_job: self.worker_job,
            ..GroupSettings::named(&self.name)
        }
    }
}

fn status(text: &str) -> Result<TaskStatus, String> {
    TaskStatus::parse(text)
        .ok_or_else(|| format!("{text:?} is not available, leased, succeeded or dead-lettered"))
}

fn print(answer: &impl Serialize) -> CommandResult {
    let text = serde_json::to_string_pretty(answer)
        .map_err(|e| CliError::could_not_run(format!("cannot print the answer: {e}")))?;
    println!("{text}");
    Ok(())
}

pub fn tasks(args: TasksArgs) -> CommandResult {
    let client = node_client(&args.url)?;
    on_runtime(async {
        match args.command {
            TasksCommand::CreateGroup(group) => {
                let (settings, _) = client.create_group(&group.settings()).await?;
                print(&settings)
            }
            TasksCommand::Submit {
                group,
                labels,
                idempotency_key,
                cmd,
            } => {
                let task = NewTask {
                    cmd,
                    group,
                    labels: labels.into_iter().collect(),
                    idempotency_key,
                };
                let (task, _) = client.submit(&task).await?;
                print(&task)
            }
            TasksCommand::Claim {
                groups,
                client_id,
                duration,
            } => {
                let claim = Claim {
                    groups,
                    client_id,
                    duration: Millis::from(duration),
                };
                match client.claim(&claim).await? {
                    Some(task) => print(&task),
                    None => {
                        println!("no task available");
                        Ok(())
                    }
                }
            }
            TasksCommand::List {
                group,
                status,
                limit,
            } => print(&client.list(&group, status, Some(limit)).await?),
            TasksCommand::Stats { group } => print(&client.stats(&group).await?),
            TasksCommand::Get { id } => print(&client.get(id).await?),
        }
    })?
}
