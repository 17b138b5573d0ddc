//! DAG specs: the reference system's JSON form (and the same in YAML), plus the
//! declarations of schemas, topics, tasks and variables.
//!
//! ```yaml
//! name: extract-site-level-features
//! topics:
//!   images_channel: {value-schema: channel_level, partitions: 8}
//!   experiment_metadata: {value-schema: experiment_metadata}
//!   extracted_features: {value-schema: json}
//! tasks:
//!   extract-features:
//!     type: http
//!     url: "${features-url}/v1/sites/{experiment_id}"
//!     max-inflight: 400
//!     retries: 5
//! graph:
//!   images-channel:      {type: topic-stream, topic-name: images_channel}
//!   experiment-metadata: {type: topic-table,  topic-name: experiment_metadata}
//!   images-site:         {type: stream-operation, inputs: [images-channel, experiment-metadata],
//!                         function: aggregations/images-site-grouping}
//!   features-site:       {type: external-task, stream: images-site, task-name: extract-features}
//!   features-output:     {type: publish, topic-name: extracted_features, stream: features-site}
//! ```
//!
//! [`Dag::load`] parses and validates in one go and reports every problem at once, each
//! with where it is (`graph.images-site`) and which field (`inputs`).

pub mod builtins;
mod parse;
mod render;
pub mod template;
#[cfg(test)]
mod tests;
pub mod upgrade;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::schema::SchemaSet;

pub use render::{to_dot, to_mermaid};
pub use template::{JsonTemplate, TextTemplate};

/// Text format of a spec file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecFormat {
    Json,
    Yaml,
}

impl SpecFormat {
    /// From the file name (`.json`, `.yaml`, `.yml`), else from the content: JSON starts
    /// with `{`.
    pub fn detect(file_name: &str, content: &str) -> Self {
        let lower = file_name.to_ascii_lowercase();
        if lower.ends_with(".json") {
            SpecFormat::Json
        } else if lower.ends_with(".yaml") || lower.ends_with(".yml") {
            SpecFormat::Yaml
        } else if content.trim_start().starts_with('{') {
            SpecFormat::Json
        } else {
            SpecFormat::Yaml
        }
    }
}

/// One problem in a spec: where it is, which field, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// `graph.images-site`, `tasks.extract-features`, `topics.images_channel`, or empty
    /// for the top level.
    pub location: String,
    /// The field within it (`inputs`, `url`), empty for the element itself.
    pub field: String,
    pub message: String,
}

impl SpecError {
    pub(crate) fn new(location: &str, field: &str, message: impl Into<String>) -> Self {
        Self {
            location: location.to_owned(),
            field: field.to_owned(),
            message: message.into(),
        }
    }

    /// The DAG node this error is about, when it is about one.
    pub fn node(&self) -> Option<&str> {
        self.location.strip_prefix("graph.")
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.location.is_empty(), self.field.is_empty()) {
            (true, true) => write!(f, "{}", self.message),
            (true, false) => write!(f, "{}: {}", self.field, self.message),
            (false, true) => write!(f, "{}: {}", self.location, self.message),
            (false, false) => write!(f, "{}.{}: {}", self.location, self.field, self.message),
        }
    }
}

/// Every problem found in a spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SpecErrors(pub Vec<SpecError>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "{n} error{} in the DAG spec:",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

/// The signature of a stream-operation function, as the validator needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionSignature {
    /// Schema its stream input must be assignable to.
    pub input: String,
    /// Schema of what it emits.
    pub output: String,
    /// Schema of the table it joins, when it needs one (the experiment metadata).
    pub table: Option<String>,
    pub description: String,
}

/// The stream-operation functions a runtime offers (built-ins and registered ones).
pub trait FunctionCatalog {
    fn signature(&self, name: &str) -> Option<FunctionSignature>;
    fn names(&self) -> Vec<String>;
}

/// Settings of the whole DAG.
#[derive(Debug, Clone, PartialEq)]
pub struct DagSettings {
    /// Partitions (shards) of the internal topics each stateful node reads.
    pub partitions: u32,
    /// Where records that cannot be processed go, with the reason.
    pub dead_letter_topic: String,
    /// Where `incomplete` records of every grouping go.
    pub incomplete_topic: String,
}

/// A declared topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDecl {
    pub name: String,
    pub key_schema: String,
    pub value_schema: String,
    /// Partitions to create it with when it does not exist.
    pub partitions: Option<u32>,
}

/// A stream-operation node.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamOperation {
    pub inputs: Vec<String>,
    pub function: String,
    pub key_schema: Option<String>,
    pub value_schema: Option<String>,
    /// An aggregate open this long emits an `incomplete` record naming what is missing.
    pub incomplete_timeout: Option<Duration>,
    pub partitions: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    /// Every record of an external topic, as a stream.
    TopicStream {
        topic: String,
    },
    /// An external topic read as a table (latest value per key), e.g. experiment metadata.
    TopicTable {
        topic: String,
    },
    StreamOperation(StreamOperation),
    /// Calls a task (HTTP microservice) for every record of `stream`.
    ExternalTask {
        stream: String,
        task: String,
    },
    /// Writes every record of `stream` to an external topic as JSON.
    Publish {
        stream: String,
        topic: String,
    },
}

