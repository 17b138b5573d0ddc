//! Declared record schemas and validation of incoming records against them.
//!
//! A schema is a named record of typed fields, declared in a DAG spec:
//!
//! ```yaml
//! schemas:
//!   image_metrics:
//!     fields:
//!       experiment_id: string
//!       mean_intensity: double
//!       saturated: boolean?
//!       histogram: array<long>
//! ```
//!
//! Field types: `string`, `int` (32-bit), `long` (64-bit), `float`/`double`, `boolean`,
//! `json` (anything), `array<T>`, `map<T>` (an object with values of T), the name of
//! another schema, and `T?` for a field that may be missing or null. Validation projects
//! a JSON record onto its schema: it reports every missing or mistyped field at once and
//! drops fields the schema does not declare (or rejects them, with
//! `additional-fields: reject`).

use std::collections::BTreeMap;
use std::fmt;

use crate::value::Value;

/// The type of one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldType {
    String,
    Int,
    Long,
    Double,
    Boolean,
    Json,
    Array(Box<FieldType>),
    Map(Box<FieldType>),
    /// Another declared record schema.
    Named(String),
    Optional(Box<FieldType>),
}

/// Names usable as a whole-record schema besides declared records (e.g. `key-schema: long`).
pub const PRIMITIVE_SCHEMAS: &[&str] = &["string", "int", "long", "double", "boolean", "json"];

impl FieldType {
    /// Parses the compact form used in specs: `array<map<long>>`, `site_images?`, ...
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Some(inner) = text.strip_suffix('?') {
            let inner = Self::parse(inner)?;
            if matches!(inner, FieldType::Optional(_)) {
                return Err(format!("type {text:?} is optional twice"));
            }
            return Ok(FieldType::Optional(Box::new(inner)));
        }
        for (prefix, wrap) in [
            (
                "array<",
                FieldType::Array as fn(Box<FieldType>) -> FieldType,
            ),
            ("map<", FieldType::Map),
        ] {
            if let Some(rest) = text.strip_prefix(prefix) {
                let inner = rest
                    .strip_suffix('>')
                    .ok_or_else(|| format!("type {text:?} is missing its closing '>'"))?;
                return Ok(wrap(Box::new(Self::parse(inner)?)));
            }
        }
        Ok(match text {
            "string" => FieldType::String,
            "int" => FieldType::Int,
            "long" => FieldType::Long,
            "float" | "double" => FieldType::Double,
            "boolean" | "bool" => FieldType::Boolean,
            "json" => FieldType::Json,
            "" => return Err("type is empty".into()),
            name if name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')) =>
            {
                FieldType::Named(name.to_owned())
            }
            other => return Err(format!("{other:?} is not a type")),
        })
    }

    /// Schema names this type refers to.
    pub fn references(&self) -> Vec<&str> {
        match self {
            FieldType::Named(name) => vec![name.as_str()],
            FieldType::Array(inner) | FieldType::Map(inner) | FieldType::Optional(inner) => {
                inner.references()
            }
            _ => Vec::new(),
        }
    }
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldType::String => f.write_str("string"),
            FieldType::Int => f.write_str("int"),
            FieldType::Long => f.write_str("long"),
            FieldType::Double => f.write_str("double"),
            FieldType::Boolean => f.write_str("boolean"),
            FieldType::Json => f.write_str("json"),
            FieldType::Array(inner) => write!(f, "array<{inner}>"),
            FieldType::Map(inner) => write!(f, "map<{inner}>"),
            FieldType::Named(name) => f.write_str(name),
            FieldType::Optional(inner) => write!(f, "{inner}?"),
        }
    }
}

/// What validation does with fields a schema does not declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdditionalFields {
    /// Drop them: downstream nodes see only declared fields.
    #[default]
    Ignore,
    Reject,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub ty: FieldType,
}

/// A named record schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schema {
    pub name: String,
    pub fields: Vec<Field>,
    pub additional_fields: AdditionalFields,
    /// True for the schemas Wellspring declares itself (the imaging hierarchy).
    pub builtin: bool,
}

impl Schema {
    /// Builds a schema from `(field, type)` pairs in the compact type syntax.
    ///
    /// Panics on a malformed type: only for schemas written in Wellspring's own source.
    pub fn builtin(name: &str, fields: &[(&str, &str)]) -> Self {
        Schema {
            name: name.to_owned(),
            fields: fields
                .iter()
                .map(|(field, ty)| Field {
                    name: (*field).to_owned(),
                    ty: FieldType::parse(ty)
                        .unwrap_or_else(|e| panic!("built-in schema {name}.{field}: {e}")),
                })
                .collect(),
            additional_fields: AdditionalFields::Ignore,
            builtin: true,
        }
    }

    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }
}

