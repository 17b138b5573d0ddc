//! Cross-checks of a parsed spec: every reference resolves, the graph has no cycle, and
//! the schemas of connected nodes fit.

use std::collections::{BTreeMap, BTreeSet};

use super::parse::{RawSpec, suggest};
use super::{Dag, FunctionCatalog, HttpTask, NodeKind, NodeSpec, SpecError, SpecSource, TaskDecl};
use crate::schema::PRIMITIVE_SCHEMAS;

/// Roots a body template may reference.
const BODY_CONTEXT: &[&str] = &["input", "key", "id", "attempt"];
/// Roots an output template may reference.
const OUTPUT_CONTEXT: &[&str] = &["input", "key", "id", "attempt", "response", "status"];

pub(crate) fn validate(
    raw: RawSpec,
    source: SpecSource,
    catalog: &dyn FunctionCatalog,
    errors: &mut Vec<SpecError>,
) -> Dag {
    let mut v = Validator {
        raw: &raw,
        catalog,
        errors,
    };
    v.schemas();
    v.topics();
    v.tasks();
    let order = v.graph();
    let mut nodes = raw.nodes.clone();
    nodes.sort_by_key(|n| order.get(&n.name).copied().unwrap_or(usize::MAX));
    Dag {
        name: raw.name,
        version: raw.version,
        description: raw.description,
        settings: raw.settings,
        variables: raw.variables,
        schemas: raw.schemas,
        topics: raw.topics,
        tasks: raw.tasks,
        nodes,
        source,
    }
}

/// The schema node `name` emits: a topic's value schema, a function's output, a task's
/// output schema (`json` when it declares none). `None` for publish nodes.
pub(crate) fn output_schema(dag: &Dag, name: &str) -> Option<String> {
    let node = dag.node(name)?;
    node_output(&node.kind, &dag.topics, &dag.tasks, None)
}

fn node_output(
    kind: &NodeKind,
    topics: &BTreeMap<String, super::TopicDecl>,
    tasks: &BTreeMap<String, TaskDecl>,
    catalog: Option<&dyn FunctionCatalog>,
) -> Option<String> {
    match kind {
        NodeKind::TopicStream { topic } | NodeKind::TopicTable { topic } => {
            topics.get(topic).map(|t| t.value_schema.clone())
        }
        NodeKind::StreamOperation(op) => match catalog {
            Some(c) => c.signature(&op.function).map(|s| s.output),
            None => op.value_schema.clone(),
        },
        NodeKind::ExternalTask { task, .. } => tasks.get(task).map(TaskDecl::output_schema),
        NodeKind::Publish { .. } => None,
    }
}

struct Validator<'a, 'e> {
    raw: &'a RawSpec,
    catalog: &'a dyn FunctionCatalog,
    errors: &'e mut Vec<SpecError>,
}

impl Validator<'_, '_> {
    fn error(&mut self, location: &str, field: &str, message: impl Into<String>) {
        self.errors.push(SpecError::new(location, field, message));
    }

    fn schema_exists(&mut self, location: &str, field: &str, name: &str) -> bool {
        if self.raw.schemas.knows(name) {
            return true;
        }
        if self.raw.broken.contains(&format!("schemas.{name}")) {
            return false;
        }
        let candidates: Vec<&str> = self
            .raw
            .schemas
            .names()
            .chain(PRIMITIVE_SCHEMAS.iter().copied())
            .collect();
        let hint = suggest(name, candidates)
            .map(|s| format!(" (did you mean {s:?}?)"))
            .unwrap_or_default();
        self.error(location, field, format!("unknown schema {name:?}{hint}"));
        false
    }

