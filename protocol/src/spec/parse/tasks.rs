//! A task declaration: an HTTP task (method, URL and body templates, retries, back-off,
//! the success predicate) or a queue task (records become task-store tasks for workers).

use std::time::Duration;

use serde_json::Value as Json;

use super::{Obj, Parser, kind};
use crate::spec::template::{JsonTemplate, TextTemplate};
use crate::spec::{
    Backoff, HeaderCondition, HeaderTest, HttpTask, Method, QueueTask, SpecError, StatusMatch,
    SuccessPredicate, TaskDecl,
};

impl Parser<'_> {
    pub(super) fn task(&mut self, name: &str, decl: &Json) -> Option<TaskDecl> {
        let (location, map) = self.declaration("tasks", name, decl)?;
        let start = self.errors.len();
        let mut obj = Obj::new(&location, map);
        match obj.string(self.errors, "type", false).as_deref() {
            None | Some("http") => {}
            Some("queue") => return self.queue_task(obj, start),
            Some(other) => {
                obj.error(
                    self.errors,
                    "type",
                    format!("{other:?} is not a task type (supported: http, queue)"),
                );
                return None;
            }
        }
        let _ = obj.string(self.errors, "description", false);
        let method = match obj
            .string(self.errors, "method", false)
            .as_deref()
            .map(str::to_ascii_uppercase)
            .as_deref()
        {
            None | Some("POST") => Method::Post,
            Some("GET") => Method::Get,
            Some("PUT") => Method::Put,
            Some("PATCH") => Method::Patch,
            Some("DELETE") => Method::Delete,
            Some(other) => {
                obj.error(
                    self.errors,
                    "method",
                    format!("{other:?} is not GET, POST, PUT, PATCH or DELETE"),
                );
                Method::Post
            }
        };
        let url =
            obj.string(self.errors, "url", true)
                .and_then(|u| match TextTemplate::parse(&u) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        obj.error(self.errors, "url", e.to_string());
                        None
                    }
                });
        if let Some(url) = &url {
            let text = url.source();
            if !(text.starts_with("http://")
                || text.starts_with("https://")
                || text.starts_with("${"))
            {
                obj.error(
                    self.errors,
                    "url",
                    format!("{text:?} must start with http://, https:// or a ${{variable}}"),
                );
            }
        }
        let mut headers = Vec::new();
        if let Some(map) = obj.object(self.errors, "headers") {
            for (header, value) in map {
                match value.as_str().map(TextTemplate::parse) {
                    Some(Ok(t)) => headers.push((header.clone(), t)),
                    Some(Err(e)) => {
                        obj.error(self.errors, &format!("headers.{header}"), e.to_string())
                    }
                    None => obj.error(
                        self.errors,
                        &format!("headers.{header}"),
                        "must be a string",
                    ),
                }
            }
        }
        let template = |obj: &mut Obj, errors: &mut Vec<SpecError>, field: &'static str| {
            obj.get(field)
                .and_then(|v| match JsonTemplate::parse(v.clone()) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        obj.error(errors, field, e.to_string());
                        None
                    }
                })
        };
        let body = template(&mut obj, self.errors, "body");
        let output = template(&mut obj, self.errors, "output");
        let input_schema = obj.string(self.errors, "input-schema", false);
        let output_schema = obj.string(self.errors, "output-schema", false);
        let max_inflight = obj
            .integer(self.errors, "max-inflight", 1, 100_000)
            .unwrap_or(16) as u32;
        let retries = obj.integer(self.errors, "retries", 0, 1_000).unwrap_or(5) as u32;
        let timeout = obj
            .duration(self.errors, "timeout")
            .unwrap_or(Duration::from_secs(30));
        if timeout.is_zero() {
            obj.error(self.errors, "timeout", "must be longer than zero");
        }
        let mut backoff = Backoff::default();
        if let Some(map) = obj.object(self.errors, "backoff") {
            let mut b = Obj::new(format!("{location}.backoff"), map);
            if let Some(d) = b.duration(self.errors, "initial") {
                backoff.initial = d;
            }
            if let Some(d) = b.duration(self.errors, "max") {
                backoff.max = d;
            }
            match b.get("multiplier") {
                Some(Json::Number(n)) if n.as_f64().is_some_and(|m| (1.0..=100.0).contains(&m)) => {
                    backoff.multiplier = n.as_f64().unwrap_or(2.0);
                }
                Some(other) => b.error(
                    self.errors,
                    "multiplier",
                    format!("must be a number from 1 to 100, found {other}"),
                ),
                None => {}
            }
            match b.get("jitter") {
                Some(Json::Bool(j)) => backoff.jitter = *j,
                Some(other) => b.error(
                    self.errors,
                    "jitter",
                    format!("must be true or false, found {}", kind(other)),
                ),
                None => {}
            }
            if backoff.initial > backoff.max {
                b.error(self.errors, "initial", "is longer than max");
            }
            b.finish(self.errors);
        }
        let mut success = SuccessPredicate::default();
        if let Some(map) = obj.object(self.errors, "success") {
            let mut s = Obj::new(format!("{location}.success"), map);
            if let Some(statuses) = s.get("status") {
                match parse_statuses(statuses) {
                    Ok(list) => success.statuses = list,
                    Err(e) => s.error(self.errors, "status", e),
                }
            }
            if let Some(conditions) = s.get("headers") {
                match parse_header_conditions(conditions) {
                    Ok(list) => success.headers = list,
                    Err(e) => s.error(self.errors, "headers", e),
                }
            }
            s.finish(self.errors);
        }
        let mut permanent_statuses = (400..=499)
            .filter(|c| *c != 408 && *c != 429)
            .map(StatusMatch::Code)
            .collect();
        if let Some(statuses) = obj.get("permanent-statuses") {
            match parse_statuses(statuses) {
                Ok(list) => permanent_statuses = list,
                Err(e) => obj.error(self.errors, "permanent-statuses", e),
            }
        }
        obj.finish(self.errors);
        if self.errors.len() != start {
            return None;
        }
        Some(TaskDecl::Http(HttpTask {
            method,
            url: url?,
            headers,
            body,
            output,
            input_schema,
            output_schema,
            max_inflight,
            retries,
            backoff,
            timeout,
            success,
            permanent_statuses,
        }))
    }

    /// A `type: queue` task: records become tasks of a task-store group.
    fn queue_task(&mut self, mut obj: Obj<'_>, start: usize) -> Option<TaskDecl> {
        let _ = obj.string(self.errors, "description", false);
        let group = obj.string(self.errors, "group", true);
        if let Some(g) = &group
            && !crate::taskstore::valid_group_name(g)
        {
            obj.error(
                self.errors,
                "group",
                format!("{g:?} is not a group name (letters, digits, spaces, '-', '_', '.', ':')"),
            );
        }
        let mut cmd = Vec::new();
        match obj.strings(self.errors, "cmd") {
            Some(args) if args.is_empty() => {
                obj.error(self.errors, "cmd", "must list at least the program to run")
            }
            Some(args) => {
                for arg in args {
                    match TextTemplate::parse(&arg) {
                        Ok(t) => cmd.push(t),
                        Err(e) => obj.error(self.errors, "cmd", e.to_string()),
                    }
                }
            }
            None if !obj.map.contains_key("cmd") => obj.error(self.errors, "cmd", "is required"),
            None => {}
        }
        let mut labels = Vec::new();
        if let Some(map) = obj.object(self.errors, "labels") {
            for (label, value) in map {
                match value.as_str().map(TextTemplate::parse) {
                    Some(Ok(t)) => labels.push((label.clone(), t)),
                    Some(Err(e)) => {
                        obj.error(self.errors, &format!("labels.{label}"), e.to_string())
                    }
                    None => obj.error(self.errors, &format!("labels.{label}"), "must be a string"),
                }
            }
        }
        let group_settings = match obj.object(self.errors, "group-settings") {
            Some(map) => {
                let mut settings = map.clone();
                settings.insert(
                    "name".into(),
                    Json::String(group.clone().unwrap_or_default()),
                );
                match serde_json::from_value::<crate::taskstore::GroupSettings>(Json::Object(
                    settings.clone(),
                )) {
                    Ok(parsed) => {
                        for problem in parsed.problems() {
                            obj.error(self.errors, "group-settings", problem);
                        }
                        Some(Json::Object(settings))
                    }
                    Err(e) => {
                        obj.error(self.errors, "group-settings", e.to_string());
                        None
                    }
                }
            }
            None => None,
        };
        let input_schema = obj.string(self.errors, "input-schema", false);
        let output_schema = obj.string(self.errors, "output-schema", false);
        obj.finish(self.errors);
        if self.errors.len() != start {
            return None;
        }
        Some(TaskDecl::Queue(QueueTask {
            group: group?,
            cmd,
            labels,
            group_settings,
            input_schema,
            output_schema,
        }))
    }
}

