//! The records of the imaging hierarchy and their built-in schemas.
//!
//! One [`ChannelImage`] arrives per channel image (`channel_level`, the reference
//! system's record). [`ExperimentLayout`] (`experiment_metadata`) says what makes each
//! level complete. The groupings emit one aggregate per level: [`SiteRecord`],
//! [`WellRecord`], [`PlateRecord`], [`ExperimentRecord`]; an aggregate that stays open
//! past its timeout is reported by an [`IncompleteRecord`]. Records that cannot be
//! processed become [`DeadLetter`]s.
//!
//! Each record converts to and from [`Value`] with exactly the fields of its schema.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::keys::{self, ChannelKey, ExperimentId, KeyError, PlateKey, SiteKey, WellId, WellKey};
use crate::schema::Schema;
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
    #[error("field {field}: {source}")]
    Key {
        field: &'static str,
        #[source]
        source: KeyError,
    },
    #[error("{0}")]
    Layout(String),
}

pub(crate) fn str_field<'a>(value: &'a Value, field: &'static str) -> Result<&'a str, RecordError> {
    match value.get(field) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(RecordError::Type {
            field,
            expected: "a string",
        }),
        None => Err(RecordError::Missing(field)),
    }
}

fn opt_str_field<'a>(
    value: &'a Value,
    field: &'static str,
) -> Result<Option<&'a str>, RecordError> {
    match value.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(RecordError::Type {
            field,
            expected: "a string",
        }),
    }
}

fn int_field(value: &Value, field: &'static str) -> Result<i64, RecordError> {
    match value.get(field) {
        Some(Value::Int(i)) => Ok(*i),
        Some(_) => Err(RecordError::Type {
            field,
            expected: "an integer",
        }),
        None => Err(RecordError::Missing(field)),
    }
}

fn array_field<'a>(value: &'a Value, field: &'static str) -> Result<&'a [Value], RecordError> {
    match value.get(field) {
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(RecordError::Type {
            field,
            expected: "an array",
        }),
        None => Err(RecordError::Missing(field)),
    }
}

fn key_err(field: &'static str) -> impl Fn(KeyError) -> RecordError {
    move |source| RecordError::Key { field, source }
}

fn experiment_field(value: &Value) -> Result<ExperimentId, RecordError> {
    ExperimentId::new(str_field(value, "experiment_id")?).map_err(key_err("experiment_id"))
}

fn plate_field(value: &Value) -> Result<u32, RecordError> {
    keys::plate_number(int_field(value, "plate_number")?).map_err(key_err("plate_number"))
}

fn well_field(value: &Value) -> Result<WellId, RecordError> {
    WellId::parse(str_field(value, "well")?).map_err(key_err("well"))
}

fn site_field(value: &Value) -> Result<u16, RecordError> {
    keys::site_number(int_field(value, "site")?).map_err(key_err("site"))
}

fn channel_field(value: &Value) -> Result<u8, RecordError> {
    keys::channel_number(int_field(value, "channel")?).map_err(key_err("channel"))
}

/// The keys a record carries, read without decoding the rest of it: routing uses them
/// to send a record to the shard of the aggregate it belongs to.
pub mod key_of {
    use super::*;

    /// The site of a `channel_level` record.
    pub fn site(value: &Value) -> Result<SiteKey, RecordError> {
        Ok(SiteKey {
            experiment: experiment_field(value)?,
            plate: plate_field(value)?,
            well: well_field(value)?,
            site: site_field(value)?,
        })
    }

    /// The well of a `site_level` record.
    pub fn well(value: &Value) -> Result<WellKey, RecordError> {
        Ok(WellKey {
            experiment: experiment_field(value)?,
            plate: plate_field(value)?,
            well: well_field(value)?,
        })
    }

    /// The plate of a `well_level` record.
    pub fn plate(value: &Value) -> Result<PlateKey, RecordError> {
        Ok(PlateKey {
            experiment: experiment_field(value)?,
            plate: plate_field(value)?,
        })
    }

    /// The experiment of a `plate_level` record.
    pub fn experiment(value: &Value) -> Result<ExperimentId, RecordError> {
        experiment_field(value)
    }
}

/// The reference system's `channel_level` record: one channel image of one site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelImage {
    pub key: ChannelKey,
    /// Shared: every image of a plate carries the same one.
    pub cell_type: Arc<str>,
    pub plate_barcode: Arc<str>,
    /// Where the pixels are (object-store URI): Wellspring never moves pixels.
    pub location: String,
}

