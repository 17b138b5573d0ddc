//! The envelope every internal message travels in.
//!
//! An envelope carries a record (`payload`) plus what the engine needs to process it
//! effectively once and to trace it: a deterministic id, the record's key, the attempt
//! number, the W3C trace context, free-form headers and where the record first entered
//! the engine (for dead letters).

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::records::Origin;
use crate::value::Value;

/// Namespace of Wellspring's deterministic ids (UUID v5).
const ID_NAMESPACE: Uuid = Uuid::from_u128(0x5745_4c4c_5350_5249_4e47_0000_0000_0001);

/// A deterministic message id: the same DAG, node and key always give the same id, so
/// reprocessing after a crash produces the same ids and consumers can drop repeats.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MessageId(Uuid);

impl MessageId {
    /// The id of the output of `node` in `dag` for `key`.
    pub fn derive(dag: &str, node: &str, key: &str) -> Self {
        let mut name = Vec::with_capacity(dag.len() + node.len() + key.len() + 2);
        name.extend_from_slice(dag.as_bytes());
        name.push(0);
        name.extend_from_slice(node.as_bytes());
        name.push(0);
        name.extend_from_slice(key.as_bytes());
        Self(Uuid::new_v5(&ID_NAMESPACE, &name))
    }

    /// This id in re-run `generation` (itself in generation 0, the first run): what a
    /// re-run's output is called, so that it is neither the first run's output nor a
    /// repeat of it, and a replay of the re-run repeats it.
    pub fn in_generation(self, generation: u32) -> Self {
        if generation == 0 {
            return self;
        }
        let mut name = self.0.as_bytes().to_vec();
        name.extend_from_slice(format!("/generation/{generation}").as_bytes());
        Self(Uuid::new_v5(&ID_NAMESPACE, &name))
    }

    /// The id of a record read from an external topic: derived from where it was read.
    pub fn of_origin(origin: &Origin) -> Self {
        Self::derive(
            &origin.topic,
            &origin.partition.to_string(),
            &origin.offset.to_string(),
        )
    }

    pub fn parse(text: &str) -> Option<Self> {
        Uuid::parse_str(text).ok().map(Self)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// W3C trace context (`traceparent`, optional `tracestate`), as the envelope carries it:
/// the data only (reading and writing it is the actors' telemetry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceContext {
    pub traceparent: String,
    pub tracestate: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub id: MessageId,
    pub key: String,
    /// 1 for a first delivery; retries of a task count up.
    pub attempt: u32,
    pub trace: Option<TraceContext>,
    pub headers: Vec<(String, String)>,
    /// Where the record that started this message was read from an external topic.
    pub origin: Option<Origin>,
    pub payload: Value,
}

impl Envelope {
    pub fn new(id: MessageId, key: impl Into<String>, payload: Value) -> Self {
        Self {
            id,
            key: key.into(),
            attempt: 1,
            trace: None,
            headers: Vec::new(),
            origin: None,
            payload,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An envelope by reference, encoding exactly like [`Envelope`] (same fields, same
/// order): routing re-keys and encodes a record without cloning its payload.
#[derive(Serialize)]
pub struct EnvelopeRef<'a> {
    pub id: &'a MessageId,
    pub key: &'a str,
    pub attempt: u32,
    pub trace: &'a Option<TraceContext>,
    pub headers: &'a [(String, String)],
    pub origin: &'a Option<Origin>,
    pub payload: &'a Value,
}

impl Envelope {
    /// This envelope under another key.
    pub fn rekeyed<'a>(&'a self, key: &'a str) -> EnvelopeRef<'a> {
        EnvelopeRef {
            id: &self.id,
            key,
            attempt: self.attempt,
            trace: &self.trace,
            headers: &self.headers,
            origin: &self.origin,
            payload: &self.payload,
        }
    }
}

/// Names of the log record headers Wellspring writes on every output record. (A traced
/// record also carries the W3C trace context headers, `traceparent` and `tracestate`,
/// which OpenTelemetry's propagator names and writes.)
pub mod headers {
    /// The record's deterministic id: consumers drop repeats by it.
    pub const ID: &str = "wellspring-id";
    /// The DAG node that produced the record.
    pub const NODE: &str = "wellspring-node";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rekeyed_envelope_decodes_as_an_envelope() {
        let mut envelope = Envelope::new(MessageId::derive("d", "n", "k"), "k", Value::from("v"));
        envelope.origin = Some(Origin {
            topic: "t".into(),
            partition: 2,
            offset: 3,
        });
        let bytes = crate::wire::encode(&envelope.rekeyed("other"));
        let decoded: Envelope = crate::wire::decode(&bytes).unwrap();
        assert_eq!(decoded.key, "other");
        assert_eq!(
            Envelope {
                key: "k".into(),
                ..decoded
            },
            envelope
        );
    }

    #[test]
    fn ids_are_deterministic_and_distinct() {
        let a = MessageId::derive("dag", "images-site", "E/1/B02/1");
        assert_eq!(a, MessageId::derive("dag", "images-site", "E/1/B02/1"));
        assert_ne!(a, MessageId::derive("dag", "images-site", "E/1/B02/2"));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(
            MessageId::derive("ab", "c", "k"),
            MessageId::derive("a", "bc", "k")
        );
        assert_eq!(MessageId::parse(&a.to_string()), Some(a));
        // A re-run's output is another record; the same re-run's, the same one.
        assert_eq!(a.in_generation(0), a);
        assert_ne!(a.in_generation(1), a);
        assert_eq!(a.in_generation(1), a.in_generation(1));
        assert_ne!(a.in_generation(1), a.in_generation(2));
    }
}
