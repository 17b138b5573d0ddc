//! The record ingest API (`POST /api/topics/{topic}/records`), as a node serves it and
//! `wellspring ingest` calls it: records published over HTTP, for uploaders that cannot
//! speak Kafka.
//!
//! The request body is a batch in the shape of the Kafka REST proxies, at most
//! [`MAX_RECORDS`] records:
//!
//! ```json
//! {"records": [{"key": "EXP-1/1/B02/1/1", "value": {...}, "headers": {"source": "scope-3"}}]}
//! ```
//!
//! The server reads it as JSON (to name each wrong record), so it has no type here. A
//! batch is all or nothing: the answer is `200` with a [`WrittenBatch`] once the log has
//! every record durably, or `422` with a [`RefusedBatch`] and nothing written.

use serde::{Deserialize, Serialize};

use crate::taskstore::api::encoded;

/// Route patterns as the server mounts them; `{topic}` is a path parameter.
pub mod route {
    /// `POST`: a batch of records for the topic.
    pub const RECORDS: &str = "/api/topics/{topic}/records";
}

/// Records in one batch at most.
pub const MAX_RECORDS: usize = 10_000;

/// The path of [`route::RECORDS`] for `topic` (percent-encoded: topic names are letters,
/// digits, `.`, `_` and `-`, so only anything else is escaped).
pub fn records_path(topic: &str) -> String {
    route::RECORDS.replace("{topic}", &encoded(topic))
}

/// What a written record became.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrittenRecord {
    pub partition: u32,
    pub offset: u64,
}

/// The `200` answer: each record's partition and offset, in the batch's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrittenBatch {
    pub topic: String,
    pub offsets: Vec<WrittenRecord>,
}

/// Why one record of a batch was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordErrors {
    /// The record's index in the batch.
    pub index: usize,
    pub errors: Vec<String>,
}

/// The `422` answer: the batch was refused whole (nothing written).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedBatch {
    #[serde(default)]
    pub error: String,
    pub records: Vec<RecordErrors>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_records_path_fills_the_route_with_the_encoded_topic() {
        assert_eq!(
            records_path("images_channel"),
            "/api/topics/images_channel/records"
        );
        assert_eq!(records_path("a.b-c"), "/api/topics/a.b-c/records");
        assert_eq!(records_path("a b/c"), "/api/topics/a%20b%2Fc/records");
    }
}
