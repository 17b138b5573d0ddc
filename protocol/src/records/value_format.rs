//! [`Value`] as a serde format, so that each record's shape is declared once, as a
//! derived struct: [`to_value`] writes any `Serialize` as a `Value`, [`from_value`] reads
//! a `Deserialize` out of one.
//!
//! Reading borrows the value's strings (a record's `&str` fields copy nothing), looks up
//! only the fields the struct declares, in their order, and names the field in every
//! error, as [`RecordError`] says it: `field well: well "Z99" is not a well name…`.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{self, Serialize};

use super::RecordError;
use crate::value::Value;

/// `value` as a [`Value`]. Records are made of strings, integers, arrays and records,
/// which always serialize; only tuples and enums with data (no record has one) fail.
pub(crate) fn to_value<T: Serialize>(value: &T) -> Value {
    match value.serialize(ValueSerializer) {
        Ok(value) => value,
        Err(Unserializable(why)) => unreachable!("a record always serializes: {why}"),
    }
}

/// The `T` that `value` holds.
pub(crate) fn from_value<'de, T: de::Deserialize<'de>>(
    value: &'de Value,
) -> Result<T, RecordError> {
    T::deserialize(ValueDeserializer {
        value: Some(value),
        field: "",
    })
    .map_err(ReadError::into_record_error)
}

// ---------------------------------------------------------------------------------------
// Reading.

/// An error while reading: a [`RecordError`] that knows its field, or a message from a
/// field's own `Deserialize` (a key that does not parse), given its field on the way out.
#[derive(Debug)]
enum ReadError {
    Record(RecordError),
    Message(String),
}

impl ReadError {
    fn in_field(self, field: &'static str) -> Self {
        match self {
            ReadError::Message(reason) => ReadError::Record(RecordError::Invalid { field, reason }),
            known => known,
        }
    }

    fn into_record_error(self) -> RecordError {
        match self {
            ReadError::Record(e) => e,
            ReadError::Message(reason) => RecordError::Invalid {
                field: "(record)",
                reason,
            },
        }
    }
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Record(e) => e.fmt(f),
            ReadError::Message(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for ReadError {}

impl de::Error for ReadError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        ReadError::Message(msg.to_string())
    }

    fn missing_field(field: &'static str) -> Self {
        ReadError::Record(RecordError::Missing(field))
    }
}

/// One field's value (`None`: the record has no such field).
struct ValueDeserializer<'de> {
    value: Option<&'de Value>,
    field: &'static str,
}

impl<'de> ValueDeserializer<'de> {
    fn value(&self) -> Result<&'de Value, ReadError> {
        self.value
            .ok_or(ReadError::Record(RecordError::Missing(self.field)))
    }

    fn wrong(&self, expected: &'static str) -> ReadError {
        ReadError::Record(RecordError::Type {
            field: self.field,
            expected,
        })
    }

    fn int(&self) -> Result<i64, ReadError> {
        match self.value()? {
            Value::Int(i) => Ok(*i),
            _ => Err(self.wrong("an integer")),
        }
    }
}