    fn schemas(&mut self) {
        for name in &self.raw.declared_schemas {
            let Some(schema) = self.raw.schemas.get(name) else {
                continue;
            };
            if PRIMITIVE_SCHEMAS.contains(&name.as_str()) {
                self.error(
                    &format!("schemas.{name}"),
                    "",
                    "is a primitive type name; choose another name",
                );
            }
            for field in &schema.fields {
                for reference in field.ty.references() {
                    self.schema_exists(
                        &format!("schemas.{name}"),
                        &format!("fields.{}", field.name),
                        reference,
                    );
                }
            }
        }
    }

    fn topics(&mut self) {
        for (name, topic) in &self.raw.topics {
            let location = format!("topics.{name}");
            self.schema_exists(&location, "key-schema", &topic.key_schema);
            self.schema_exists(&location, "value-schema", &topic.value_schema);
        }
    }

    fn tasks(&mut self) {
        for (name, task) in &self.raw.tasks {
            let location = format!("tasks.{name}");
            match task {
                TaskDecl::Http(task) => self.http_task(&location, task),
                TaskDecl::Queue(task) => self.queue_task(&location, task),
            }
        }
    }

    fn http_task(&mut self, location: &str, task: &HttpTask) {
        let input = task.input_schema.clone();
        if let Some(s) = &input {
            self.schema_exists(location, "input-schema", s);
        }
        if let Some(s) = &task.output_schema {
            self.schema_exists(location, "output-schema", s);
        }
        let mut variables: Vec<(&str, String)> = task
            .url
            .variables()
            .map(|v| ("url", v.to_owned()))
            .collect();
        for (header, value) in &task.headers {
            let _ = header;
            variables.extend(value.variables().map(|v| ("headers", v.to_owned())));
        }
        for t in [&task.body, &task.output].into_iter().flatten() {
            variables.extend(t.variables().into_iter().map(|v| ("body", v)));
        }
        for (field, var) in variables {
            if !self.raw.variables.contains_key(&var) {
                let hint = suggest(&var, self.raw.variables.keys().map(String::as_str))
                    .map(|s| format!(" (did you mean {s:?}?)"))
                    .unwrap_or_default();
                self.error(
                    location,
                    field,
                    format!("variable ${{{var}}} is not declared under variables{hint}"),
                );
            }
        }
        // Record fields the URL and headers read must exist in the input schema.
        let record_fields: Vec<(&str, String)> = task
            .url
            .fields()
            .map(|f| ("url", f.to_owned()))
            .chain(task.headers.iter().flat_map(|(_, t)| {
                t.fields()
                    .map(|f| ("headers", f.to_owned()))
                    .collect::<Vec<_>>()
            }))
            .collect();
        for (field, path) in record_fields {
            self.check_path(location, field, input.as_deref(), &path);
        }
        for (field, template, roots) in [
            ("body", &task.body, BODY_CONTEXT),
            ("output", &task.output, OUTPUT_CONTEXT),
        ] {
            let Some(template) = template else { continue };
            for reference in template.references() {
                if reference.is_empty() {
                    continue;
                }
                let (root, rest) = reference
                    .split_once('.')
                    .unwrap_or((reference.as_str(), ""));
                if !roots.contains(&root) {
                    self.error(
                        location,
                        field,
                        format!("$.{reference}: {root:?} is not one of {}", roots.join(", ")),
                    );
                } else if root == "input" && !rest.is_empty() {
                    self.check_path(location, field, input.as_deref(), rest);
                }
            }
        }
    }

