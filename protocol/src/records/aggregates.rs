//! What the groupings emit: one aggregate per level, each listing what it holds, from
//! the site's channel images up to the experiment's plates.

use std::borrow::Cow;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::RecordError;
use super::fields::{channel, experiment_id, plate_number, site, well};
use super::value_format::{from_value, to_value};
use crate::keys::{ExperimentId, PlateKey, SiteKey, WellId, WellKey};
use crate::value::Value;

/// One channel image of a site, as listed in site and well records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelRef {
    pub channel: u8,
    pub location: String,
}

/// `channel_image`: its own shape, as the channel number is checked when read (the
/// derives of [`ChannelRef`] are the wire format of the aggregation state).
#[derive(Serialize, Deserialize)]
struct ChannelFields<'a> {
    #[serde(with = "channel")]
    channel: u8,
    location: &'a str,
}

impl<'a> From<&'a ChannelRef> for ChannelFields<'a> {
    fn from(c: &'a ChannelRef) -> Self {
        Self {
            channel: c.channel,
            location: &c.location,
        }
    }
}

impl From<ChannelFields<'_>> for ChannelRef {
    fn from(c: ChannelFields<'_>) -> Self {
        Self {
            channel: c.channel,
            location: c.location.to_owned(),
        }
    }
}

fn channels_fields(channels: &[ChannelRef]) -> Vec<ChannelFields<'_>> {
    channels.iter().map(ChannelFields::from).collect()
}

fn channel_refs(channels: Vec<ChannelFields<'_>>) -> Vec<ChannelRef> {
    channels.into_iter().map(ChannelRef::from).collect()
}

/// Fields every aggregate below the experiment carries from its first image.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Provenance {
    pub cell_type: Arc<str>,
    pub plate_barcode: Arc<str>,
}

impl Provenance {
    fn read(cell_type: &str, plate_barcode: &str) -> Self {
        Self {
            cell_type: Arc::from(cell_type),
            plate_barcode: Arc::from(plate_barcode),
        }
    }
}

/// A complete site: all its channel images (`site_level`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteRecord {
    pub key: SiteKey,
    pub provenance: Provenance,
    /// Sorted by channel.
    pub channels: Vec<ChannelRef>,
}

/// `site_level` as it is read and written.
#[derive(Serialize, Deserialize)]
struct SiteFields<'a> {
    #[serde(with = "experiment_id")]
    experiment_id: ExperimentId,
    cell_type: &'a str,
    #[serde(with = "plate_number")]
    plate_number: u32,
    plate_barcode: &'a str,
    #[serde(with = "well")]
    well: WellId,
    #[serde(with = "site")]
    site: u16,
    #[serde(borrow)]
    channels: Vec<ChannelFields<'a>>,
}

impl SiteRecord {
    pub const SCHEMA: &'static str = "site_level";

    pub fn to_value(&self) -> Value {
        to_value(&SiteFields {
            experiment_id: self.key.experiment.clone(),
            cell_type: &self.provenance.cell_type,
            plate_number: self.key.plate,
            plate_barcode: &self.provenance.plate_barcode,
            well: self.key.well,
            site: self.key.site,
            channels: channels_fields(&self.channels),
        })
    }

    pub fn from_value(value: &Value) -> Result<Self, RecordError> {
        let f: SiteFields = from_value(value)?;
        Ok(Self {
            key: SiteKey {
                experiment: f.experiment_id,
                plate: f.plate_number,
                well: f.well,
                site: f.site,
            },
            provenance: Provenance::read(f.cell_type, f.plate_barcode),
            channels: channel_refs(f.channels),
        })
    }
}

/// The images of one site inside a well record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteImages {
    pub site: u16,
    pub channels: Vec<ChannelRef>,
}

/// `site_images`.
#[derive(Serialize, Deserialize)]
struct SiteImagesFields<'a> {
    #[serde(with = "site")]
    site: u16,
    #[serde(borrow)]
    channels: Vec<ChannelFields<'a>>,
}

/// A complete well: all its sites (`well_level`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WellRecord {
    pub key: WellKey,
    pub provenance: Provenance,
    /// Sorted by site.
    pub sites: Vec<SiteImages>,
}

/// `well_level` as it is read and written.
#[derive(Serialize, Deserialize)]
struct WellFields<'a> {
    #[serde(with = "experiment_id")]
    experiment_id: ExperimentId,
    cell_type: &'a str,
    #[serde(with = "plate_number")]
    plate_number: u32,
    plate_barcode: &'a str,
    #[serde(with = "well")]
    well: WellId,
    #[serde(borrow)]
    sites: Vec<SiteImagesFields<'a>>,
}