impl NodeKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            NodeKind::TopicStream { .. } => "topic-stream",
            NodeKind::TopicTable { .. } => "topic-table",
            NodeKind::StreamOperation(_) => "stream-operation",
            NodeKind::ExternalTask { .. } => "external-task",
            NodeKind::Publish { .. } => "publish",
        }
    }

    /// The nodes this one reads from.
    pub fn upstream(&self) -> Vec<&str> {
        match self {
            NodeKind::TopicStream { .. } | NodeKind::TopicTable { .. } => Vec::new(),
            NodeKind::StreamOperation(op) => op.inputs.iter().map(String::as_str).collect(),
            NodeKind::ExternalTask { stream, .. } | NodeKind::Publish { stream, .. } => {
                vec![stream.as_str()]
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct NodeSpec {
    pub name: String,
    pub kind: NodeKind,
}

/// HTTP method of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }
}

/// Exponential back-off between attempts.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub multiplier: f64,
    /// Full jitter: wait a uniform random time up to the computed delay, so retries of many
    /// records spread out instead of hammering a recovering service together.
    pub jitter: bool,
}

impl Backoff {
    /// The un-jittered delay before retry number `retry` (1-based).
    pub fn delay(&self, retry: u32) -> Duration {
        let exp = self.multiplier.powi(retry.saturating_sub(1).min(64) as i32);
        let secs = (self.initial.as_secs_f64() * exp).min(self.max.as_secs_f64());
        Duration::from_secs_f64(secs.max(0.0))
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: true,
        }
    }
}

/// A status code or class the success predicate accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusMatch {
    Code(u16),
    /// `2xx`: 200..=299.
    Class(u8),
}

impl StatusMatch {
    pub fn matches(self, status: u16) -> bool {
        match self {
            StatusMatch::Code(c) => c == status,
            StatusMatch::Class(c) => status / 100 == u16::from(c),
        }
    }
}

impl fmt::Display for StatusMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatusMatch::Code(c) => write!(f, "{c}"),
            StatusMatch::Class(c) => write!(f, "{c}xx"),
        }
    }
}

/// A condition on a response header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderTest {
    Present(bool),
    Equals(String),
    In(Vec<String>),
    /// Passes when the header is absent too.
    NotIn(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderCondition {
    /// Header name, lower case.
    pub name: String,
    pub test: HeaderTest,
}

impl HeaderCondition {
    pub fn holds(&self, value: Option<&str>) -> bool {
        match (&self.test, value) {
            (HeaderTest::Present(want), v) => v.is_some() == *want,
            (HeaderTest::Equals(want), Some(v)) => v == want,
            (HeaderTest::In(set), Some(v)) => set.iter().any(|s| s == v),
            (HeaderTest::NotIn(set), Some(v)) => !set.iter().any(|s| s == v),
            (HeaderTest::NotIn(_), None) => true,
            (HeaderTest::Equals(_) | HeaderTest::In(_), None) => false,
        }
    }
}

/// When a response counts as success: its status is in `statuses` and every header
/// condition holds. The reference: status 200 and no `X-Function-Error` of `Handled` or
/// `Unhandled`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuccessPredicate {
    pub statuses: Vec<StatusMatch>,
    pub headers: Vec<HeaderCondition>,
}

impl Default for SuccessPredicate {
    fn default() -> Self {
        Self {
            statuses: vec![StatusMatch::Class(2)],
            headers: Vec::new(),
        }
    }
}

impl SuccessPredicate {
    /// `None` when the response succeeds, else why not.
    pub fn failure(&self, status: u16, header: impl Fn(&str) -> Option<String>) -> Option<String> {
        if !self.statuses.iter().any(|s| s.matches(status)) {
            return Some(format!("status {status} is not a success status"));
        }
        for condition in &self.headers {
            let value = header(&condition.name);
            if !condition.holds(value.as_deref()) {
                return Some(match value {
                    Some(v) => format!(
                        "header {}: {v:?} fails the success condition",
                        condition.name
                    ),
                    None => format!("header {} is missing", condition.name),
                });
            }
        }
        None
    }
}

/// An HTTP task: how to call a microservice for one record.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpTask {
    pub method: Method,
    pub url: TextTemplate,
    pub headers: Vec<(String, TextTemplate)>,
    /// Request body; `None` sends the input record itself.
    pub body: Option<JsonTemplate>,
    /// The task's output record; `None` takes the response body.
    pub output: Option<JsonTemplate>,
    pub input_schema: Option<String>,
    pub output_schema: Option<String>,
    /// Never more requests than this in flight (per node).
    pub max_inflight: u32,
    /// Retries after the first attempt.
    pub retries: u32,
    pub backoff: Backoff,
    pub timeout: Duration,
    pub success: SuccessPredicate,
    /// Statuses that are not retried (the request itself is wrong): 4xx but 408 and 429.
    pub permanent_statuses: Vec<StatusMatch>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TaskDecl {
    Http(HttpTask),
    Queue(QueueTask),
}