/// One problem found while validating a record: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// Dotted path of the field (`plates.0.wells`), empty for the record itself.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in one record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors {
    pub schema: String,
    pub errors: Vec<ValidationError>,
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "record does not match schema {}: ", self.schema)?;
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// All schemas a DAG can use: the built-in ones plus those it declares.
#[derive(Debug, Clone, Default)]
pub struct SchemaSet {
    schemas: BTreeMap<String, Schema>,
}

/// Validation stops collecting after this many errors in one record: a hostile record
/// must not make its dead-letter reason unbounded.
const MAX_ERRORS: usize = 20;
/// Nesting deeper than this is rejected rather than recursed into.
const MAX_DEPTH: usize = 32;

impl SchemaSet {
    /// A set holding Wellspring's built-in schemas.
    pub fn with_builtins() -> Self {
        let mut set = SchemaSet::default();
        for schema in crate::records::builtin_schemas() {
            set.schemas.insert(schema.name.clone(), schema);
        }
        set
    }

    pub fn insert(&mut self, schema: Schema) {
        self.schemas.insert(schema.name.clone(), schema);
    }

    pub fn get(&self, name: &str) -> Option<&Schema> {
        self.schemas.get(name)
    }

    /// True when `name` is a declared record schema or a primitive.
    pub fn knows(&self, name: &str) -> bool {
        PRIMITIVE_SCHEMAS.contains(&name) || self.schemas.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.schemas.keys().map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Schema> {
        self.schemas.values()
    }

    /// Validates JSON against the schema `name` (a record schema or a primitive) and
    /// returns the projected value.
    pub fn validate(
        &self,
        name: &str,
        json: &serde_json::Value,
    ) -> Result<Value, ValidationErrors> {
        let mut errors = Vec::new();
        let ty = match FieldType::parse(name) {
            Ok(ty) => ty,
            Err(e) => {
                return Err(ValidationErrors {
                    schema: name.to_owned(),
                    errors: vec![ValidationError {
                        path: String::new(),
                        message: e,
                    }],
                });
            }
        };
        let mut path = String::new();
        let value = self.check(&ty, json, &mut path, 0, &mut errors);
        if errors.is_empty() {
            Ok(value)
        } else {
            Err(ValidationErrors {
                schema: name.to_owned(),
                errors,
            })
        }
    }

    /// Validates an internal value (e.g. a task's mapped output) against a schema.
    pub fn validate_value(&self, name: &str, value: &Value) -> Result<Value, ValidationErrors> {
        self.validate(name, &value.to_json())
    }

    fn check(
        &self,
        ty: &FieldType,
        json: &serde_json::Value,
        path: &mut String,
        depth: usize,
        errors: &mut Vec<ValidationError>,
    ) -> Value {
        use serde_json::Value as J;
        if depth > MAX_DEPTH {
            return fail(
                errors,
                path,
                format!("nested deeper than {MAX_DEPTH} levels"),
            );
        }
        let found = |json: &J| match json {
            J::Null => "null",
            J::Bool(_) => "boolean",
            J::Number(n) if n.is_i64() || n.is_u64() => "integer",
            J::Number(_) => "number",
            J::String(_) => "string",
            J::Array(_) => "array",
            J::Object(_) => "object",
        };
        match (ty, json) {
            (FieldType::Optional(_), J::Null) => Value::Null,
            (FieldType::Optional(inner), _) => self.check(inner, json, path, depth, errors),
            (FieldType::Json, _) => Value::from(json),
            (FieldType::String, J::String(s)) => Value::String(s.clone()),
            (FieldType::Boolean, J::Bool(b)) => Value::Bool(*b),
            (FieldType::Long, J::Number(n)) if n.is_i64() => Value::Int(n.as_i64().unwrap_or(0)),
            (FieldType::Int, J::Number(n)) => match n.as_i64().map(i32::try_from) {
                Some(Ok(i)) => Value::Int(i64::from(i)),
                Some(Err(_)) => fail(errors, path, format!("{n} does not fit in a 32-bit int")),
                None => fail(errors, path, format!("expected int, found {}", found(json))),
            },
            (FieldType::Double, J::Number(n)) => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            (FieldType::Array(inner), J::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let len = path.len();
                    push_path(path, &i.to_string());
                    out.push(self.check(inner, item, path, depth + 1, errors));
                    path.truncate(len);
                }
                Value::Array(out)
            }
            (FieldType::Map(inner), J::Object(fields)) => {
                let mut out = BTreeMap::new();
                for (k, v) in fields {
                    let len = path.len();
                    push_path(path, k);
                    out.insert(k.clone(), self.check(inner, v, path, depth + 1, errors));
                    path.truncate(len);
                }
                Value::Record(out)
            }
            (FieldType::Named(name), _) => {
                if PRIMITIVE_SCHEMAS.contains(&name.as_str()) {
                    // A primitive used by name, e.g. a key schema.
                    return match FieldType::parse(name) {
                        Ok(prim) => self.check(&prim, json, path, depth, errors),
                        Err(e) => fail(errors, path, e),
                    };
                }
                let Some(schema) = self.schemas.get(name) else {
                    return fail(errors, path, format!("unknown schema {name:?}"));
                };
                let J::Object(fields) = json else {
                    return fail(
                        errors,
                        path,
                        format!("expected a {name} record, found {}", found(json)),
                    );
                };
                let mut out = BTreeMap::new();
                for field in &schema.fields {
                    let len = path.len();
                    push_path(path, &field.name);
                    match fields.get(&field.name) {
                        Some(v) => {
                            let checked = self.check(&field.ty, v, path, depth + 1, errors);
                            out.insert(field.name.clone(), checked);
                        }
                        None if matches!(field.ty, FieldType::Optional(_)) => {
                            out.insert(field.name.clone(), Value::Null);
                        }
                        None => {
                            fail(errors, path, format!("missing (expected {})", field.ty));
                        }
                    }
                    path.truncate(len);
                }
                if schema.additional_fields == AdditionalFields::Reject {
                    for k in fields.keys().filter(|k| schema.field(k).is_none()) {
                        let len = path.len();
                        push_path(path, k);
                        fail(errors, path, format!("not a field of {name}"));
                        path.truncate(len);
                    }
                }
                Value::Record(out)
            }
            (expected, _) => fail(
                errors,
                path,
                format!("expected {expected}, found {}", found(json)),
            ),
        }
    }

