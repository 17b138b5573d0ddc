//! The dynamic value that flows between DAG nodes.
//!
//! External topics carry JSON; inside Wellspring a record is a [`Value`], which encodes
//! to the binary wire format (JSON's `serde_json::Value` cannot: it needs a
//! self-describing format). Records are validated against their schema at the edge, so
//! inside the engine a `Value::Record` has the fields its schema declares.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Clone, PartialEq, Serialize, Deserialize, Default)]
pub enum Value {
    #[default]
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    String(String),
    Array(Vec<Value>),
    Record(BTreeMap<String, Value>),
}

impl Value {
    pub fn record<I, K>(fields: I) -> Self
    where
        I: IntoIterator<Item = (K, Value)>,
        K: Into<String>,
    {
        Value::Record(fields.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    /// A field of a record, or `None` when this is not a record or has no such field.
    pub fn get(&self, field: &str) -> Option<&Value> {
        match self {
            Value::Record(fields) => fields.get(field),
            _ => None,
        }
    }

    /// Follows a dotted path (`input.location`); `""` is the value itself.
    pub fn path(&self, path: &str) -> Option<&Value> {
        if path.is_empty() {
            return Some(self);
        }
        path.split('.')
            .try_fold(self, |value, part| value.get(part))
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(items) => Some(items),
            _ => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Int(_) => "integer",
            Value::Float(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Record(_) => "object",
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Int(i) => serde_json::Value::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            Value::String(s) => serde_json::Value::String(s.clone()),
            Value::Array(items) => items.iter().map(Value::to_json).collect(),
            Value::Record(fields) => serde_json::Value::Object(
                fields
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }

    /// JSON text of this value: the text [`Value::to_json`] prints, written straight
    /// from the value (no `serde_json::Value` built on the way).
    pub fn to_json_string(&self) -> String {
        // Serializing plain data into a string cannot fail (no I/O, string keys).
        serde_json::to_string(&AsJson(self)).unwrap_or_else(|_| self.to_json().to_string())
    }

    /// The value of JSON text, read straight into a [`Value`] (what `Value::from` of the
    /// parsed `serde_json::Value` gives, without building that first).
    pub fn from_json_slice(json: &[u8]) -> Result<Value, serde_json::Error> {
        serde_json::from_slice::<FromJson>(json).map(|v| v.0)
    }
}

/// Writes a [`Value`] itself, as plain JSON data (not its enum form, as its derived
/// `Serialize` does for the wire format): JSON text, and a record field that carries
/// arbitrary data.
pub(crate) struct AsJson<'a>(pub(crate) &'a Value);

impl Serialize for AsJson<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self.0 {
            Value::Null => serializer.serialize_unit(),
            Value::Bool(b) => serializer.serialize_bool(*b),
            Value::Int(i) => serializer.serialize_i64(*i),
            // serde_json writes a number it cannot hold as null, as `to_json` does.
            Value::Float(f) => serializer.serialize_f64(*f),
            Value::String(s) => serializer.serialize_str(s),
            Value::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&AsJson(item))?;
                }
                seq.end()
            }
            Value::Record(fields) => {
                let mut map = serializer.serialize_map(Some(fields.len()))?;
                for (name, value) in fields {
                    map.serialize_entry(name, &AsJson(value))?;
                }
                map.end()
            }
        }
    }
}

/// A value deserialized from plain JSON: integers that fit an `i64` are `Int`, other
/// numbers `Float`, objects records (a repeated name keeps its last value).
struct FromJson(Value);

impl<'de> Deserialize<'de> for FromJson {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(FromJsonVisitor).map(FromJson)
    }
}

struct FromJsonVisitor;

impl<'de> serde::de::Visitor<'de> for FromJsonVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E>(self, i: i64) -> Result<Value, E> {
        Ok(Value::Int(i))
    }

    fn visit_u64<E>(self, u: u64) -> Result<Value, E> {
        Ok(i64::try_from(u).map_or(Value::Float(u as f64), Value::Int))
    }

    fn visit_f64<E>(self, f: f64) -> Result<Value, E> {
        Ok(Value::Float(f))
    }

    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_owned()))
    }

    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(FromJson(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut fields = BTreeMap::new();
        while let Some((name, FromJson(value))) = map.next_entry::<String, FromJson>()? {
            fields.insert(name, value);
        }
        Ok(Value::Record(fields))
    }
}

impl From<&serde_json::Value> for Value {
    fn from(json: &serde_json::Value) -> Self {
        match json {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            serde_json::Value::String(s) => Value::String(s.clone()),
            serde_json::Value::Array(items) => {
                Value::Array(items.iter().map(Value::from).collect())
            }
            serde_json::Value::Object(fields) => Value::Record(
                fields
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::from(v)))
                    .collect(),
            ),
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(s)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}

impl From<u32> for Value {
    fn from(i: u32) -> Self {
        Value::Int(i64::from(i))
    }
}

impl From<u16> for Value {
    fn from(i: u16) -> Self {
        Value::Int(i64::from(i))
    }
}

impl From<u8> for Value {
    fn from(i: u8) -> Self {
        Value::Int(i64::from(i))
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

impl From<Vec<Value>> for Value {
    fn from(items: Vec<Value>) -> Self {
        Value::Array(items)
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_json_string())
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_json_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn json_round_trip_and_paths() {
        let json: serde_json::Value =
            serde_json::from_str(r#"{"a": {"b": [1, 2.5, "x", null, true]}, "c": -3}"#).unwrap();
        let value = Value::from(&json);
        assert_eq!(value.to_json(), json);
        assert_eq!(value.path("c"), Some(&Value::Int(-3)));
        assert_eq!(
            value.path("a.b").and_then(Value::as_array).map(<[_]>::len),
            Some(5)
        );
        assert_eq!(value.path("a.zz"), None);
        assert_eq!(value.path(""), Some(&value));
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Int),
            any::<f64>().prop_map(Value::Float),
            "[a-z\"\\\\é\n ]{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[a-c\"]{0,3}", inner, 0..4)
                    .prop_map(Value::Record),
            ]
        })
    }

    proptest! {
        /// Written and read straight, a value is the text and the value that the trip
        /// through `serde_json::Value` gives.
        #[test]
        fn json_straight_is_json_through_serde_json_values(value in value()) {
            let text = value.to_json_string();
            prop_assert_eq!(&text, &value.to_json().to_string());
            let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(Value::from_json_slice(text.as_bytes()).unwrap(), Value::from(&parsed));
        }
    }

    #[test]
    fn numbers_read_straight_as_through_serde_json_values() {
        for text in [
            "18446744073709551615",
            "-9223372036854775808",
            "2.0",
            "[1, -1, 0.5]",
        ] {
            let parsed: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!(
                Value::from_json_slice(text.as_bytes()).unwrap(),
                Value::from(&parsed),
                "{text}"
            );
        }
        assert!(Value::from_json_slice(b"{").is_err());
    }
}