impl ChannelImage {
    pub const SCHEMA: &'static str = "channel_level";

    pub fn from_value(value: &Value) -> Result<Self, RecordError> {
        Ok(Self {
            key: ChannelKey {
                experiment: experiment_field(value)?,
                plate: plate_field(value)?,
                well: well_field(value)?,
                site: site_field(value)?,
                channel: channel_field(value)?,
            },
            cell_type: Arc::from(str_field(value, "cell_type")?),
            plate_barcode: Arc::from(str_field(value, "plate_barcode")?),
            location: str_field(value, "location")?.to_owned(),
        })
    }

    /// Like [`ChannelImage::from_value`], but shares the provenance strings with the
    /// previous image when they are equal (they nearly always are within a plate), so a
    /// decoder allocates them once per plate, not once per image.
    pub fn from_value_sharing(
        value: &Value,
        previous: &mut Option<Provenance>,
    ) -> Result<Self, RecordError> {
        let cell_type = str_field(value, "cell_type")?;
        let plate_barcode = str_field(value, "plate_barcode")?;
        let shared = match previous {
            Some(p) if *p.cell_type == *cell_type && *p.plate_barcode == *plate_barcode => {
                p.clone()
            }
            _ => {
                let fresh = Provenance {
                    cell_type: Arc::from(cell_type),
                    plate_barcode: Arc::from(plate_barcode),
                };
                *previous = Some(fresh.clone());
                fresh
            }
        };
        Ok(Self {
            key: ChannelKey {
                experiment: experiment_field(value)?,
                plate: plate_field(value)?,
                well: well_field(value)?,
                site: site_field(value)?,
                channel: channel_field(value)?,
            },
            cell_type: shared.cell_type,
            plate_barcode: shared.plate_barcode,
            location: str_field(value, "location")?.to_owned(),
        })
    }

    pub fn to_value(&self) -> Value {
        Value::record([
            ("experiment_id", Value::from(self.key.experiment.as_str())),
            ("cell_type", Value::from(&*self.cell_type)),
            ("plate_number", Value::from(self.key.plate)),
            ("plate_barcode", Value::from(&*self.plate_barcode)),
            ("well", Value::from(self.key.well.to_string())),
            ("site", Value::from(self.key.site)),
            ("channel", Value::from(self.key.channel)),
            ("location", Value::from(self.location.as_str())),
        ])
    }
}

/// The layout of one plate: which wells are in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlateLayout {
    pub plate: u32,
    pub barcode: Option<String>,
    /// Sorted, unique.
    pub wells: Vec<WellId>,
}

impl PlateLayout {
    pub fn has_well(&self, well: WellId) -> bool {
        self.wells.binary_search(&well).is_ok()
    }
}

/// Experiment metadata (`experiment_metadata`): what makes each level complete.
///
/// `wells` entries are well names (`B02`) or inclusive rectangles (`B02:O23`, the 308
/// interior wells of a 384-well plate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExperimentLayout {
    pub experiment: ExperimentId,
    pub channels_per_site: u8,
    pub sites_per_well: u16,
    /// Sorted by plate number, unique.
    pub plates: Vec<PlateLayout>,
}

impl ExperimentLayout {
    pub const SCHEMA: &'static str = "experiment_metadata";

    pub fn plate(&self, plate: u32) -> Option<&PlateLayout> {
        self.plates
            .binary_search_by_key(&plate, |p| p.plate)
            .ok()
            .map(|i| &self.plates[i])
    }

    /// Number of channel images in the whole experiment.
    pub fn image_count(&self) -> u64 {
        let wells: u64 = self.plates.iter().map(|p| p.wells.len() as u64).sum();
        wells * u64::from(self.sites_per_well) * u64::from(self.channels_per_site)
    }

