//! The seam between a node's task store and the others': [`PeerLink`], the calls a store
//! forwards ([`PeerCall`]) and what comes back ([`PeerAnswer`]).
//!
//! The store ([`super::store`]) decides what to forward and where; the links
//! ([`super::peers`]: the other node's HTTP API, or a store in the same process) carry it.
//! The node called serves a forwarded call with [`super::Scope::Local`], never forwarding
//! it again.

use async_trait::async_trait;
use uuid::Uuid;
use wellspring_protocol::taskstore::api::{ClaimBatch, ForwardedAnswer, ForwardedSubmit};
use wellspring_protocol::taskstore::{
    Claim, ExtendClaim, GroupStats, Report, TaskStatus, TaskView,
};

use super::table::TaskError;

/// A call forwarded to the node serving a shard (or asked of every other node, for
/// claims, lists and statistics).
#[derive(Debug, Clone)]
pub enum PeerCall {
    /// `POST /internal/tasks`: a submission with its chosen id and DAG origin (boxed:
    /// the DAG origin is large).
    Submit(Box<ForwardedSubmit>),
    /// `POST /tasks/claim`.
    Claim(Claim),
    /// `POST /tasks/batch/claim`: answered with [`PeerAnswer::Tasks`].
    ClaimBatch(ClaimBatch),
    /// `POST /tasks/extend-claim`.
    Extend(ExtendClaim),
    /// `POST /tasks/success` (`success`) or `POST /tasks/failure`.
    Report { report: Report, success: bool },
    /// `GET /tasks/{id}`.
    Get(Uuid),
    /// `GET /groups/{group}/tasks?limit=..&status=..`.
    List {
        group: String,
        status: Option<TaskStatus>,
        limit: usize,
    },
    /// `GET /groups/{group}/stats`.
    Stats { group: String },
}

/// What the other node answered.
#[derive(Debug, Clone)]
pub enum PeerAnswer {
    /// To [`PeerCall::Submit`].
    Submitted(ForwardedAnswer),
    /// To a claim (`None`: nothing to claim there), an extension, a report or a read.
    Task(Option<TaskView>),
    /// To [`PeerCall::List`] and [`PeerCall::ClaimBatch`].
    Tasks(Vec<TaskView>),
    /// To [`PeerCall::Stats`].
    Stats(GroupStats),
}

impl PeerAnswer {
    /// The variant's name, for errors about an answer that does not fit the call.
    pub fn kind(&self) -> &'static str {
        match self {
            PeerAnswer::Submitted(_) => "Submitted",
            PeerAnswer::Task(_) => "Task",
            PeerAnswer::Tasks(_) => "Tasks",
            PeerAnswer::Stats(_) => "Stats",
        }
    }
}

/// How a task store reaches the node at `base_url` (the URL that node announced).
///
/// Errors are as the other node's HTTP API gives them: `Unavailable` for a node that
/// cannot be reached or answers `503` (retry), `Remote` with the status for any other
/// refusal.
#[async_trait]
pub trait PeerLink: Send + Sync + 'static {
    async fn call(&self, base_url: &str, call: PeerCall) -> Result<PeerAnswer, TaskError>;
}
