//! Wire formats: JSON for external topics and APIs, a versioned binary encoding
//! (postcard) for internal messages, changelogs and state snapshots.
//!
//! Every binary blob starts with one format-version byte. A reader refuses a version it
//! does not know instead of misreading it, so a mixed-version cluster fails loudly.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Version of the internal binary formats written by this build.
pub const FORMAT_VERSION: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("empty message")]
    Empty,
    #[error(
        "format version {found} is not supported (this build reads version {supported}{})",
        if found > supported { "; it was written by a newer Wellspring" } else { "" }
    )]
    Version { found: u8, supported: u8 },
    #[error("malformed binary message: {0}")]
    Binary(#[from] postcard::Error),
    #[error("malformed JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl WireError {
    /// The format version of a blob written by a newer build (one this build must not
    /// guess at: during a rolling upgrade, a newer node's record is the newer node's to
    /// process).
    pub fn newer_version(&self) -> Option<u8> {
        match self {
            WireError::Version { found, supported } if found > supported => Some(*found),
            _ => None,
        }
    }
}

/// Encodes a value in the internal binary format, version byte first.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let out = vec![FORMAT_VERSION];
    // postcard only fails on types serde cannot express in it (maps with non-string
    // keys are fine); our internal types are all plain data.
    match postcard::to_extend(value, out) {
        Ok(bytes) => bytes,
        Err(e) => unreachable!("internal type not encodable by postcard: {e}"),
    }
}

/// Decodes a value written by [`encode`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    let (&version, body) = bytes.split_first().ok_or(WireError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(WireError::Version {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    Ok(postcard::from_bytes(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Envelope, MessageId};
    use crate::value::Value;

    #[test]
    fn envelopes_round_trip_and_versions_are_checked() {
        let mut envelope = Envelope::new(
            MessageId::derive("d", "n", "k"),
            "k",
            Value::record([
                ("a", Value::Int(1)),
                ("b", Value::Array(vec![Value::Float(0.5)])),
            ]),
        );
        envelope.headers.push(("h".into(), "v".into()));
        let bytes = encode(&envelope);
        assert_eq!(decode::<Envelope>(&bytes).unwrap(), envelope);

        let mut future = bytes.clone();
        future[0] = FORMAT_VERSION + 1;
        let error = decode::<Envelope>(&future).unwrap_err();
        assert_eq!(error.newer_version(), Some(FORMAT_VERSION + 1));
        assert_eq!(
            error.to_string(),
            "format version 2 is not supported (this build reads version 1; it was written by a newer Wellspring)"
        );
        assert!(matches!(decode::<Envelope>(&[]), Err(WireError::Empty)));
        assert!(decode::<Envelope>(&bytes[..bytes.len() / 2]).is_err());
    }
}