    pub fn from_value(value: &Value) -> Result<Self, RecordError> {
        let experiment = experiment_field(value)?;
        let channels = int_field(value, "channels_per_site")?;
        let channels_per_site = u8::try_from(channels)
            .ok()
            .filter(|c| (1..=keys::MAX_CHANNEL as u8).contains(c))
            .ok_or_else(|| {
                RecordError::Layout(format!(
                    "channels_per_site {channels} is out of range (1 to {})",
                    keys::MAX_CHANNEL
                ))
            })?;
        let sites = int_field(value, "sites_per_well")?;
        let sites_per_well = keys::site_number(sites).map_err(|_| {
            RecordError::Layout(format!(
                "sites_per_well {sites} is out of range (1 to {})",
                keys::MAX_SITE
            ))
        })?;
        let mut plates = Vec::new();
        for plate in array_field(value, "plates")? {
            let number = plate_field(plate)?;
            let barcode = opt_str_field(plate, "plate_barcode")?.map(str::to_owned);
            let mut wells = BTreeSet::new();
            for entry in array_field(plate, "wells")? {
                let text = entry.as_str().ok_or(RecordError::Type {
                    field: "wells",
                    expected: "a list of well names",
                })?;
                expand_wells(text, &mut wells)?;
            }
            if wells.is_empty() {
                return Err(RecordError::Layout(format!("plate {number} has no wells")));
            }
            plates.push(PlateLayout {
                plate: number,
                barcode,
                wells: wells.into_iter().collect(),
            });
        }
        if plates.is_empty() {
            return Err(RecordError::Layout("the experiment has no plates".into()));
        }
        plates.sort_by_key(|p| p.plate);
        if let Some(w) = plates.windows(2).find(|w| w[0].plate == w[1].plate) {
            return Err(RecordError::Layout(format!(
                "plate {} is listed twice",
                w[0].plate
            )));
        }
        Ok(Self {
            experiment,
            channels_per_site,
            sites_per_well,
            plates,
        })
    }

    pub fn to_value(&self) -> Value {
        Value::record([
            ("experiment_id", Value::from(self.experiment.as_str())),
            ("channels_per_site", Value::from(self.channels_per_site)),
            ("sites_per_well", Value::from(self.sites_per_well)),
            (
                "plates",
                Value::Array(
                    self.plates
                        .iter()
                        .map(|p| {
                            Value::record([
                                ("plate_number", Value::from(p.plate)),
                                (
                                    "plate_barcode",
                                    p.barcode.as_deref().map_or(Value::Null, Value::from),
                                ),
                                (
                                    "wells",
                                    Value::Array(
                                        p.wells
                                            .iter()
                                            .map(|w| Value::from(w.to_string()))
                                            .collect(),
                                    ),
                                ),
                            ])
                        })
                        .collect(),
                ),
            ),
        ])
    }
}

fn expand_wells(text: &str, wells: &mut BTreeSet<WellId>) -> Result<(), RecordError> {
    let parse = |w: &str| WellId::parse(w).map_err(key_err("wells"));
    match text.split_once(':') {
        None => {
            wells.insert(parse(text)?);
        }
        Some((from, to)) => {
            let (from, to) = (parse(from)?, parse(to)?);
            if from.row() > to.row() || from.column() > to.column() {
                return Err(RecordError::Layout(format!(
                    "well range {text} runs backwards (write top-left:bottom-right)"
                )));
            }
            for row in from.row()..=to.row() {
                for column in from.column()..=to.column() {
                    wells.extend(WellId::new(row, column));
                }
            }
        }
    }
    Ok(())
}

/// One channel image of a site, as listed in site and well records.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChannelRef {
    pub channel: u8,
    pub location: String,
}

fn channel_refs_to_value(channels: &[ChannelRef]) -> Value {
    Value::Array(
        channels
            .iter()
            .map(|c| {
                Value::record([
                    ("channel", Value::from(c.channel)),
                    ("location", Value::from(c.location.as_str())),
                ])
            })
            .collect(),
    )
}

fn channel_refs_from_value(items: &[Value]) -> Result<Vec<ChannelRef>, RecordError> {
    items
        .iter()
        .map(|c| {
            Ok(ChannelRef {
                channel: channel_field(c)?,
                location: str_field(c, "location")?.to_owned(),
            })
        })
        .collect()
}

/// Fields every aggregate below the experiment carries from its first image.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Provenance {
    pub cell_type: Arc<str>,
    pub plate_barcode: Arc<str>,
}

/// A complete site: all its channel images (`site_level`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteRecord {
    pub key: SiteKey,
    pub provenance: Provenance,
    /// Sorted by channel.
    pub channels: Vec<ChannelRef>,
}

impl SiteRecord {
    pub const SCHEMA: &'static str = "site_level";

