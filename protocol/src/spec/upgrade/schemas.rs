//! The declared schemas: which of them the running cluster holds records of, and which
//! changes to a schema leave every record of the old one valid under the new one.

use std::collections::{BTreeMap, BTreeSet};

use super::Comparison;
use crate::schema::{AdditionalFields, FieldType, Schema, SchemaSet};
use crate::spec::{Dag, NodeKind};

impl Comparison<'_> {
    /// Schemas whose records the running cluster holds: those of topics read as streams
    /// or tables (records not yet read, layouts), and of groupings' keys and outputs,
    /// with every schema they refer to.
    fn stored_schemas(&self) -> BTreeSet<String> {
        let dag = self.old;
        let mut roots: Vec<String> = Vec::new();
        for node in &dag.nodes {
            match &node.kind {
                NodeKind::TopicStream { topic } | NodeKind::TopicTable { topic } => {
                    if let Some(decl) = dag.topics.get(topic) {
                        roots.push(decl.key_schema.clone());
                        roots.push(decl.value_schema.clone());
                    }
                }
                NodeKind::StreamOperation(op) => {
                    roots.extend(op.key_schema.iter().cloned());
                    roots.extend(op.value_schema.iter().cloned());
                }
                NodeKind::ExternalTask { .. } | NodeKind::Publish { .. } => {}
            }
        }
        let mut stored = BTreeSet::new();
        while let Some(name) = roots.pop() {
            if !stored.insert(name.clone()) {
                continue;
            }
            if let Some(schema) = dag.schemas.get(&name) {
                for field in &schema.fields {
                    roots.extend(field.ty.references().into_iter().map(str::to_owned));
                }
            }
        }
        stored
    }

    pub(super) fn schemas(&mut self) {
        let stored = self.stored_schemas();
        let declared = |dag: &Dag| -> BTreeMap<String, Schema> {
            dag.schemas
                .iter()
                .filter(|s| !s.builtin)
                .map(|s| (s.name.clone(), s.clone()))
                .collect()
        };
        let (old, new) = (declared(self.old), declared(self.new));
        let names: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
        for name in names {
            let location = format!("schemas.{name}");
            match (old.get(name), new.get(name)) {
                (Some(a), Some(b)) if a == b => {}
                (Some(a), Some(b)) => {
                    let breaks = breaking_changes(a, b, &self.new.schemas);
                    let change = describe_schema_change(a, b);
                    if breaks.is_empty() {
                        self.safe(
                            location,
                            change,
                            "every record of the old schema is still valid under the new one",
                        );
                    } else if stored.contains(name.as_str()) {
                        self.refused(
                            location,
                            change,
                            format!(
                                "records the cluster holds under this schema (on a topic it reads, or in a grouping's state) would no longer be valid: {}",
                                breaks.join("; ")
                            ),
                            format!(
                                "keep {name} readable for what is stored: add new fields as optional (type?), keep the old ones and their types; or declare a schema under a new name for new records"
                            ),
                        );
                    } else {
                        self.safe(
                            location,
                            change,
                            format!(
                                "no record the cluster holds is checked against it again, only what is produced from now on ({})",
                                breaks.join("; ")
                            ),
                        );
                    }
                }
                (None, Some(_)) => self.safe(location, "added".into(), "nothing reads it yet"),
                (Some(_), None) => self.safe(
                    location,
                    "removed".into(),
                    "no node of the new spec uses it (the spec would not validate otherwise)",
                ),
                (None, None) => {}
            }
        }
    }

    /// Why records valid under the schema `old` (a name) may not be under `new`.
    pub(super) fn breaking_between(&self, old: &str, new: &str) -> Vec<String> {
        match (self.old.schemas.get(old), self.new.schemas.get(new)) {
            (Some(a), Some(b)) => breaking_changes(a, b, &self.new.schemas),
            _ if old == new => Vec::new(),
            _ if new == "json" => Vec::new(),
            _ => vec![format!("records of {old} are not {new}")],
        }
    }
}

/// Why a record valid under `old` may not be valid under `new` (empty: every record of
/// `old` is valid under `new`); `schemas` is the new spec's, where `new` refers to others.
pub(super) fn breaking_changes(old: &Schema, new: &Schema, schemas: &SchemaSet) -> Vec<String> {
    let mut out = Vec::new();
    for field in &new.fields {
        match old.field(&field.name) {
            None if !matches!(field.ty, FieldType::Optional(_)) => out.push(format!(
                "field {} is new and required (records without it fail; make it {}?)",
                field.name, field.ty
            )),
            None => {}
            Some(was) if !schemas.type_fits_in(&was.ty, &field.ty) => out.push(format!(
                "field {} changes type {} -> {}",
                field.name, was.ty, field.ty
            )),
            Some(_) => {}
        }
    }
    if new.additional_fields == AdditionalFields::Reject {
        let dropped: Vec<&str> = old
            .fields
            .iter()
            .filter(|f| new.field(&f.name).is_none())
            .map(|f| f.name.as_str())
            .collect();
        if old.additional_fields == AdditionalFields::Ignore {
            out.push(
                "additional-fields: ignore -> reject (records with undeclared fields fail)"
                    .to_owned(),
            );
        } else if !dropped.is_empty() {
            out.push(format!(
                "fields {} are removed while additional fields are rejected",
                dropped.join(", ")
            ));
        }
    }
    out
}

fn describe_schema_change(old: &Schema, new: &Schema) -> String {
    let mut parts = Vec::new();
    for field in &new.fields {
        match old.field(&field.name) {
            None => parts.push(format!("+{}: {}", field.name, field.ty)),
            Some(was) if was.ty != field.ty => {
                parts.push(format!("{}: {} -> {}", field.name, was.ty, field.ty))
            }
            Some(_) => {}
        }
    }
    for field in &old.fields {
        if new.field(&field.name).is_none() {
            parts.push(format!("-{}", field.name));
        }
    }
    if old.additional_fields != new.additional_fields {
        parts.push(format!(
            "additional-fields: {:?} -> {:?}",
            old.additional_fields, new.additional_fields
        ));
    }
    if parts.is_empty() {
        "changed".into()
    } else {
        parts.join(", ")
    }
}
