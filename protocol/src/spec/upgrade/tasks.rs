//! The declared tasks: changes of an HTTP task's call, of a queue task's group and
//! submissions, and of a task's type (judged where nodes use it, in `nodes`).

use std::collections::BTreeSet;

use super::{Comparison, arrow};
use crate::spec::{HttpTask, TaskDecl};

impl Comparison<'_> {
    pub(super) fn tasks(&mut self) {
        let names: BTreeSet<&String> = self.old.tasks.keys().chain(self.new.tasks.keys()).collect();
        for name in names {
            let location = format!("tasks.{name}");
            match (self.old.tasks.get(name), self.new.tasks.get(name)) {
                (Some(a), Some(b)) if a == b => {}
                (Some(TaskDecl::Http(a)), Some(TaskDecl::Http(b))) => {
                    for change in http_task_changes(a, b) {
                        self.safe(
                            location.clone(),
                            change,
                            "read per call: calls from now on use it; records already called keep their outputs (and their ids)",
                        );
                    }
                }
                (Some(TaskDecl::Queue(a)), Some(TaskDecl::Queue(b))) => {
                    if a.group != b.group {
                        self.safe(
                            location.clone(),
                            format!("group: {}", arrow(&a.group, &b.group)),
                            format!(
                                "new tasks go to {}; tasks already submitted finish in {} and their outputs still come back (keep its workers until its queue is empty)",
                                b.group, a.group
                            ),
                        );
                    }
                    let mut rest = a.clone();
                    rest.group = b.group.clone();
                    if &rest != b {
                        self.safe(
                            location,
                            "command, labels, schemas or group settings changed".into(),
                            "read per submission: tasks submitted from now on use them",
                        );
                    }
                }
                // A change of type is judged where a node uses the task (`graph`).
                (Some(_), Some(b)) => self.safe(
                    location,
                    format!("type: now {}", task_type(b)),
                    "judged at the nodes that use it",
                ),
                (None, Some(_)) => self.safe(location, "added".into(), "nothing calls it yet"),
                (Some(_), None) => self.safe(
                    location,
                    "removed".into(),
                    "no node of the new spec calls it (the spec would not validate otherwise)",
                ),
                (None, None) => {}
            }
        }
    }
}

pub(super) fn task_type(task: &TaskDecl) -> &'static str {
    match task {
        TaskDecl::Http(_) => "http",
        TaskDecl::Queue(_) => "queue",
    }
}

/// The fields of an HTTP task that differ, each in words.
fn http_task_changes(a: &HttpTask, b: &HttpTask) -> Vec<String> {
    let mut out = Vec::new();
    if a.method != b.method {
        out.push(format!(
            "method: {} -> {}",
            a.method.as_str(),
            b.method.as_str()
        ));
    }
    if a.url != b.url {
        out.push(format!("url: {}", arrow(a.url.source(), b.url.source())));
    }
    if a.max_inflight != b.max_inflight {
        out.push(format!(
            "max-inflight: {} -> {}",
            a.max_inflight, b.max_inflight
        ));
    }
    if a.retries != b.retries {
        out.push(format!("retries: {} -> {}", a.retries, b.retries));
    }
    if a.timeout != b.timeout {
        out.push(format!("timeout: {}", arrow(a.timeout, b.timeout)));
    }
    if a.backoff != b.backoff {
        out.push("backoff changed".into());
    }
    for (field, changed) in [
        ("headers", a.headers != b.headers),
        ("body", a.body != b.body),
        ("output", a.output != b.output),
        ("input-schema", a.input_schema != b.input_schema),
        ("output-schema", a.output_schema != b.output_schema),
        ("success", a.success != b.success),
        (
            "permanent-statuses",
            a.permanent_statuses != b.permanent_statuses,
        ),
    ] {
        if changed {
            out.push(format!("{field} changed"));
        }
    }
    out
}
