//! Task requests and results: one call of a task (HTTP microservice or worker) for one
//! record, and how it ended.

use serde::{Deserialize, Serialize};

use crate::envelope::{Envelope, MessageId, TraceContext};
use crate::records::Origin;
use crate::rerun::RerunScope;
use crate::value::Value;

/// One record to run a task on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRequest {
    /// The input record's deterministic id; services can drop repeated calls by it.
    pub id: MessageId,
    pub task: String,
    pub key: String,
    pub input: Value,
    pub trace: Option<TraceContext>,
    pub origin: Option<Origin>,
    /// The dead letter this call was redriven from, when it was: a stage that drops
    /// repeated inputs by id (the task store's idempotent submission) must not drop it.
    #[serde(default)]
    pub redrive_of: Option<String>,
    /// The re-run this call belongs to, when it does: its output is named in that
    /// generation and carries its scope on.
    #[serde(default)]
    pub rerun: Option<RerunScope>,
}

impl TaskRequest {
    pub fn from_envelope(task: &str, envelope: Envelope) -> Self {
        let redrive_of = envelope
            .header(crate::redrive::headers::REDRIVE_OF)
            .map(str::to_owned);
        let rerun = RerunScope::of(&envelope);
        Self {
            redrive_of,
            rerun,
            id: envelope.id,
            task: task.to_owned(),
            key: envelope.key,
            input: envelope.payload,
            trace: envelope.trace,
            origin: envelope.origin,
        }
    }
}

/// How a task ended for one record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TaskOutcome {
    Succeeded {
        output: Value,
    },
    /// Handed over durably to the task store: workers run it, and its output arrives on
    /// the task's output topic.
    Submitted,
    /// Retries exhausted, or a failure retrying cannot fix.
    Failed {
        error: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    pub request: TaskRequest,
    pub attempts: u32,
    pub outcome: TaskOutcome,
}
