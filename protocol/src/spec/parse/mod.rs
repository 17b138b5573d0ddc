//! Structural parsing of a spec document into its parts, collecting every error.
//!
//! serde derive stops at the first error; a spec author wants them all, so the document
//! is read into a JSON tree and walked by hand. An element that does not parse is left
//! out and remembered as broken, so validation does not pile follow-on errors on it.
//! Task declarations are read in [`tasks`].

mod tasks;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Map, Value as Json};

use super::{
    DagSettings, NodeKind, NodeSpec, SpecError, SpecFormat, StreamOperation, TaskDecl, TopicDecl,
};
use crate::schema::{AdditionalFields, Field, FieldType, Schema, SchemaSet};

/// A spec whose parts parsed; not yet cross-checked.
pub(crate) struct RawSpec {
    pub name: String,
    pub version: u32,
    pub description: Option<String>,
    pub settings: DagSettings,
    pub variables: BTreeMap<String, String>,
    pub schemas: SchemaSet,
    pub declared_schemas: Vec<String>,
    pub topics: BTreeMap<String, TopicDecl>,
    pub tasks: BTreeMap<String, TaskDecl>,
    pub nodes: Vec<NodeSpec>,
    /// Elements that failed to parse (by section), so references to them are not
    /// reported again as unknown.
    pub broken: BTreeSet<String>,
}

/// Largest spec accepted: specs are small (the reference lab's were ~1,700 lines in all).
const MAX_SPEC_BYTES: usize = 4 * 1024 * 1024;

pub(crate) fn parse(text: &str, format: SpecFormat) -> (Option<RawSpec>, Vec<SpecError>) {
    let mut errors = Vec::new();
    if text.len() > MAX_SPEC_BYTES {
        errors.push(SpecError::new(
            "",
            "",
            format!(
                "the spec is {} bytes; the limit is {MAX_SPEC_BYTES}",
                text.len()
            ),
        ));
        return (None, errors);
    }
    let doc: Result<Json, String> = match format {
        SpecFormat::Json => serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}")),
        SpecFormat::Yaml => {
            serde_saphyr::from_str(text).map_err(|e| format!("not valid YAML: {e}"))
        }
    };
    let doc = match doc {
        Ok(doc) => doc,
        Err(message) => {
            errors.push(SpecError::new("", "", message));
            return (None, errors);
        }
    };
    let Json::Object(top) = doc else {
        errors.push(SpecError::new(
            "",
            "",
            "the spec must be an object with name and graph",
        ));
        return (None, errors);
    };
    let raw = {
        let mut p = Parser {
            errors: &mut errors,
        };
        p.spec(&top)
    };
    (Some(raw), errors)
}

struct Parser<'e> {
    errors: &'e mut Vec<SpecError>,
}

/// Reads the fields of one object, remembering which were used so the rest can be
/// reported as unknown.
struct Obj<'a> {
    location: String,
    map: &'a Map<String, Json>,
    used: BTreeSet<&'static str>,
}

impl<'a> Obj<'a> {
    fn new(location: impl Into<String>, map: &'a Map<String, Json>) -> Self {
        Self {
            location: location.into(),
            map,
            used: BTreeSet::new(),
        }
    }

