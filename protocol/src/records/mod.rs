//! The records of the imaging hierarchy and their built-in schemas.
//!
//! One [`ChannelImage`] arrives per channel image (`channel_level`, the reference
//! system's record). [`ExperimentLayout`] (`experiment_metadata`) says what makes each
//! level complete. The groupings emit one aggregate per level: [`SiteRecord`],
//! [`WellRecord`], [`PlateRecord`], [`ExperimentRecord`]; an aggregate that stays open
//! past its timeout is reported by an [`IncompleteRecord`]. Records that cannot be
//! processed become [`DeadLetter`]s.
//!
//! Each record converts to and from [`Value`] with exactly the fields of its schema:
//! the shape is a derived serde struct beside the record (`ImageFields`, `SiteFields`…,
//! with the key fields of `fields.rs` checked as they are read), and `value_format.rs`
//! reads and writes it as a `Value`.
//!
//! - `image.rs`: what comes in (channel images, experiment layouts);
//! - `aggregates.rs`: what the groupings emit, site to experiment;
//! - `reports.rs`: incomplete aggregates and dead letters;
//! - `schemas.rs`: the built-in schemas the records match.

mod aggregates;
mod fields;
mod image;
mod reports;
mod schemas;
mod value_format;

#[cfg(test)]
mod tests;

pub use aggregates::{
    ChannelRef, ExperimentRecord, PlateRecord, PlateSummary, Provenance, SiteImages, SiteRecord,
    WellRecord, WellSummary,
};
pub use image::{ChannelImage, ExperimentLayout, PlateLayout};
pub use reports::{DeadLetter, IncompleteRecord, Origin};
pub use schemas::builtin_schemas;

#[cfg(doc)]
use crate::value::Value;

/// Why a record could not be read as the typed record its schema promises.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("field {0} is missing")]
    Missing(&'static str),
    #[error("field {field} should be {expected}")]
    Type {
        field: &'static str,
        expected: &'static str,
    },
    /// The field has the right type but not a valid value: a key that does not parse, a
    /// number out of its range.
    #[error("field {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("{0}")]
    Layout(String),
}

/// The keys a record carries, read without decoding the rest of it: routing uses them
/// to send a record to the shard of the aggregate it belongs to.
pub mod key_of {
    use serde::Deserialize;

    use super::RecordError;
    use super::fields::{experiment_id, plate_number, site, well};
    use super::value_format::from_value;
    use crate::keys::{ExperimentId, PlateKey, SiteKey, WellId, WellKey};
    use crate::value::Value;

    /// A key's fields as records name them.
    #[derive(Deserialize)]
    #[serde(remote = "SiteKey")]
    struct SiteKeyFields {
        #[serde(rename = "experiment_id", with = "experiment_id")]
        experiment: ExperimentId,
        #[serde(rename = "plate_number", with = "plate_number")]
        plate: u32,
        #[serde(with = "well")]
        well: WellId,
        #[serde(with = "site")]
        site: u16,
    }

    #[derive(Deserialize)]
    #[serde(remote = "WellKey")]
    struct WellKeyFields {
        #[serde(rename = "experiment_id", with = "experiment_id")]
        experiment: ExperimentId,
        #[serde(rename = "plate_number", with = "plate_number")]
        plate: u32,
        #[serde(with = "well")]
        well: WellId,
    }

    #[derive(Deserialize)]
    #[serde(remote = "PlateKey")]
    struct PlateKeyFields {
        #[serde(rename = "experiment_id", with = "experiment_id")]
        experiment: ExperimentId,
        #[serde(rename = "plate_number", with = "plate_number")]
        plate: u32,
    }

    #[derive(Deserialize)]
    struct ExperimentFields {
        #[serde(with = "experiment_id")]
        experiment_id: ExperimentId,
    }

    /// The site of a `channel_level` record.
    pub fn site(value: &Value) -> Result<SiteKey, RecordError> {
        #[derive(Deserialize)]
        struct Read(#[serde(with = "SiteKeyFields")] SiteKey);
        from_value::<Read>(value).map(|r| r.0)
    }

    /// The well of a `site_level` record.
    pub fn well(value: &Value) -> Result<WellKey, RecordError> {
        #[derive(Deserialize)]
        struct Read(#[serde(with = "WellKeyFields")] WellKey);
        from_value::<Read>(value).map(|r| r.0)
    }

    /// The plate of a `well_level` record.
    pub fn plate(value: &Value) -> Result<PlateKey, RecordError> {
        #[derive(Deserialize)]
        struct Read(#[serde(with = "PlateKeyFields")] PlateKey);
        from_value::<Read>(value).map(|r| r.0)
    }

    /// The experiment of a `plate_level` record.
    pub fn experiment(value: &Value) -> Result<ExperimentId, RecordError> {
        from_value::<ExperimentFields>(value).map(|f| f.experiment_id)
    }
}