impl<'de> de::Deserializer<'de> for ValueDeserializer<'de> {
    type Error = ReadError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ReadError> {
        match self.value()? {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Int(i) => visitor.visit_i64(*i),
            Value::Float(f) => visitor.visit_f64(*f),
            Value::String(s) => visitor.visit_borrowed_str(s),
            Value::Array(items) => visitor.visit_seq(Items {
                items: items.iter(),
                field: self.field,
            }),
            Value::Record(fields) => visitor.visit_map(Entries {
                entries: fields.iter(),
                next: None,
            }),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ReadError> {
        match self.value()? {
            Value::Bool(b) => visitor.visit_bool(*b),
            _ => Err(self.wrong("a boolean")),
        }
    }

    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ReadError> {
        visitor.visit_i64(self.int()?)
    }

    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ReadError> {
        self.deserialize_i64(visitor)
    }

    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ReadError> {
        self.deserialize_i64(visitor)
    }

    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ReadError> {
        self.deserialize_i64(visitor)
    }

    /// Unsigned fields are counts: a negative one is not a count.
    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ReadError> {
        let count = u64::try_from(self.int()?).map_err(|_| self.wrong("a count"))?;
        visitor.visit_u64(count)
    }

    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ReadError> {
        self.deserialize_u64(visitor)
    }

    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ReadError> {
        self.deserialize_u64(visitor)
    }

    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ReadError> {
        self.deserialize_u64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ReadError> {
        match self.value()? {
            Value::Float(f) => visitor.visit_f64(*f),
            Value::Int(i) => visitor.visit_f64(*i as f64),
            _ => Err(self.wrong("a number")),
        }
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ReadError> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ReadError> {
        match self.value()? {
            Value::String(s) => visitor.visit_borrowed_str(s),
            _ => Err(self.wrong("a string")),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ReadError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ReadError> {
        self.deserialize_str(visitor)
    }

    /// Absent and `null` are both `None`.
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ReadError> {
        match self.value {
            None | Some(Value::Null) => visitor.visit_none(),
            Some(_) => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, ReadError> {
        visitor.visit_newtype_struct(self)
    }

    /// The items carry their array's field name into their errors.
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ReadError> {
        match self.value()? {
            Value::Array(items) => visitor.visit_seq(Items {
                items: items.iter(),
                field: self.field,
            }),
            _ => Err(self.wrong("an array")),
        }
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ReadError> {
        match self.value()? {
            Value::Record(fields) => visitor.visit_map(Entries {
                entries: fields.iter(),
                next: None,
            }),
            _ => Err(self.wrong("an object")),
        }
    }

    /// The struct's fields in their declared order, present or not, so that the first
    /// one in that order that is wrong or missing is the one reported. A value that is
    /// not a record has none of them.
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ReadError> {
        let record = match self.value()? {
            Value::Record(record) => Some(record),
            _ => None,
        };
        visitor.visit_map(Fields {
            record,
            fields: fields.iter(),
            current: None,
        })
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ReadError> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        i128 u128 char bytes byte_buf unit unit_struct tuple tuple_struct enum
    }
}

/// A struct's fields, looked up by name.
struct Fields<'de> {
    record: Option<&'de BTreeMap<String, Value>>,
    fields: std::slice::Iter<'static, &'static str>,
    current: Option<&'static str>,
}

impl<'de> MapAccess<'de> for Fields<'de> {
    type Error = ReadError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, ReadError> {
        let Some(&field) = self.fields.next() else {
            return Ok(None);
        };
        self.current = Some(field);
        seed.deserialize(field.into_deserializer()).map(Some)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, ReadError> {
        let field = self.current.take().unwrap_or_default();
        seed.deserialize(ValueDeserializer {
            value: self.record.and_then(|r| r.get(field)),
            field,
        })
        .map_err(|e| e.in_field(field))
    }
}

/// A record's entries, for a map or an arbitrary value.
struct Entries<'de> {
    entries: std::collections::btree_map::Iter<'de, String, Value>,
    next: Option<&'de Value>,
}

impl<'de> MapAccess<'de> for Entries<'de> {
    type Error = ReadError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, ReadError> {
        let Some((name, value)) = self.entries.next() else {
            return Ok(None);
        };
        self.next = Some(value);
        seed.deserialize(de::value::BorrowedStrDeserializer::new(name))
            .map(Some)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, ReadError> {
        seed.deserialize(ValueDeserializer {
            value: self.next.take(),
            field: "",
        })
    }
}

struct Items<'de> {
    items: std::slice::Iter<'de, Value>,
    field: &'static str,
}

impl<'de> SeqAccess<'de> for Items<'de> {
    type Error = ReadError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, ReadError> {
        let Some(item) = self.items.next() else {
            return Ok(None);
        };
        seed.deserialize(ValueDeserializer {
            value: Some(item),
            field: self.field,
        })
        .map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

// ---------------------------------------------------------------------------------------
// Writing.

/// Only a `Serialize` impl's own complaint (`ser::Error::custom`).
#[derive(Debug)]
struct Unserializable(String);

impl fmt::Display for Unserializable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unserializable {}

impl ser::Error for Unserializable {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Unserializable(msg.to_string())
    }
}

struct ValueSerializer;

type Written = Result<Value, Unserializable>;

/// Shapes no record has (tuples, enums with data) are refused.
fn unsupported(shape: &str) -> Unserializable {
    Unserializable(format!("a record has no {shape}"))
}

impl ser::Serializer for ValueSerializer {
    type Ok = Value;
    type Error = Unserializable;
    type SerializeSeq = Array;
    type SerializeTuple = ser::Impossible<Value, Unserializable>;
    type SerializeTupleStruct = ser::Impossible<Value, Unserializable>;
    type SerializeTupleVariant = ser::Impossible<Value, Unserializable>;
    type SerializeMap = Record;
    type SerializeStruct = Record;
    type SerializeStructVariant = ser::Impossible<Value, Unserializable>;

    fn serialize_bool(self, v: bool) -> Written {
        Ok(Value::Bool(v))
    }
    fn serialize_i8(self, v: i8) -> Written {
        Ok(Value::Int(v.into()))
    }
    fn serialize_i16(self, v: i16) -> Written {
        Ok(Value::Int(v.into()))
    }
    fn serialize_i32(self, v: i32) -> Written {
        Ok(Value::Int(v.into()))
    }
    fn serialize_i64(self, v: i64) -> Written {
        Ok(Value::Int(v))
    }
    fn serialize_u8(self, v: u8) -> Written {
        Ok(Value::Int(v.into()))
    }
    fn serialize_u16(self, v: u16) -> Written {
        Ok(Value::Int(v.into()))
    }
    fn serialize_u32(self, v: u32) -> Written {
        Ok(Value::Int(v.into()))
    }
    /// Beyond `i64`, a number as JSON would hold it.
    fn serialize_u64(self, v: u64) -> Written {
        Ok(i64::try_from(v).map_or(Value::Float(v as f64), Value::Int))
    }
    fn serialize_f32(self, v: f32) -> Written {
        Ok(Value::Float(v.into()))
    }
    fn serialize_f64(self, v: f64) -> Written {
        Ok(Value::Float(v))
    }
    fn serialize_char(self, v: char) -> Written {
        Ok(Value::String(v.to_string()))
    }
    fn serialize_str(self, v: &str) -> Written {
        Ok(Value::String(v.to_owned()))
    }
    fn collect_str<T: fmt::Display + ?Sized>(self, v: &T) -> Written {
        Ok(Value::String(v.to_string()))
    }
    fn serialize_bytes(self, v: &[u8]) -> Written {
        Ok(Value::Array(v.iter().map(|b| Value::from(*b)).collect()))
    }
    fn serialize_none(self) -> Written {
        Ok(Value::Null)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Written {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Written {
        Ok(Value::Null)
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Written {
        Ok(Value::Null)
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Written {
        Ok(Value::from(variant))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Written {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> Written {
        Err(unsupported("enum with data"))
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Array, Unserializable> {
        Ok(Array(Vec::with_capacity(len.unwrap_or(0))))
    }
    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple, Unserializable> {
        Err(unsupported("tuple"))
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleStruct, Unserializable> {
        Err(unsupported("tuple"))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, Unserializable> {
        Err(unsupported("enum with data"))
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Record, Unserializable> {
        Ok(Record::default())
    }
    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<Record, Unserializable> {
        Ok(Record::default())
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, Unserializable> {
        Err(unsupported("enum with data"))
    }
}

struct Array(Vec<Value>);

impl ser::SerializeSeq for Array {
    type Ok = Value;
    type Error = Unserializable;
    fn serialize_element<T: Serialize + ?Sized>(
        &mut self,
        value: &T,
    ) -> Result<(), Unserializable> {
        self.0.push(value.serialize(ValueSerializer)?);
        Ok(())
    }
    fn end(self) -> Written {
        Ok(Value::Array(self.0))
    }
}

#[derive(Default)]
struct Record {
    fields: BTreeMap<String, Value>,
    key: Option<String>,
}

impl ser::SerializeStruct for Record {
    type Ok = Value;
    type Error = Unserializable;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        name: &'static str,
        value: &T,
    ) -> Result<(), Unserializable> {
        self.fields
            .insert(name.to_owned(), value.serialize(ValueSerializer)?);
        Ok(())
    }
    fn end(self) -> Written {
        Ok(Value::Record(self.fields))
    }
}

impl ser::SerializeMap for Record {
    type Ok = Value;
    type Error = Unserializable;
    /// A key that is not a string is written as its JSON text.
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Unserializable> {
        self.key = Some(match key.serialize(ValueSerializer)? {
            Value::String(name) => name,
            other => other.to_json_string(),
        });
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unserializable> {
        let key = self.key.take().unwrap_or_default();
        self.fields.insert(key, value.serialize(ValueSerializer)?);
        Ok(())
    }
    fn end(self) -> Written {
        Ok(Value::Record(self.fields))
    }
}