    pub fn to_value(&self) -> Value {
        Value::record(
            plate_fields(&self.key.experiment, self.key.plate, &self.provenance)
                .into_iter()
                .chain([
                    ("well", Value::from(self.key.well.to_string())),
                    ("site", Value::from(self.key.site)),
                    ("channels", channel_refs_to_value(&self.channels)),
                ]),
        )
    }

    pub fn from_value(value: &Value) -> Result<Self, RecordError> {
        Ok(Self {
            key: SiteKey {
                experiment: experiment_field(value)?,
                plate: plate_field(value)?,
                well: well_field(value)?,
                site: site_field(value)?,
            },
            provenance: provenance(value)?,
            channels: channel_refs_from_value(array_field(value, "channels")?)?,
        })
    }
}

/// The fields every record below the experiment level starts with.
fn plate_fields(
    experiment: &ExperimentId,
    plate: u32,
    provenance: &Provenance,
) -> [(&'static str, Value); 4] {
    [
        ("experiment_id", Value::from(experiment.as_str())),
        ("cell_type", Value::from(&*provenance.cell_type)),
        ("plate_number", Value::from(plate)),
        ("plate_barcode", Value::from(&*provenance.plate_barcode)),
    ]
}

fn provenance(value: &Value) -> Result<Provenance, RecordError> {
    Ok(Provenance {
        cell_type: Arc::from(str_field(value, "cell_type")?),
        plate_barcode: Arc::from(str_field(value, "plate_barcode")?),
    })
}

/// The images of one site inside a well record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteImages {
    pub site: u16,
    pub channels: Vec<ChannelRef>,
}

/// A complete well: all its sites (`well_level`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WellRecord {
    pub key: WellKey,
    pub provenance: Provenance,
    /// Sorted by site.
    pub sites: Vec<SiteImages>,
}

impl WellRecord {
    pub const SCHEMA: &'static str = "well_level";

    pub fn to_value(&self) -> Value {
        Value::record(
            plate_fields(&self.key.experiment, self.key.plate, &self.provenance)
                .into_iter()
                .chain([
                    ("well", Value::from(self.key.well.to_string())),
                    (
                        "sites",
                        Value::Array(
                            self.sites
                                .iter()
                                .map(|s| {
                                    Value::record([
                                        ("site", Value::from(s.site)),
                                        ("channels", channel_refs_to_value(&s.channels)),
                                    ])
                                })
                                .collect(),
                        ),
                    ),
                ]),
        )
    }

    pub fn from_value(value: &Value) -> Result<Self, RecordError> {
        let sites = array_field(value, "sites")?
            .iter()
            .map(|s| {
                Ok(SiteImages {
                    site: site_field(s)?,
                    channels: channel_refs_from_value(array_field(s, "channels")?)?,
                })
            })
            .collect::<Result<_, RecordError>>()?;
        Ok(Self {
            key: WellKey {
                experiment: experiment_field(value)?,
                plate: plate_field(value)?,
                well: well_field(value)?,
            },
            provenance: provenance(value)?,
            sites,
        })
    }

    pub fn image_count(&self) -> u64 {
        self.sites.iter().map(|s| s.channels.len() as u64).sum()
    }
}

/// One well inside a plate record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WellSummary {
    pub well: WellId,
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

impl PlateRecord {
    pub const SCHEMA: &'static str = "plate_level";

    pub fn images(&self) -> u64 {
        self.wells.iter().map(|w| w.images).sum()
    }

    pub fn to_value(&self) -> Value {
        Value::record(
            plate_fields(&self.key.experiment, self.key.plate, &self.provenance)
                .into_iter()
                .chain([
                    (
                        "wells",
                        Value::Array(
                            self.wells
                                .iter()
                                .map(|w| {
                                    Value::record([
                                        ("well", Value::from(w.well.to_string())),
                                        ("sites", Value::from(w.sites)),
                                        ("images", Value::Int(w.images as i64)),
                                    ])
                                })
                                .collect(),
                        ),
                    ),
                    ("images", Value::Int(self.images() as i64)),
                ]),
        )
    }

