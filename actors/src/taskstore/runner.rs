//! Queue tasks of a DAG: each record becomes a task of a task-store group.
//!
//! The submission is idempotent (the record's deterministic id is its idempotency key),
//! so a record processed again after a crash finds its task instead of making a second
//! one. The task shard commits the record once the submission is durable; workers then
//! run the task, and the task store writes its output (or dead letter) to the DAG.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use wellspring_protocol::rerun::headers as rerun_headers;
use wellspring_protocol::spec::QueueTask;
use wellspring_protocol::taskstore::{DagTaskOrigin, GroupSettings, NewTask};
use wellspring_protocol::{TaskOutcome, TaskRequest, TaskResult};

use super::{TaskError, TaskStore};
use crate::http::TaskRunner;
use crate::metrics::Counter;
use crate::telemetry;
use opentelemetry::trace::SpanKind;

pub struct QueueTaskRunner {
    pub task_name: String,
    pub spec: QueueTask,
    pub variables: BTreeMap<String, String>,
    pub store: TaskStore,
    pub dag: String,
    pub node: String,
    pub output_topic: String,
    pub dead_letter_topic: String,
    pub retries: Counter,
    /// The group is known to exist.
    pub group_ready: Cell<bool>,
}

/// The submission's idempotency key: the record's id, so that a replay finds its task;
/// for a redrive, the id and the dead letter's, so that it is not answered by the task
/// that failed (its output keeps the record's id: `MessageId::derive(dag, node, key)`).
/// A re-run's task is another task too: its key names the generation.
fn idempotency_key(task: &TaskRequest) -> String {
    let mut key = task.id.to_string();
    if let Some(rerun) = &task.rerun {
        key.push_str(&format!("/generation/{}", rerun.generation));
    }
    if let Some(dead_letter) = &task.redrive_of {
        key.push_str(&format!("/redrive/{dead_letter}"));
    }
    key
}

/// How long a submission keeps retrying while the task store cannot take it (starting,
/// shards moving) before the record is dead-lettered.
const SUBMIT_PATIENCE: Duration = Duration::from_secs(120);

impl QueueTaskRunner {
    fn new_task(&self, task: &TaskRequest) -> Result<NewTask, String> {
        let cmd = self
            .spec
            .cmd
            .iter()
            .map(|t| t.render(&self.variables, &task.input, false))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("building the command: {e}"))?;
        let labels = self
            .spec
            .labels
            .iter()
            .map(|(name, t)| Ok((name.clone(), t.render(&self.variables, &task.input, false)?)))
            .collect::<Result<BTreeMap<_, _>, wellspring_protocol::spec::template::TemplateError>>()
            .map_err(|e| format!("building the labels: {e}"))?;
        let mut labels = labels;
        if let Some(rerun) = &task.rerun {
            labels.insert(
                rerun_headers::TASK_LABEL.to_owned(),
                serde_json::to_string(rerun).map_err(|e| format!("the re-run's scope: {e}"))?,
            );
        }
        Ok(NewTask {
            cmd,
            group: self.spec.group.clone(),
            labels,
            idempotency_key: Some(idempotency_key(task)),
        })
    }

    async fn ensure_group(&self) -> Result<(), TaskError> {
        if self.group_ready.get()
            || self
                .store
                .groups()
                .iter()
                .any(|g| g.name == self.spec.group)
        {
            self.group_ready.set(true);
            return Ok(());
        }
        let settings = match &self.spec.group_settings {
            Some(json) => serde_json::from_value(json.clone())
                .map_err(|e| TaskError::Invalid(e.to_string()))?,
            None => GroupSettings::named(&self.spec.group),
        };
        self.store.create_group(settings).await?;
        self.group_ready.set(true);
        Ok(())
    }

    async fn submit(&self, task: &TaskRequest) -> Result<(), String> {
        let new = self.new_task(task)?;
        // The hand-over to the workers: their work and its output follow from this span.
        let span = telemetry::enabled().then(|| {
            telemetry::start(
                "wellspring.queue",
                SpanKind::Producer,
                telemetry::About {
                    actor: "task shard",
                    dag: &self.dag,
                    node: &self.node,
                    key: &task.key,
                    attempt: 1,
                },
                task.trace.as_ref(),
                Vec::new(),
            )
        });
        let origin = DagTaskOrigin {
            dag: self.dag.clone(),
            node: self.node.clone(),
            key: task.key.clone(),
            id: task.id,
            trace: span
                .as_ref()
                .and_then(telemetry::Span::trace)
                .or_else(|| task.trace.clone()),
            origin: task.origin.clone(),
            output_topic: self.output_topic.clone(),
            dead_letter_topic: self.dead_letter_topic.clone(),
            input: task.input.clone(),
        };
        let started = tokio::time::Instant::now();
        let mut wait = Duration::from_millis(50);
        loop {
            let result = match self.ensure_group().await {
                Ok(()) => self
                    .store
                    .submit(new.clone(), Some(origin.clone()))
                    .await
                    .map(|_| ()),
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => return Ok(()),
                Err(TaskError::Unavailable(reason)) if started.elapsed() < SUBMIT_PATIENCE => {
                    tracing::debug!(task = %self.task_name, %reason, "the task store cannot take the task yet; retrying");
                    self.retries.inc();
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(format!("submitting to group {}: {e}", self.spec.group)),
            }
        }
    }
}

#[async_trait(?Send)]
impl TaskRunner for QueueTaskRunner {
    fn task_name(&self) -> &str {
        &self.task_name
    }

    fn max_pending(&self) -> usize {
        256
    }

    async fn call(&self, task: TaskRequest) -> TaskResult {
        let outcome = match self.submit(&task).await {
            Ok(()) => TaskOutcome::Submitted,
            Err(error) => TaskOutcome::Failed { error },
        };
        TaskResult {
            request: task,
            attempts: 1,
            outcome,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wellspring_protocol::redrive::headers::REDRIVE_OF;
    use wellspring_protocol::{Envelope, MessageId, Value};

    #[test]
    fn a_redrive_is_submitted_under_its_own_key_and_a_replay_under_the_records() {
        let id = MessageId::derive("lab", "site", "E/1/B02/1");
        let mut envelope = Envelope::new(id, "E/1/B02/1", Value::Null);
        let replay = TaskRequest::from_envelope("features", envelope.clone());
        assert_eq!(idempotency_key(&replay), id.to_string());
        envelope
            .headers
            .push((REDRIVE_OF.to_owned(), "dead-letter-1".to_owned()));
        let redrive = TaskRequest::from_envelope("features", envelope);
        assert_eq!(redrive.redrive_of.as_deref(), Some("dead-letter-1"));
        // Not the key of the task that failed, and the same for the same redrive.
        assert_eq!(
            idempotency_key(&redrive),
            format!("{id}/redrive/dead-letter-1")
        );
        assert_eq!(redrive.id, id, "the record keeps its id");
    }
}
