//! The DAG as a picture: Mermaid (renders on GitHub) and Graphviz DOT.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::{Dag, NodeKind, TaskDecl};

fn label(dag: &Dag, name: &str, kind: &NodeKind) -> (String, String) {
    let (first, second) = match kind {
        NodeKind::TopicStream { topic } => (name.to_owned(), format!("stream of topic {topic}")),
        NodeKind::TopicTable { topic } => (name.to_owned(), format!("table of topic {topic}")),
        NodeKind::StreamOperation(op) => (name.to_owned(), op.function.clone()),
        NodeKind::ExternalTask { task, .. } => {
            let detail = match dag.tasks.get(task) {
                Some(TaskDecl::Queue(queue)) => format!("queue group {}", queue.group),
                Some(TaskDecl::Http(http)) => format!(
                    "{} {} (max-inflight {}, retries {})",
                    http.method.as_str(),
                    http.url.source(),
                    http.max_inflight,
                    http.retries
                ),
                None => task.clone(),
            };
            (name.to_owned(), format!("task {task}: {detail}"))
        }
        NodeKind::Publish { topic, .. } => (name.to_owned(), format!("publish to {topic}")),
    };
    (first, second)
}

/// Mermaid ids must be plain identifiers: map each node name to `n0`, `n1`, ...
fn ids(dag: &Dag) -> BTreeMap<&str, String> {
    dag.nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.as_str(), format!("n{i}")))
        .collect()
}

fn mermaid_text(text: &str) -> String {
    text.replace('"', "#quot;")
}

pub fn to_mermaid(dag: &Dag) -> String {
    let ids = ids(dag);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "---\ntitle: {} version {}\n---\nflowchart LR",
        mermaid_text(&dag.name),
        dag.version
    );
    for node in &dag.nodes {
        let (name, detail) = label(dag, &node.name, &node.kind);
        let text = format!(
            "\"{}<br/><small>{}</small>\"",
            mermaid_text(&name),
            mermaid_text(&detail)
        );
        let shape = match node.kind {
            NodeKind::TopicStream { .. } | NodeKind::TopicTable { .. } => format!("[({text})]"),
            NodeKind::StreamOperation(_) => format!("([{text}])"),
            NodeKind::ExternalTask { .. } => format!("{{{{{text}}}}}"),
            NodeKind::Publish { .. } => format!("[/{text}/]"),
        };
        let _ = writeln!(out, "    {}{shape}", ids[node.name.as_str()]);
    }
    for node in &dag.nodes {
        for up in node.kind.upstream() {
            if let (Some(from), Some(to)) = (ids.get(up), ids.get(node.name.as_str())) {
                let arrow = match dag.node(up).map(|n| &n.kind) {
                    Some(NodeKind::TopicTable { .. }) => "-.->",
                    _ => "-->",
                };
                let _ = writeln!(out, "    {from} {arrow} {to}");
            }
        }
    }
    out
}

fn dot_text(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

pub fn to_dot(dag: &Dag) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "digraph \"{}\" {{", dot_text(&dag.name));
    let _ = writeln!(
        out,
        "    label=\"{} version {}\";\n    labelloc=t;",
        dot_text(&dag.name),
        dag.version
    );
    let _ = writeln!(out, "    rankdir=LR;\n    node [fontname=\"Helvetica\"];");
    for node in &dag.nodes {
        let (name, detail) = label(dag, &node.name, &node.kind);
        let shape = match node.kind {
            NodeKind::TopicStream { .. } | NodeKind::TopicTable { .. } => "cylinder",
            NodeKind::StreamOperation(_) => "box, style=rounded",
            NodeKind::ExternalTask { .. } => "hexagon",
            NodeKind::Publish { .. } => "parallelogram",
        };
        let _ = writeln!(
            out,
            "    \"{}\" [shape={shape}, label=\"{}\\n{}\"];",
            dot_text(&node.name),
            dot_text(&name),
            dot_text(&detail)
        );
    }
    for node in &dag.nodes {
        for up in node.kind.upstream() {
            let style = match dag.node(up).map(|n| &n.kind) {
                Some(NodeKind::TopicTable { .. }) => " [style=dashed]",
                _ => "",
            };
            let _ = writeln!(
                out,
                "    \"{}\" -> \"{}\"{style};",
                dot_text(up),
                dot_text(&node.name)
            );
        }
    }
    out.push_str("}\n");
    out
}