impl TaskDecl {
    pub fn input_schema(&self) -> Option<&str> {
        match self {
            TaskDecl::Http(t) => t.input_schema.as_deref(),
            TaskDecl::Queue(t) => t.input_schema.as_deref(),
        }
    }

    /// The schema of the task's output (`json` when it declares none).
    pub fn output_schema(&self) -> String {
        match self {
            TaskDecl::Http(t) => t.output_schema.clone(),
            TaskDecl::Queue(t) => t.output_schema.clone(),
        }
        .unwrap_or_else(|| "json".into())
    }
}

/// A queue task: every record becomes a task in a task-store group, run by workers;
/// a worker's success output is the task's output.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueTask {
    pub group: String,
    /// The command line, each argument a template over the input record.
    pub cmd: Vec<TextTemplate>,
    pub labels: Vec<(String, TextTemplate)>,
    /// Settings to create the group with if it does not exist (as `POST /groups`).
    pub group_settings: Option<serde_json::Value>,
    pub input_schema: Option<String>,
    pub output_schema: Option<String>,
}

/// The version a spec has when it says none.
pub const DEFAULT_DAG_VERSION: u32 = 1;

/// The text a DAG was loaded from, as its author wrote it: what a node records as the
/// DAG it runs, so that every node (and `upgrade-check`) can load it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecSource {
    pub text: String,
    pub format: SpecFormat,
}

/// A validated DAG, nodes in topological order.
#[derive(Debug, Clone)]
pub struct Dag {
    pub name: String,
    /// The spec's `version` (a whole number, [`DEFAULT_DAG_VERSION`] when it has none):
    /// raised with every change, so nodes of two versions tell each other apart.
    pub version: u32,
    pub description: Option<String>,
    pub settings: DagSettings,
    /// Defaults of `${name}` variables; runtime overrides replace them.
    pub variables: BTreeMap<String, String>,
    pub schemas: SchemaSet,
    pub topics: BTreeMap<String, TopicDecl>,
    pub tasks: BTreeMap<String, TaskDecl>,
    pub nodes: Vec<NodeSpec>,
    pub source: SpecSource,
}

impl Dag {
    /// Parses and validates a spec. Every problem is reported at once.
    pub fn load(
        text: &str,
        format: SpecFormat,
        catalog: &dyn FunctionCatalog,
    ) -> Result<Dag, SpecErrors> {
        let (raw, mut errors) = parse::parse(text, format);
        let source = SpecSource {
            text: text.to_owned(),
            format,
        };
        let dag = raw.map(|raw| validate::validate(raw, source, catalog, &mut errors));
        match dag {
            Some(dag) if errors.is_empty() => Ok(dag),
            _ => Err(SpecErrors(errors)),
        }
    }

    /// Shards of a sharded node (a stream-operation or a task: the partitions of its
    /// input topic, and of its changelog): its own `partitions`, else the DAG's.
    /// `None` for the nodes that have no shards of their own.
    pub fn shards(&self, name: &str) -> Option<u32> {
        match &self.node(name)?.kind {
            NodeKind::StreamOperation(op) => {
                Some(op.partitions.unwrap_or(self.settings.partitions))
            }
            NodeKind::ExternalTask { .. } => Some(self.settings.partitions),
            NodeKind::TopicStream { .. }
            | NodeKind::TopicTable { .. }
            | NodeKind::Publish { .. } => None,
        }
    }

    pub fn node(&self, name: &str) -> Option<&NodeSpec> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Nodes that read from `name`.
    pub fn consumers(&self, name: &str) -> Vec<&NodeSpec> {
        self.nodes
            .iter()
            .filter(|n| n.kind.upstream().contains(&name))
            .collect()
    }

    /// The schema of what node `name` emits (`None` for publish nodes).
    pub fn output_schema(&self, name: &str) -> Option<String> {
        validate::output_schema(self, name)
    }

    /// Replaces variable values (e.g. from `--set name=value`); unknown names are errors.
    pub fn set_variables(&mut self, values: &BTreeMap<String, String>) -> Result<(), SpecErrors> {
        let unknown: Vec<SpecError> = values
            .keys()
            .filter(|k| !self.variables.contains_key(*k))
            .map(|k| {
                SpecError::new(
                    "",
                    "variables",
                    format!(
                        "variable {k:?} is not declared (declared: {})",
                        self.variables
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })
            .collect();
        if !unknown.is_empty() {
            return Err(SpecErrors(unknown));
        }
        self.variables.extend(values.clone());
        Ok(())
    }
}