    fn get(&mut self, field: &'static str) -> Option<&'a Json> {
        self.used.insert(field);
        self.map.get(field)
    }

    fn error(&self, errors: &mut Vec<SpecError>, field: &str, message: impl Into<String>) {
        errors.push(SpecError::new(&self.location, field, message));
    }

    fn string(
        &mut self,
        errors: &mut Vec<SpecError>,
        field: &'static str,
        required: bool,
    ) -> Option<String> {
        match self.get(field) {
            Some(Json::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Json::String(_)) => {
                self.error(errors, field, "must not be empty");
                None
            }
            Some(other) => {
                self.error(
                    errors,
                    field,
                    format!("must be a string, found {}", kind(other)),
                );
                None
            }
            None if required => {
                self.error(errors, field, "is required");
                None
            }
            None => None,
        }
    }

    fn integer(
        &mut self,
        errors: &mut Vec<SpecError>,
        field: &'static str,
        min: u64,
        max: u64,
    ) -> Option<u64> {
        match self.get(field)? {
            Json::Number(n) => match n.as_u64() {
                Some(v) if (min..=max).contains(&v) => Some(v),
                _ => {
                    self.error(
                        errors,
                        field,
                        format!("must be a whole number from {min} to {max}, found {n}"),
                    );
                    None
                }
            },
            other => {
                self.error(
                    errors,
                    field,
                    format!("must be a number, found {}", kind(other)),
                );
                None
            }
        }
    }

    fn duration(&mut self, errors: &mut Vec<SpecError>, field: &'static str) -> Option<Duration> {
        let value = self.get(field)?;
        match crate::duration::from_json(value) {
            Ok(d) => Some(d),
            Err(e) => {
                self.error(errors, field, e.to_string());
                None
            }
        }
    }

    fn strings(&mut self, errors: &mut Vec<SpecError>, field: &'static str) -> Option<Vec<String>> {
        match self.get(field)? {
            Json::Array(items) => {
                let mut out = Vec::new();
                for item in items {
                    match item {
                        Json::String(s) => out.push(s.clone()),
                        other => {
                            self.error(
                                errors,
                                field,
                                format!("must list strings, found {}", kind(other)),
                            );
                            return None;
                        }
                    }
                }
                Some(out)
            }
            other => {
                self.error(
                    errors,
                    field,
                    format!("must be a list, found {}", kind(other)),
                );
                None
            }
        }
    }

    fn object(
        &mut self,
        errors: &mut Vec<SpecError>,
        field: &'static str,
    ) -> Option<&'a Map<String, Json>> {
        match self.get(field)? {
            Json::Object(map) => Some(map),
            other => {
                self.error(
                    errors,
                    field,
                    format!("must be an object, found {}", kind(other)),
                );
                None
            }
        }
    }

    /// Reports every field not read.
    fn finish(self, errors: &mut Vec<SpecError>) {
        let known: Vec<&str> = self.used.iter().copied().collect();
        for key in self.map.keys().filter(|k| !self.used.contains(k.as_str())) {
            let hint = suggest(key, known.iter().copied())
                .map(|s| format!(" (did you mean {s:?}?)"))
                .unwrap_or_default();
            errors.push(SpecError::new(
                &self.location,
                key,
                format!("unknown field{hint}; expected one of: {}", known.join(", ")),
            ));
        }
    }
}

fn kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "a list",
        Json::Object(_) => "an object",
    }
}

/// The closest candidate within a small edit distance, to suggest for a typo.
pub(crate) fn suggest<'c>(
    name: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    let limit = (name.len() / 3).clamp(1, 3);
    candidates
        .into_iter()
        .map(|c| (strsim::levenshtein(name, c), c))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, c)| c)
}