fn parse_statuses(value: &Json) -> Result<Vec<StatusMatch>, String> {
    let items = match value {
        Json::Array(items) => items.as_slice(),
        single => std::slice::from_ref(single),
    };
    let mut out = Vec::new();
    for item in items {
        match item {
            Json::Number(n) => match n.as_u64() {
                Some(c @ 100..=599) => out.push(StatusMatch::Code(c as u16)),
                _ => return Err(format!("{n} is not an HTTP status")),
            },
            Json::String(s) => match s.as_bytes() {
                [d @ b'1'..=b'5', b'x' | b'X', b'x' | b'X'] => {
                    out.push(StatusMatch::Class(d - b'0'))
                }
                _ => match s.parse::<u16>() {
                    Ok(c @ 100..=599) => out.push(StatusMatch::Code(c)),
                    _ => return Err(format!("{s:?} is not an HTTP status or class like 2xx")),
                },
            },
            other => {
                return Err(format!(
                    "statuses are numbers or classes like 2xx, found {}",
                    kind(other)
                ));
            }
        }
    }
    if out.is_empty() {
        return Err("lists no status".into());
    }
    Ok(out)
}

fn parse_header_conditions(value: &Json) -> Result<Vec<HeaderCondition>, String> {
    let Json::Array(items) = value else {
        return Err(format!(
            "must be a list of conditions, found {}",
            kind(value)
        ));
    };
    let strings = |v: &Json| -> Result<Vec<String>, String> {
        match v {
            Json::Array(items) => items
                .iter()
                .map(|i| {
                    i.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| "values must be strings".to_string())
                })
                .collect(),
            Json::String(s) => Ok(vec![s.clone()]),
            other => Err(format!("values must be strings, found {}", kind(other))),
        }
    };
    let mut out = Vec::new();
    for item in items {
        let Json::Object(map) = item else {
            return Err("each condition is an object with name and one test".into());
        };
        let name = map
            .get("name")
            .and_then(Json::as_str)
            .ok_or("each condition needs a name")?
            .to_ascii_lowercase();
        let tests: Vec<(&String, &Json)> =
            map.iter().filter(|(k, _)| k.as_str() != "name").collect();
        let [(test, arg)] = tests.as_slice() else {
            return Err(format!(
                "condition on {name} needs exactly one of present, equals, in, not-in"
            ));
        };
        let test = match test.as_str() {
            "present" => HeaderTest::Present(arg.as_bool().ok_or("present must be true or false")?),
            "equals" => {
                HeaderTest::Equals(arg.as_str().ok_or("equals must be a string")?.to_owned())
            }
            "in" => HeaderTest::In(strings(arg)?),
            "not-in" => HeaderTest::NotIn(strings(arg)?),
            other => {
                return Err(format!(
                    "{other:?} is not a header test (present, equals, in, not-in)"
                ));
            }
        };
        out.push(HeaderCondition { name, test });
    }
    Ok(out)
}