    /// Whether a stream of schema `from` can feed a consumer expecting schema `to`:
    /// the same schema, or a record that has every field `to` requires with a type that
    /// fits. Returns the reasons it cannot.
    pub fn assignable(&self, from: &str, to: &str) -> Result<(), Vec<String>> {
        if from == to || to == "json" {
            return Ok(());
        }
        let (Some(from_schema), Some(to_schema)) = (self.schemas.get(from), self.schemas.get(to))
        else {
            return Err(vec![format!("{from} is not {to}")]);
        };
        let mut reasons = Vec::new();
        for field in &to_schema.fields {
            match from_schema.field(&field.name) {
                None if matches!(field.ty, FieldType::Optional(_)) => {}
                None => reasons.push(format!(
                    "{from} has no field {} (needed by {to})",
                    field.name
                )),
                Some(have) if !self.type_fits(&have.ty, &field.ty, 0) => reasons.push(format!(
                    "field {} is {} in {from} but {} in {to}",
                    field.name, have.ty, field.ty
                )),
                Some(_) => {}
            }
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }

    /// Whether every value of type `have` is a valid `want` (schemas named in either are
    /// looked up in this set).
    pub fn type_fits_in(&self, have: &FieldType, want: &FieldType) -> bool {
        self.type_fits(have, want, 0)
    }

    fn type_fits(&self, have: &FieldType, want: &FieldType, depth: usize) -> bool {
        if depth > MAX_DEPTH {
            return false;
        }
        match (have, want) {
            (_, FieldType::Json) => true,
            (FieldType::Optional(h), FieldType::Optional(w)) => self.type_fits(h, w, depth + 1),
            (_, FieldType::Optional(w)) => self.type_fits(have, w, depth + 1),
            (FieldType::Int, FieldType::Long | FieldType::Double) => true,
            (FieldType::Long, FieldType::Double) => true,
            (FieldType::Array(h), FieldType::Array(w)) | (FieldType::Map(h), FieldType::Map(w)) => {
                self.type_fits(h, w, depth + 1)
            }
            (FieldType::Named(h), FieldType::Named(w)) => h == w || self.assignable(h, w).is_ok(),
            (h, w) => h == w,
        }
    }
}

fn fail(errors: &mut Vec<ValidationError>, path: &str, message: String) -> Value {
    if errors.len() < MAX_ERRORS {
        errors.push(ValidationError {
            path: path.to_owned(),
            message,
        });
    }
    Value::Null
}

fn push_path(path: &mut String, part: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(part);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set() -> SchemaSet {
        let mut set = SchemaSet::with_builtins();
        set.insert(Schema {
            name: "point".into(),
            fields: vec![
                Field {
                    name: "x".into(),
                    ty: FieldType::parse("int").unwrap(),
                },
                Field {
                    name: "tags".into(),
                    ty: FieldType::parse("array<string>?").unwrap(),
                },
            ],
            additional_fields: AdditionalFields::Reject,
            builtin: false,
        });
        set
    }

    #[test]
    fn types_parse_and_print() {
        for text in [
            "string",
            "array<map<long>>",
            "site_images?",
            "array<string>?",
            "json",
        ] {
            assert_eq!(FieldType::parse(text).unwrap().to_string(), text);
        }
        assert!(FieldType::parse("array<string").is_err());
        assert!(FieldType::parse("string??").is_err());
        assert!(FieldType::parse("a b").is_err());
    }

    #[test]
    fn validation_reports_every_error_with_its_path() {
        let set = set();
        let record = json!({"experiment_id": 7, "cell_type": "HUVEC", "plate_number": "one",
                            "well": "B02", "site": 1, "channel": 1});
        let errors = set.validate("channel_level", &record).unwrap_err();
        let text: Vec<String> = errors.errors.iter().map(ToString::to_string).collect();
        assert!(
            text.contains(&"experiment_id: expected string, found integer".to_string()),
            "{text:?}"
        );
        assert!(
            text.contains(&"plate_number: expected int, found string".to_string()),
            "{text:?}"
        );
        assert!(
            text.contains(&"plate_barcode: missing (expected string)".to_string()),
            "{text:?}"
        );
        assert!(
            text.contains(&"location: missing (expected string)".to_string()),
            "{text:?}"
        );
    }

    #[test]
    fn validation_projects_and_rejects_extra_fields_when_asked() {
        let set = set();
        let ok = set.validate("point", &json!({"x": 3})).unwrap();
        assert_eq!(ok.get("tags"), Some(&Value::Null));
        let err = set.validate("point", &json!({"x": 3, "y": 4})).unwrap_err();
        assert_eq!(err.errors[0].to_string(), "y: not a field of point");
        let err = set
            .validate("point", &json!({"x": 3_000_000_000i64}))
            .unwrap_err();
        assert!(err.errors[0].message.contains("32-bit"));
        assert!(set.validate("point", &json!([1])).is_err());
        assert_eq!(set.validate("long", &json!(5)).unwrap(), Value::Int(5));
    }

    #[test]
    fn assignability_is_structural() {
        let set = set();
        assert!(set.assignable("channel_level", "channel_level").is_ok());
        assert!(set.assignable("site_level", "json").is_ok());
        let reasons = set.assignable("point", "channel_level").unwrap_err();
        assert!(reasons.iter().any(|r| r.contains("no field experiment_id")));
    }

    #[test]
    fn deep_nesting_is_rejected_not_recursed() {
        let mut set = SchemaSet::default();
        set.insert(Schema {
            name: "deep".into(),
            fields: vec![Field {
                name: "v".into(),
                ty: FieldType::parse("json").unwrap(),
            }],
            additional_fields: AdditionalFields::Ignore,
            builtin: false,
        });
        let mut nested = json!(1);
        for _ in 0..100 {
            nested = json!([nested]);
        }
        let ty = FieldType::parse("array<array<array<array<array<array<array<array<array<array<array<array<array<array<array<array<array<array<array<array<array<array<array<array<array<array<array<array<array<array<array<array<array<array<long>>>>>>>>>>>>>>>>>>>>>>>>>>>>>>>>>>").unwrap();
        set.insert(Schema {
            name: "deeper".into(),
            fields: vec![Field {
                name: "v".into(),
                ty,
            }],
            additional_fields: AdditionalFields::Ignore,
            builtin: false,
        });
        let err = set.validate("deeper", &json!({"v": nested})).unwrap_err();
        assert!(err.errors[0].message.contains("nested deeper"));
    }
}