impl Parser<'_> {
    fn spec(&mut self, top: &Map<String, Json>) -> RawSpec {
        let mut obj = Obj::new("", top);
        let name = obj.string(self.errors, "name", true).unwrap_or_default();
        if !name.is_empty() && !valid_name(&name) {
            obj.error(
                self.errors,
                "name",
                format!("{name:?} may only use letters, digits, '-', '_' and '.'"),
            );
        }
        // A whole number, so that "newer" is never in doubt (a string would leave 1.10
        // against 1.9 to the reader).
        let version = obj
            .integer(self.errors, "version", 1, u64::from(u32::MAX))
            .map_or(super::DEFAULT_DAG_VERSION, |v| v as u32);
        let description = obj.string(self.errors, "description", false);
        let mut raw = RawSpec {
            version,
            settings: DagSettings {
                partitions: 8,
                dead_letter_topic: format!("{name}.dead-letters"),
                incomplete_topic: format!("{name}.incomplete"),
            },
            name,
            description,
            variables: BTreeMap::new(),
            schemas: SchemaSet::with_builtins(),
            declared_schemas: Vec::new(),
            topics: BTreeMap::new(),
            tasks: BTreeMap::new(),
            nodes: Vec::new(),
            broken: BTreeSet::new(),
        };
        if let Some(settings) = obj.object(self.errors, "settings") {
            self.settings(settings, &mut raw.settings);
        }
        if let Some(vars) = obj.object(self.errors, "variables") {
            for (k, v) in vars {
                match v {
                    Json::String(s) => {
                        raw.variables.insert(k.clone(), s.clone());
                    }
                    Json::Number(n) => {
                        raw.variables.insert(k.clone(), n.to_string());
                    }
                    other => self.errors.push(SpecError::new(
                        "variables",
                        k,
                        format!("must be a string, found {}", kind(other)),
                    )),
                }
            }
        }
        if let Some(schemas) = obj.object(self.errors, "schemas") {
            for (name, decl) in schemas {
                match self.schema(name, decl) {
                    Some(schema) => {
                        raw.declared_schemas.push(name.clone());
                        if raw.schemas.get(name).is_some_and(|s| s.builtin) {
                            self.errors.push(SpecError::new(
                                &format!("schemas.{name}"),
                                "",
                                "is a built-in schema; use it without declaring it, or choose another name",
                            ));
                        } else {
                            raw.schemas.insert(schema);
                        }
                    }
                    None => {
                        raw.broken.insert(format!("schemas.{name}"));
                    }
                }
            }
        }
        if let Some(topics) = obj.object(self.errors, "topics") {
            for (name, decl) in topics {
                match self.topic(name, decl) {
                    Some(topic) => {
                        raw.topics.insert(name.clone(), topic);
                    }
                    None => {
                        raw.broken.insert(format!("topics.{name}"));
                    }
                }
            }
        }
        if let Some(tasks) = obj.object(self.errors, "tasks") {
            for (name, decl) in tasks {
                match self.task(name, decl) {
                    Some(task) => {
                        raw.tasks.insert(name.clone(), task);
                    }
                    None => {
                        raw.broken.insert(format!("tasks.{name}"));
                    }
                }
            }
        }
        match obj.object(self.errors, "graph") {
            Some(graph) if graph.is_empty() => obj.error(self.errors, "graph", "has no nodes"),
            Some(graph) => {
                for (name, decl) in graph {
                    match self.node(name, decl) {
                        Some(node) => raw.nodes.push(node),
                        None => {
                            raw.broken.insert(format!("graph.{name}"));
                        }
                    }
                }
            }
            None if !top.contains_key("graph") => obj.error(self.errors, "graph", "is required"),
            None => {}
        }
        obj.finish(self.errors);
        raw
    }

    /// The object declaring `section.name`, with its location; `None` (and an error)
    /// when it is not an object or the name is not usable.
    fn declaration<'a>(
        &mut self,
        section: &str,
        name: &str,
        decl: &'a Json,
    ) -> Option<(String, &'a Map<String, Json>)> {
        let location = format!("{section}.{name}");
        let Json::Object(map) = decl else {
            self.errors.push(SpecError::new(
                &location,
                "",
                format!("must be an object, found {}", kind(decl)),
            ));
            return None;
        };
        if !valid_name(name) {
            self.errors.push(SpecError::new(
                &location,
                "",
                "a name may only use letters, digits, '-', '_' and '.'",
            ));
            return None;
        }
        Some((location, map))
    }

    fn settings(&mut self, map: &Map<String, Json>, settings: &mut DagSettings) {
        let mut obj = Obj::new("settings", map);
        if let Some(p) = obj.integer(self.errors, "partitions", 1, 10_000) {
            settings.partitions = p as u32;
        }
        if let Some(t) = obj.string(self.errors, "dead-letter-topic", false) {
            settings.dead_letter_topic = t;
        }
        if let Some(t) = obj.string(self.errors, "incomplete-topic", false) {
            settings.incomplete_topic = t;
        }
        obj.finish(self.errors);
    }

    fn schema(&mut self, name: &str, decl: &Json) -> Option<Schema> {
        let (location, map) = self.declaration("schemas", name, decl)?;
        let mut obj = Obj::new(&location, map);
        let start = self.errors.len();
        let _ = obj.string(self.errors, "description", false);
        let additional_fields = match obj
            .string(self.errors, "additional-fields", false)
            .as_deref()
        {
            None | Some("ignore") => AdditionalFields::Ignore,
            Some("reject") => AdditionalFields::Reject,
            Some(other) => {
                obj.error(
                    self.errors,
                    "additional-fields",
                    format!("{other:?} is not ignore or reject"),
                );
                AdditionalFields::Ignore
            }
        };
        let mut fields = Vec::new();
        match obj.object(self.errors, "fields") {
            Some(map) if map.is_empty() => obj.error(self.errors, "fields", "declares no fields"),
            Some(map) => {
                for (field, ty) in map {
                    match ty.as_str().map(FieldType::parse) {
                        Some(Ok(ty)) => fields.push(Field {
                            name: field.clone(),
                            ty,
                        }),
                        Some(Err(e)) => obj.error(self.errors, &format!("fields.{field}"), e),
                        None => obj.error(
                            self.errors,
                            &format!("fields.{field}"),
                            format!(
                                "must be a type name like string or array<long>, found {}",
                                kind(ty)
                            ),
                        ),
                    }
                }
            }
            None if !map.contains_key("fields") => obj.error(self.errors, "fields", "is required"),
            None => {}
        }
        obj.finish(self.errors);
        (self.errors.len() == start).then(|| Schema {
            name: name.to_owned(),
            fields,
            additional_fields,
            builtin: false,
        })
    }

    fn topic(&mut self, name: &str, decl: &Json) -> Option<TopicDecl> {
        let (location, map) = self.declaration("topics", name, decl)?;
        let start = self.errors.len();
        let mut obj = Obj::new(&location, map);
        let key_schema = obj
            .string(self.errors, "key-schema", false)
            .unwrap_or_else(|| "string".into());
        let value_schema = obj.string(self.errors, "value-schema", true);
        let partitions = obj
            .integer(self.errors, "partitions", 1, 10_000)
            .map(|p| p as u32);
        let _ = obj.string(self.errors, "description", false);
        obj.finish(self.errors);
        let value_schema = value_schema?;
        (self.errors.len() == start).then(|| TopicDecl {
            name: name.to_owned(),
            key_schema,
            value_schema,
            partitions,
        })
    }

    fn node(&mut self, name: &str, decl: &Json) -> Option<NodeSpec> {
        let (location, map) = self.declaration("graph", name, decl)?;
        let start = self.errors.len();
        let mut obj = Obj::new(&location, map);
        let _ = obj.string(self.errors, "description", false);
        let kind = match obj.string(self.errors, "type", true).as_deref() {
            Some("topic-stream") => obj
                .string(self.errors, "topic-name", true)
                .map(|topic| NodeKind::TopicStream { topic }),
            Some("topic-table") => obj
                .string(self.errors, "topic-name", true)
                .map(|topic| NodeKind::TopicTable { topic }),
            Some("stream-operation") => {
                let inputs = obj.strings(self.errors, "inputs");
                if !map.contains_key("inputs") {
                    obj.error(self.errors, "inputs", "is required");
                }
                let function = obj.string(self.errors, "function", true);
                let key_schema = obj.string(self.errors, "key-schema", false);
                let value_schema = obj.string(self.errors, "value-schema", false);
                let incomplete_timeout = obj.duration(self.errors, "incomplete-timeout");
                let partitions = obj
                    .integer(self.errors, "partitions", 1, 10_000)
                    .map(|p| p as u32);
                match (inputs, function) {
                    (Some(inputs), Some(function)) => {
                        Some(NodeKind::StreamOperation(StreamOperation {
                            inputs,
                            function,
                            key_schema,
                            value_schema,
                            incomplete_timeout,
                            partitions,
                        }))
                    }
                    _ => None,
                }
            }
            Some("external-task") => {
                let stream = obj.string(self.errors, "stream", true);
                let task = obj.string(self.errors, "task-name", true);
                stream
                    .zip(task)
                    .map(|(stream, task)| NodeKind::ExternalTask { stream, task })
            }
            Some("publish") => {
                let stream = obj.string(self.errors, "stream", true);
                let topic = obj.string(self.errors, "topic-name", true);
                stream
                    .zip(topic)
                    .map(|(stream, topic)| NodeKind::Publish { stream, topic })
            }
            Some(other) => {
                const TYPES: [&str; 5] = [
                    "topic-stream",
                    "topic-table",
                    "stream-operation",
                    "external-task",
                    "publish",
                ];
                let hint = suggest(other, TYPES)
                    .map(|s| format!(" (did you mean {s:?}?)"))
                    .unwrap_or_default();
                obj.error(
                    self.errors,
                    "type",
                    format!(
                        "{other:?} is not a node type{hint}; expected one of: {}",
                        TYPES.join(", ")
                    ),
                );
                return None;
            }
            None => return None,
        };
        obj.finish(self.errors);
        if self.errors.len() != start {
            return None;
        }
        kind.map(|kind| NodeSpec {
            name: name.to_owned(),
            kind,
        })
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spec reads durations by the one rule: a number is milliseconds, text carries
    /// its unit, text without one is refused.
    #[test]
    fn durations_follow_the_one_rule() {
        let spec = |timeout: &str, max_run_time: &str| {
            format!(
                "name: t\ntasks:\n  call: {{url: \"http://x\", timeout: {timeout}}}\n  queue: {{type: queue, group: g, cmd: [x], group-settings: {{max-run-time: {max_run_time}}}}}\ngraph:\n  images: {{type: topic-stream, topic-name: images}}\n"
            )
        };
        let (raw, errors) = parse(&spec("250", "60000"), SpecFormat::Yaml);
        assert!(errors.is_empty(), "{errors:?}");
        let raw = raw.unwrap();
        let Some(TaskDecl::Http(call)) = raw.tasks.get("call") else {
            panic!("no HTTP task in {:?}", raw.tasks.keys());
        };
        assert_eq!(call.timeout, Duration::from_millis(250), "a number is ms");
        let (raw, errors) = parse(&spec("\"2s\"", "\"2h\""), SpecFormat::Yaml);
        assert!(errors.is_empty(), "{errors:?}");
        let Some(TaskDecl::Http(call)) = raw.unwrap().tasks.remove("call") else {
            panic!("no HTTP task");
        };
        assert_eq!(call.timeout, Duration::from_secs(2));
        let (_, errors) = parse(&spec("\"30\"", "\"60000\""), SpecFormat::Yaml);
        let message = |field: &str| {
            errors
                .iter()
                .find(|e| e.field == field)
                .map(|e| e.message.clone())
                .unwrap_or_else(|| panic!("no error on {field}: {errors:?}"))
        };
        assert!(
            message("timeout").contains("\"30\" has no unit"),
            "{errors:?}"
        );
        assert!(
            message("group-settings").contains("\"60000\" has no unit"),
            "{errors:?}"
        );
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            suggest("topic_name", ["topic-name", "stream"]),
            Some("topic-name")
        );
        assert_eq!(suggest("zzzzzz", ["topic-name", "stream"]), None);
    }
}