    pub fn from_value(value: &Value) -> Result<Self, RecordError> {
        let wells = array_field(value, "wells")?
            .iter()
            .map(|w| {
                Ok(WellSummary {
                    well: well_field(w)?,
                    sites: keys::site_number(int_field(w, "sites")?).map_err(key_err("sites"))?,
                    images: u64::try_from(int_field(w, "images")?).map_err(|_| {
                        RecordError::Type {
                            field: "images",
                            expected: "a count",
                        }
                    })?,
                })
            })
            .collect::<Result<_, RecordError>>()?;
        Ok(Self {
            key: PlateKey {
                experiment: experiment_field(value)?,
                plate: plate_field(value)?,
            },
            provenance: provenance(value)?,
            wells,
        })
    }
}

/// One plate inside an experiment record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlateSummary {
    pub plate: u32,
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

impl ExperimentRecord {
    pub const SCHEMA: &'static str = "experiment_level";

    pub fn images(&self) -> u64 {
        self.plates.iter().map(|p| p.images).sum()
    }

    pub fn to_value(&self) -> Value {
        Value::record([
            ("experiment_id", Value::from(self.experiment.as_str())),
            ("cell_type", Value::from(self.cell_type.as_str())),
            (
                "plates",
                Value::Array(
                    self.plates
                        .iter()
                        .map(|p| {
                            Value::record([
                                ("plate_number", Value::from(p.plate)),
                                ("plate_barcode", Value::from(p.barcode.as_str())),
                                ("wells", Value::from(p.wells)),
                                ("images", Value::Int(p.images as i64)),
                            ])
                        })
                        .collect(),
                ),
            ),
            ("images", Value::Int(self.images() as i64)),
        ])
    }
}

/// An aggregate that stayed open past its timeout, and what it is missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncompleteRecord {
    /// `site`, `well`, `plate` or `experiment`.
    pub level: String,
    /// The aggregate's key (`EXP-1/3/B02/2`).
    pub key: String,
    pub experiment: ExperimentId,
    pub present: u32,
    /// `None` while the experiment's metadata has not arrived.
    pub expected: Option<u32>,
    /// What is missing, in words: `channel 5 of site 3 of well B02 of plate 1`.
    pub missing: Vec<String>,
    pub open_since_ms: i64,
}

impl IncompleteRecord {
    pub const SCHEMA: &'static str = "incomplete";

    pub fn description(&self) -> String {
        let what = match self.expected {
            Some(expected) => format!("{} of {} present", self.present, expected),
            None => format!("{} present, metadata not received", self.present),
        };
        format!(
            "{} {} is incomplete ({what}); missing: {}",
            self.level,
            self.key,
            self.missing.join(", ")
        )
    }

    pub fn to_value(&self) -> Value {
        Value::record([
            ("level", Value::from(self.level.as_str())),
            ("key", Value::from(self.key.as_str())),
            ("experiment_id", Value::from(self.experiment.as_str())),
            ("present", Value::from(self.present)),
            ("expected", self.expected.map_or(Value::Null, Value::from)),
            (
                "missing",
                Value::Array(
                    self.missing
                        .iter()
                        .map(|m| Value::from(m.as_str()))
                        .collect(),
                ),
            ),
            ("description", Value::from(self.description())),
            ("open_since_ms", Value::Int(self.open_since_ms)),
        ])
    }
}

/// Where a record came from on the log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Origin {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
}

/// A record Wellspring could not process, with the reason and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub dag: String,
    pub node: String,
    pub reason: String,
    pub origin: Option<Origin>,
    pub key: Option<String>,
    /// The record as far as it could be read: JSON when it parsed, else its text.
    pub record: Value,
    pub attempts: u32,
}

impl DeadLetter {
    pub const SCHEMA: &'static str = "dead_letter";

    pub fn to_value(&self) -> Value {
        let origin = self.origin.as_ref();
        Value::record([
            ("dag", Value::from(self.dag.as_str())),
            ("node", Value::from(self.node.as_str())),
            ("reason", Value::from(self.reason.as_str())),
            (
                "source_topic",
                origin.map_or(Value::Null, |o| Value::from(o.topic.as_str())),
            ),
            (
                "source_partition",
                origin.map_or(Value::Null, |o| Value::from(o.partition)),
            ),
            (
                "source_offset",
                origin.map_or(Value::Null, |o| Value::Int(o.offset as i64)),
            ),
            ("key", self.key.as_deref().map_or(Value::Null, Value::from)),
            ("record", self.record.clone()),
            ("attempts", Value::from(self.attempts)),
        ])
    }
}