    fn queue_task(&mut self, location: &str, task: &super::QueueTask) {
        if let Some(s) = &task.input_schema {
            self.schema_exists(location, "input-schema", s);
        }
        if let Some(s) = &task.output_schema {
            self.schema_exists(location, "output-schema", s);
        }
        let input = task.input_schema.clone();
        let fields: Vec<(&str, String)> = task
            .cmd
            .iter()
            .flat_map(|t| {
                t.fields()
                    .map(|f| ("cmd", f.to_owned()))
                    .collect::<Vec<_>>()
            })
            .chain(task.labels.iter().flat_map(|(_, t)| {
                t.fields()
                    .map(|f| ("labels", f.to_owned()))
                    .collect::<Vec<_>>()
            }))
            .collect();
        for (field, path) in fields {
            self.check_path(location, field, input.as_deref(), &path);
        }
        let variables: Vec<String> = task
            .cmd
            .iter()
            .chain(task.labels.iter().map(|(_, t)| t))
            .flat_map(|t| t.variables().map(str::to_owned).collect::<Vec<_>>())
            .collect();
        for var in variables {
            if !self.raw.variables.contains_key(&var) {
                self.error(
                    location,
                    "cmd",
                    format!("variable ${{{var}}} is not declared under variables"),
                );
            }
        }
    }

    /// Checks that the first segment of `path` is a field of `schema` (when known).
    fn check_path(&mut self, location: &str, field: &str, schema: Option<&str>, path: &str) {
        let Some(schema_name) = schema else { return };
        let Some(schema) = self.raw.schemas.get(schema_name) else {
            return;
        };
        let first = path.split('.').next().unwrap_or(path);
        if schema.field(first).is_none() {
            let names: Vec<&str> = schema.fields.iter().map(|f| f.name.as_str()).collect();
            let hint = suggest(first, names.iter().copied())
                .map(|s| format!(" (did you mean {s:?}?)"))
                .unwrap_or_default();
            self.error(
                location,
                field,
                format!("{path:?}: {schema_name} has no field {first:?}{hint}"),
            );
        }
    }