impl WellRecord {
    pub const SCHEMA: &'static str = "well_level";

    pub fn to_value(&self) -> Value {
        to_value(&WellFields {
            experiment_id: self.key.experiment.clone(),
            cell_type: &self.provenance.cell_type,
            plate_number: self.key.plate,
            plate_barcode: &self.provenance.plate_barcode,
            well: self.key.well,
            sites: self
                .sites
                .iter()
                .map(|s| SiteImagesFields {
                    site: s.site,
                    channels: channels_fields(&s.channels),
                })
                .collect(),
        })
    }

    pub fn from_value(value: &Value) -> Result<Self, RecordError> {
        let f: WellFields = from_value(value)?;
        Ok(Self {
            key: WellKey {
                experiment: f.experiment_id,
                plate: f.plate_number,
                well: f.well,
            },
            provenance: Provenance::read(f.cell_type, f.plate_barcode),
            sites: f
                .sites
                .into_iter()
                .map(|s| SiteImages {
                    site: s.site,
                    channels: channel_refs(s.channels),
                })
                .collect(),
        })
    }

    pub fn image_count(&self) -> u64 {
        self.sites.iter().map(|s| s.channels.len() as u64).sum()
    }
}

/// One well inside a plate record (`well_summary`, read and written as it is).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WellSummary {
    #[serde(with = "well")]
    pub well: WellId,
    #[serde(with = "site")]
    pub sites: u16,
    pub images: u64,
}

/// A complete plate: all its wells (`plate_level`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlateRecord {
    pub key: PlateKey,
    pub provenance: Provenance,
    /// Sorted by well.
    pub wells: Vec<WellSummary>,
}

/// `plate_level` as it is read and written; `images` is the wells' sum, written only.
#[derive(Serialize, Deserialize)]
struct PlateFields<'a> {
    #[serde(with = "experiment_id")]
    experiment_id: ExperimentId,
    cell_type: &'a str,
    #[serde(with = "plate_number")]
    plate_number: u32,
    plate_barcode: &'a str,
    wells: Cow<'a, [WellSummary]>,
    #[serde(skip_deserializing)]
    images: u64,
}

impl PlateRecord {
    pub const SCHEMA: &'static str = "plate_level";

    pub fn images(&self) -> u64 {
        self.wells.iter().map(|w| w.images).sum()
    }

    pub fn to_value(&self) -> Value {
        to_value(&PlateFields {
            experiment_id: self.key.experiment.clone(),
            cell_type: &self.provenance.cell_type,
            plate_number: self.key.plate,
            plate_barcode: &self.provenance.plate_barcode,
            wells: Cow::Borrowed(&self.wells),
            images: self.images(),
        })
    }

    pub fn from_value(value: &Value) -> Result<Self, RecordError> {
        let f: PlateFields = from_value(value)?;
        Ok(Self {
            key: PlateKey {
                experiment: f.experiment_id,
                plate: f.plate_number,
            },
            provenance: Provenance::read(f.cell_type, f.plate_barcode),
            wells: f.wells.into_owned(),
        })
    }
}

/// One plate inside an experiment record (`plate_summary`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlateSummary {
    #[serde(rename = "plate_number")]
    pub plate: u32,
    #[serde(rename = "plate_barcode")]
    pub barcode: String,
    pub wells: u32,
    pub images: u64,
}

/// A complete experiment: all its plates (`experiment_level`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExperimentRecord {
    pub experiment: ExperimentId,
    pub cell_type: String,
    /// Sorted by plate number.
    pub plates: Vec<PlateSummary>,
}

/// `experiment_level` as it is written; `images` is the plates' sum.
#[derive(Serialize)]
struct ExperimentFields<'a> {
    #[serde(with = "experiment_id")]
    experiment_id: ExperimentId,
    cell_type: &'a str,
    plates: &'a [PlateSummary],
    images: u64,
}

impl ExperimentRecord {
    pub const SCHEMA: &'static str = "experiment_level";

    pub fn images(&self) -> u64 {
        self.plates.iter().map(|p| p.images).sum()
    }

    pub fn to_value(&self) -> Value {
        to_value(&ExperimentFields {
            experiment_id: self.experiment.clone(),
            cell_type: &self.cell_type,
            plates: &self.plates,
            images: self.images(),
        })
    }
}