/// Wellspring's built-in schemas: the imaging hierarchy and its bookkeeping records.
pub fn builtin_schemas() -> Vec<Schema> {
    vec![
        Schema::builtin(
            ChannelImage::SCHEMA,
            &[
                ("experiment_id", "string"),
                ("cell_type", "string"),
                ("plate_number", "int"),
                ("plate_barcode", "string"),
                ("well", "string"),
                ("site", "int"),
                ("channel", "int"),
                ("location", "string"),
            ],
        ),
        Schema::builtin(
            "plate_layout",
            &[
                ("plate_number", "int"),
                ("plate_barcode", "string?"),
                ("wells", "array<string>"),
            ],
        ),
        Schema::builtin(
            ExperimentLayout::SCHEMA,
            &[
                ("experiment_id", "string"),
                ("channels_per_site", "int"),
                ("sites_per_well", "int"),
                ("plates", "array<plate_layout>"),
            ],
        ),
        Schema::builtin(
            "channel_image",
            &[("channel", "int"), ("location", "string")],
        ),
        Schema::builtin(
            SiteRecord::SCHEMA,
            &[
                ("experiment_id", "string"),
                ("cell_type", "string"),
                ("plate_number", "int"),
                ("plate_barcode", "string"),
                ("well", "string"),
                ("site", "int"),
                ("channels", "array<channel_image>"),
            ],
        ),
        Schema::builtin(
            "site_images",
            &[("site", "int"), ("channels", "array<channel_image>")],
        ),
        Schema::builtin(
            WellRecord::SCHEMA,
            &[
                ("experiment_id", "string"),
                ("cell_type", "string"),
                ("plate_number", "int"),
                ("plate_barcode", "string"),
                ("well", "string"),
                ("sites", "array<site_images>"),
            ],
        ),
        Schema::builtin(
            "well_summary",
            &[("well", "string"), ("sites", "int"), ("images", "long")],
        ),
        Schema::builtin(
            PlateRecord::SCHEMA,
            &[
                ("experiment_id", "string"),
                ("cell_type", "string"),
                ("plate_number", "int"),
                ("plate_barcode", "string"),
                ("wells", "array<well_summary>"),
                ("images", "long"),
            ],
        ),
        Schema::builtin(
            "plate_summary",
            &[
                ("plate_number", "int"),
                ("plate_barcode", "string"),
                ("wells", "int"),
                ("images", "long"),
            ],
        ),
        Schema::builtin(
            ExperimentRecord::SCHEMA,
            &[
                ("experiment_id", "string"),
                ("cell_type", "string"),
                ("plates", "array<plate_summary>"),
                ("images", "long"),
            ],
        ),
        Schema::builtin(
            IncompleteRecord::SCHEMA,
            &[
                ("level", "string"),
                ("key", "string"),
                ("experiment_id", "string"),
                ("present", "int"),
                ("expected", "int?"),
                ("missing", "array<string>"),
                ("description", "string"),
                ("open_since_ms", "long"),
            ],
        ),
        Schema::builtin(
            DeadLetter::SCHEMA,
            &[
                ("dag", "string"),
                ("node", "string"),
                ("reason", "string"),
                ("source_topic", "string?"),
                ("source_partition", "int?"),
                ("source_offset", "long?"),
                ("key", "string?"),
                ("record", "json"),
                ("attempts", "int"),
            ],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::SchemaSet;
    use serde_json::json;

    fn image() -> ChannelImage {
        ChannelImage {
            key: "EXP-1/2/B02/3/5".parse().unwrap(),
            cell_type: "HUVEC".into(),
            plate_barcode: "BC-2".into(),
            location: "s3://lab/EXP-1/2/B02/3/5.tiff".into(),
        }
    }

    #[test]
    fn every_record_matches_its_builtin_schema() {
        let set = SchemaSet::with_builtins();
        let site = SiteRecord {
            key: image().key.site_key(),
            provenance: Provenance {
                cell_type: "HUVEC".into(),
                plate_barcode: "BC-2".into(),
            },
            channels: vec![ChannelRef {
                channel: 5,
                location: "x".into(),
            }],
        };
        let well = WellRecord {
            key: site.key.well_key(),
            provenance: site.provenance.clone(),
            sites: vec![SiteImages {
                site: 3,
                channels: site.channels.clone(),
            }],
        };
        let plate = PlateRecord {
            key: well.key.plate_key(),
            provenance: site.provenance.clone(),
            wells: vec![WellSummary {
                well: well.key.well,
                sites: 1,
                images: 1,
            }],
        };
        let experiment = ExperimentRecord {
            experiment: plate.key.experiment.clone(),
            cell_type: "HUVEC".into(),
            plates: vec![PlateSummary {
                plate: 2,
                barcode: "BC-2".into(),
                wells: 1,
                images: 1,
            }],
        };
        let incomplete = IncompleteRecord {
            level: "site".into(),
            key: site.key.to_string(),
            experiment: site.key.experiment.clone(),
            present: 5,
            expected: Some(6),
            missing: vec!["channel 5 of site 3 of well B02 of plate 2".into()],
            open_since_ms: 7,
        };
        let dead = DeadLetter {
            dag: "d".into(),
            node: "n".into(),
            reason: "r".into(),
            origin: Some(Origin {
                topic: "t".into(),
                partition: 1,
                offset: 9,
            }),
            key: None,
            record: Value::Null,
            attempts: 0,
        };
        for (schema, value) in [
            (ChannelImage::SCHEMA, image().to_value()),
            (SiteRecord::SCHEMA, site.to_value()),
            (WellRecord::SCHEMA, well.to_value()),
            (PlateRecord::SCHEMA, plate.to_value()),
            (ExperimentRecord::SCHEMA, experiment.to_value()),
            (IncompleteRecord::SCHEMA, incomplete.to_value()),
            (DeadLetter::SCHEMA, dead.to_value()),
        ] {
            let checked = set
                .validate_value(schema, &value)
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(checked, value, "{schema} round trip");
        }
        assert_eq!(
            ChannelImage::from_value(&image().to_value()).unwrap(),
            image()
        );
        assert_eq!(SiteRecord::from_value(&site.to_value()).unwrap(), site);
        assert_eq!(WellRecord::from_value(&well.to_value()).unwrap(), well);
        assert_eq!(PlateRecord::from_value(&plate.to_value()).unwrap(), plate);
    }

    #[test]
    fn layouts_expand_ranges_and_reject_nonsense() {
        let value = Value::from(&json!({
            "experiment_id": "EXP-1", "channels_per_site": 6, "sites_per_well": 4,
            "plates": [{"plate_number": 2, "wells": ["B02:O23"]},
                       {"plate_number": 1, "plate_barcode": "BC1", "wells": ["A01", "A02", "A01"]}]}));
        let layout = ExperimentLayout::from_value(&value).unwrap();
        assert_eq!(layout.plates[0].plate, 1);
        assert_eq!(layout.plates[0].wells.len(), 2);
        assert_eq!(layout.plates[1].wells.len(), 308);
        assert_eq!(layout.image_count(), (308 + 2) * 4 * 6);
        assert!(layout.plate(2).unwrap().has_well("O23".parse().unwrap()));
        assert!(!layout.plate(2).unwrap().has_well("P24".parse().unwrap()));
        let round = ExperimentLayout::from_value(&layout.to_value()).unwrap();
        assert_eq!(round, layout);

        for bad in [
            json!({"experiment_id": "E", "channels_per_site": 0, "sites_per_well": 4, "plates": []}),
            json!({"experiment_id": "E", "channels_per_site": 6, "sites_per_well": 4, "plates": []}),
            json!({"experiment_id": "E", "channels_per_site": 6, "sites_per_well": 4,
                   "plates": [{"plate_number": 1, "wells": ["O23:B02"]}]}),
            json!({"experiment_id": "E", "channels_per_site": 6, "sites_per_well": 4,
                   "plates": [{"plate_number": 1, "wells": ["Q99"]}]}),
            json!({"experiment_id": "E", "channels_per_site": 6, "sites_per_well": 4,
                   "plates": [{"plate_number": 1, "wells": ["A01"]}, {"plate_number": 1, "wells": ["A01"]}]}),
        ] {
            assert!(
                ExperimentLayout::from_value(&Value::from(&bad)).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn bad_channel_records_name_the_field() {
        let mut value = image().to_value();
        if let Value::Record(fields) = &mut value {
            fields.insert("well".into(), Value::from("Z99"));
        }
        let err = ChannelImage::from_value(&value).unwrap_err();
        assert!(err.to_string().starts_with("field well:"), "{err}");
    }
}