    /// Checks every node; returns the topological position of each node.
    fn graph(&mut self) -> BTreeMap<String, usize> {
        let nodes: BTreeMap<&str, &NodeSpec> = self
            .raw
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), n))
            .collect();
        let names: Vec<&str> = nodes.keys().copied().collect();
        // Output schema of each node, for edge checks.
        let outputs: BTreeMap<&str, Option<String>> = nodes
            .iter()
            .map(|(name, node)| {
                (
                    *name,
                    node_output(
                        &node.kind,
                        &self.raw.topics,
                        &self.raw.tasks,
                        Some(self.catalog),
                    ),
                )
            })
            .collect();
        let mut upstream_ok: BTreeMap<&str, Vec<&str>> = BTreeMap::new();

        for node in &self.raw.nodes {
            let location = format!("graph.{}", node.name);
            // Resolve references to other nodes.
            let mut resolved = Vec::new();
            let field = match &node.kind {
                NodeKind::StreamOperation(_) => "inputs",
                _ => "stream",
            };
            for input in node.kind.upstream() {
                if input == node.name {
                    self.error(&location, field, "a node cannot read its own output");
                } else if let Some(up) = nodes.get(input) {
                    if matches!(up.kind, NodeKind::Publish { .. }) {
                        self.error(&location, field, format!("{input:?} is a publish node and has no output to read; read the node it publishes"));
                    } else {
                        resolved.push(input);
                    }
                } else if !self.raw.broken.contains(&format!("graph.{input}")) {
                    let hint = suggest(input, names.iter().copied())
                        .map(|s| format!(" (did you mean {s:?}?)"))
                        .unwrap_or_default();
                    self.error(&location, field, format!("unknown input {input:?}{hint}"));
                }
            }
            upstream_ok.insert(&node.name, resolved.clone());

            match &node.kind {
                NodeKind::TopicStream { topic } | NodeKind::TopicTable { topic } => {
                    self.topic_exists(&location, topic);
                }
                NodeKind::Publish { stream, topic } => {
                    self.not_a_table(&location, "stream", stream, &nodes);
                    if self.topic_exists(&location, topic) {
                        let want = self.raw.topics[topic].value_schema.clone();
                        self.edge(
                            &location,
                            "stream",
                            stream,
                            outputs.get(stream.as_str()),
                            &want,
                            &format!("topic {topic}"),
                        );
                    }
                }
                NodeKind::ExternalTask { stream, task } => {
                    self.not_a_table(&location, "stream", stream, &nodes);
                    match self.raw.tasks.get(task) {
                        Some(decl) => {
                            if let Some(want) = decl.input_schema() {
                                self.edge(
                                    &location,
                                    "stream",
                                    stream,
                                    outputs.get(stream.as_str()),
                                    want,
                                    &format!("task {task}"),
                                );
                            }
                        }
                        None if self.raw.broken.contains(&format!("tasks.{task}")) => {}
                        None => {
                            let hint = suggest(task, self.raw.tasks.keys().map(String::as_str))
                                .map(|s| format!(" (did you mean {s:?}?)"))
                                .unwrap_or_default();
                            self.error(
                                &location,
                                "task-name",
                                format!("unknown task {task:?}{hint}"),
                            );
                        }
                    }
                }
                NodeKind::StreamOperation(op) => {
                    let Some(signature) = self.catalog.signature(&op.function) else {
                        let known = self.catalog.names();
                        let hint = suggest(&op.function, known.iter().map(String::as_str))
                            .map(|s| format!(" (did you mean {s:?}?)"))
                            .unwrap_or_default();
                        self.error(
                            &location,
                            "function",
                            format!(
                                "unknown function {:?}{hint}; known functions: {}",
                                op.function,
                                known.join(", ")
                            ),
                        );
                        continue;
                    };
                    let (tables, streams): (Vec<&str>, Vec<&str>) = resolved
                        .iter()
                        .partition(|i| matches!(nodes[*i].kind, NodeKind::TopicTable { .. }));
                    match streams.as_slice() {
                        [stream] => self.edge(
                            &location,
                            "inputs",
                            stream,
                            outputs.get(stream),
                            &signature.input,
                            &format!("function {}", op.function),
                        ),
                        [] if op.inputs.len() == resolved.len() => {
                            self.error(
                                &location,
                                "inputs",
                                format!("needs one stream input ({} records)", signature.input),
                            );
                        }
                        [] => {}
                        _ => self.error(
                            &location,
                            "inputs",
                            format!(
                                "has {} stream inputs; {} takes one",
                                streams.len(),
                                op.function
                            ),
                        ),
                    }
                    match (&signature.table, tables.as_slice()) {
                        (Some(want), [table]) => self.edge(
                            &location,
                            "inputs",
                            table,
                            outputs.get(table),
                            want,
                            &format!("function {}", op.function),
                        ),
                        (Some(want), []) if op.inputs.len() == resolved.len() => {
                            self.error(&location, "inputs", format!("{} needs a topic-table input of {want} (the experiment metadata)", op.function));
                        }
                        (None, [_, ..]) => self.error(
                            &location,
                            "inputs",
                            format!("{} takes no table input", op.function),
                        ),
                        (Some(_), [_, _, ..]) => self.error(
                            &location,
                            "inputs",
                            format!("{} takes one table input", op.function),
                        ),
                        _ => {}
                    }
                    if let Some(declared) = &op.value_schema
                        && self.schema_exists(&location, "value-schema", declared)
                        && let Err(reasons) =
                            self.raw.schemas.assignable(&signature.output, declared)
                    {
                        self.error(
                            &location,
                            "value-schema",
                            format!(
                                "{} emits {} records, which do not fit {declared}: {}",
                                op.function,
                                signature.output,
                                reasons.join("; ")
                            ),
                        );
                    }
                    if let Some(key) = &op.key_schema
                        && key != "string"
                    {
                        self.error(&location, "key-schema", format!("{key:?}: keys of aggregates are strings (EXPERIMENT/PLATE/WELL/SITE); use string"));
                    }
                }
            }
        }
        self.topological_order(&upstream_ok)
    }

    fn topic_exists(&mut self, location: &str, topic: &str) -> bool {
        if self.raw.topics.contains_key(topic) {
            return true;
        }
        if !self.raw.broken.contains(&format!("topics.{topic}")) {
            let hint = suggest(topic, self.raw.topics.keys().map(String::as_str))
                .map(|s| format!(" (did you mean {s:?}?)"))
                .unwrap_or_default();
            self.error(
                location,
                "topic-name",
                format!("topic {topic:?} is not declared under topics{hint}"),
            );
        }
        false
    }

    fn not_a_table(
        &mut self,
        location: &str,
        field: &str,
        input: &str,
        nodes: &BTreeMap<&str, &NodeSpec>,
    ) {
        if nodes
            .get(input)
            .is_some_and(|n| matches!(n.kind, NodeKind::TopicTable { .. }))
        {
            self.error(
                location,
                field,
                format!("{input:?} is a topic-table; only stream-operations join tables"),
            );
        }
    }

    /// Checks that what `from` emits fits what the consumer wants.
    fn edge(
        &mut self,
        location: &str,
        field: &str,
        from: &str,
        have: Option<&Option<String>>,
        want: &str,
        consumer: &str,
    ) {
        let Some(Some(have)) = have else { return };
        if !self.raw.schemas.knows(want) || !self.raw.schemas.knows(have) {
            return;
        }
        if let Err(reasons) = self.raw.schemas.assignable(have, want) {
            self.error(
                location,
                field,
                format!(
                    "schema mismatch: {from:?} emits {have} but {consumer} expects {want} ({})",
                    reasons.join("; ")
                ),
            );
        }
    }

    /// Kahn's algorithm; nodes left over are on a cycle.
    fn topological_order(
        &mut self,
        upstream: &BTreeMap<&str, Vec<&str>>,
    ) -> BTreeMap<String, usize> {
        let mut indegree: BTreeMap<&str, usize> =
            upstream.iter().map(|(n, ups)| (*n, ups.len())).collect();
        let mut ready: Vec<&str> = indegree
            .iter()
            .filter(|(_, d)| **d == 0)
            .map(|(n, _)| *n)
            .collect();
        ready.reverse();
        let mut order = BTreeMap::new();
        while let Some(node) = ready.pop() {
            order.insert(node.to_owned(), order.len());
            for (consumer, ups) in upstream {
                if ups.contains(&node) {
                    let d = indegree.entry(consumer).or_default();
                    *d -= ups.iter().filter(|u| **u == node).count().min(*d);
                    if *d == 0 && !order.contains_key(*consumer) && !ready.contains(consumer) {
                        ready.push(consumer);
                    }
                }
            }
        }
        let cyclic: BTreeSet<&str> = upstream
            .keys()
            .filter(|n| !order.contains_key(**n))
            .copied()
            .collect();
        for node in &cyclic {
            let path = self.cycle_through(node, upstream, &cyclic);
            self.error(
                &format!("graph.{node}"),
                if matches!(
                    self.raw
                        .nodes
                        .iter()
                        .find(|n| n.name == *node)
                        .map(|n| &n.kind),
                    Some(NodeKind::StreamOperation(_))
                ) {
                    "inputs"
                } else {
                    "stream"
                },
                format!("is on a cycle: {path}"),
            );
        }
        order
    }

    fn cycle_through(
        &self,
        start: &str,
        upstream: &BTreeMap<&str, Vec<&str>>,
        cyclic: &BTreeSet<&str>,
    ) -> String {
        let mut path = vec![start];
        let mut current = start;
        for _ in 0..cyclic.len() {
            let Some(next) = upstream
                .get(current)
                .and_then(|ups| ups.iter().find(|u| cyclic.contains(*u)))
            else {
                break;
            };
            if *next == start {
                path.push(start);
                break;
            }
            if path.contains(next) {
                path.push(next);
                break;
            }
            path.push(next);
            current = next;
        }
        path.reverse();
        path.join(" -> ")
    }
}
