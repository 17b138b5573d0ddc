//! Typed keys of the imaging hierarchy: experiment → plate → well → site → channel.
//!
//! Every key parses from and prints to one canonical text form, which is also the key of
//! the log records that carry it: `EXP-1/3/B02/2/5` is channel 5 of site 2 of well B02 of
//! plate 3 of experiment `EXP-1`. Parsing rejects anything that does not round-trip.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Why a key did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("experiment id is empty")]
    EmptyExperiment,
    #[error("experiment id is longer than {max} characters")]
    ExperimentTooLong { max: usize },
    #[error("experiment id {0:?} has a character outside letters, digits, '.', '_', ':' and '-'")]
    ExperimentCharacters(String),
    #[error("well {0:?} is not a well name like B02 (row letters A-Z or AA-AF, column 1-48)")]
    Well(String),
    #[error("{what} {value} is out of range (must be 1 to {max})")]
    OutOfRange {
        what: &'static str,
        value: i64,
        max: u64,
    },
    #[error("key {key:?} does not have the form {form}")]
    Form { key: String, form: &'static str },
}

/// An experiment id: 1 to 128 characters of `[A-Za-z0-9._:-]`.
///
/// Shared (`Arc<str>`) because every key below it repeats it: cloning a key never copies
/// the text.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ExperimentId(Arc<str>);

impl ExperimentId {
    pub const MAX_LEN: usize = 128;

    pub fn new(id: &str) -> Result<Self, KeyError> {
        if id.is_empty() {
            return Err(KeyError::EmptyExperiment);
        }
        if id.len() > Self::MAX_LEN {
            return Err(KeyError::ExperimentTooLong { max: Self::MAX_LEN });
        }
        if !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        {
            return Err(KeyError::ExperimentCharacters(id.to_owned()));
        }
        Ok(Self(Arc::from(id)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ExperimentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ExperimentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

impl TryFrom<String> for ExperimentId {
    type Error = KeyError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(&value)
    }
}

impl From<ExperimentId> for String {
    fn from(value: ExperimentId) -> Self {
        value.0.to_string()
    }
}

impl FromStr for ExperimentId {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A well position: row (0 = A) and column (1-based), as on a plate map.
///
/// Rows run A..Z then AA..AF (32 rows, enough for 1536-well plates); columns 1..=48.
/// The text form pads the column to two digits (`B02`, `AF48`); parsing accepts `B2` too
/// and prints it back as `B02`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WellId {
    row: u8,
    column: u8,
}

impl WellId {
    pub const MAX_ROWS: u8 = 32;
    pub const MAX_COLUMNS: u8 = 48;

    /// `row` is 0-based (0 = A), `column` 1-based.
    pub fn new(row: u8, column: u8) -> Option<Self> {
        (row < Self::MAX_ROWS && (1..=Self::MAX_COLUMNS).contains(&column))
            .then_some(Self { row, column })
    }

    pub fn row(self) -> u8 {
        self.row
    }

    pub fn column(self) -> u8 {
        self.column
    }

    /// A dense index (row-major over the largest plate), handy for bitsets.
    pub fn index(self) -> u16 {
        u16::from(self.row) * u16::from(Self::MAX_COLUMNS) + u16::from(self.column - 1)
    }

    /// The inverse of [`WellId::index`].
    pub fn from_index(index: u16) -> Option<Self> {
        let columns = u16::from(Self::MAX_COLUMNS);
        let row = u8::try_from(index / columns).ok()?;
        Self::new(row, (index % columns) as u8 + 1)
    }

    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let bad = || KeyError::Well(text.to_owned());
        let split = text
            .bytes()
            .position(|b| !b.is_ascii_uppercase())
            .ok_or_else(bad)?;
        let (letters, digits) = text.split_at(split);
        let row = match letters.as_bytes() {
            [a] => a - b'A',
            [b'A', b] if (b'A'..=b'F').contains(b) => 26 + (b - b'A'),
            _ => return Err(bad()),
        };
        if digits.is_empty() || digits.len() > 2 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let column: u8 = digits.parse().map_err(|_| bad())?;
        Self::new(row, column).ok_or_else(bad)
    }
}

impl fmt::Display for WellId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.row < 26 {
            write!(f, "{}{:02}", char::from(b'A' + self.row), self.column)
        } else {
            write!(f, "A{}{:02}", char::from(b'A' + self.row - 26), self.column)
        }
    }
}

impl fmt::Debug for WellId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for WellId {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for WellId {
    type Error = KeyError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<WellId> for String {
    fn from(value: WellId) -> Self {
        value.to_string()
    }
}

/// Plate numbers, site numbers and channel numbers are 1-based.
fn in_range(what: &'static str, value: i64, max: u64) -> Result<u32, KeyError> {
    if value >= 1 && (value as u64) <= max {
        Ok(value as u32)
    } else {
        Err(KeyError::OutOfRange { what, value, max })
    }
}

pub const MAX_PLATE: u64 = 1_000_000_000;
pub const MAX_SITE: u64 = 10_000;
pub const MAX_CHANNEL: u64 = 64;

pub fn plate_number(value: i64) -> Result<u32, KeyError> {
    in_range("plate number", value, MAX_PLATE)
}

pub fn site_number(value: i64) -> Result<u16, KeyError> {
    in_range("site number", value, MAX_SITE).map(|v| v as u16)
}

pub fn channel_number(value: i64) -> Result<u8, KeyError> {
    in_range("channel number", value, MAX_CHANNEL).map(|v| v as u8)
}

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub struct PlateKey {
    pub experiment: ExperimentId,
    pub plate: u32,
}

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub struct WellKey {
    pub experiment: ExperimentId,
    pub plate: u32,
    pub well: WellId,
}

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub struct SiteKey {
    pub experiment: ExperimentId,
    pub plate: u32,
    pub well: WellId,
    pub site: u16,
}

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub struct ChannelKey {
    pub experiment: ExperimentId,
    pub plate: u32,
    pub well: WellId,
    pub site: u16,
    pub channel: u8,
}

impl PlateKey {
    pub fn experiment_key(&self) -> &ExperimentId {
        &self.experiment
    }
}

impl WellKey {
    pub fn plate_key(&self) -> PlateKey {
        PlateKey {
            experiment: self.experiment.clone(),
            plate: self.plate,
        }
    }
}

impl SiteKey {
    pub fn well_key(&self) -> WellKey {
        WellKey {
            experiment: self.experiment.clone(),
            plate: self.plate,
            well: self.well,
        }
    }
}

impl ChannelKey {
    pub fn site_key(&self) -> SiteKey {
        SiteKey {
            experiment: self.experiment.clone(),
            plate: self.plate,
            well: self.well,
            site: self.site,
        }
    }
}

impl fmt::Display for PlateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.experiment, self.plate)
    }
}

impl fmt::Display for WellKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.experiment, self.plate, self.well)
    }
}

impl fmt::Display for SiteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}/{}",
            self.experiment, self.plate, self.well, self.site
        )
    }
}

impl fmt::Display for ChannelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}/{}/{}",
            self.experiment, self.plate, self.well, self.site, self.channel
        )
    }
}

fn parts<'k, const N: usize>(key: &'k str, form: &'static str) -> Result<[&'k str; N], KeyError> {
    let mut out = [""; N];
    let mut split = key.split('/');
    for slot in &mut out {
        *slot = split.next().ok_or_else(|| KeyError::Form {
            key: key.to_owned(),
            form,
        })?;
    }
    if split.next().is_some() {
        return Err(KeyError::Form {
            key: key.to_owned(),
            form,
        });
    }
    Ok(out)
}

fn number(text: &str, key: &str, form: &'static str) -> Result<i64, KeyError> {
    // Only canonical decimal: no sign, no leading zeros, so the text form round-trips.
    if text.is_empty()
        || text.len() > 10
        || text.starts_with('0')
        || !text.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(KeyError::Form {
            key: key.to_owned(),
            form,
        });
    }
    text.parse().map_err(|_| KeyError::Form {
        key: key.to_owned(),
        form,
    })
}

impl FromStr for PlateKey {
    type Err = KeyError;
    fn from_str(key: &str) -> Result<Self, Self::Err> {
        const FORM: &str = "EXPERIMENT/PLATE";
        let [e, p] = parts::<2>(key, FORM)?;
        Ok(Self {
            experiment: ExperimentId::new(e)?,
            plate: plate_number(number(p, key, FORM)?)?,
        })
    }
}

impl FromStr for WellKey {
    type Err = KeyError;
    fn from_str(key: &str) -> Result<Self, Self::Err> {
        const FORM: &str = "EXPERIMENT/PLATE/WELL";
        let [e, p, w] = parts::<3>(key, FORM)?;
        let well = WellId::parse(w)?;
        if well.to_string() != w {
            return Err(KeyError::Form {
                key: key.to_owned(),
                form: FORM,
            });
        }
        Ok(Self {
            experiment: ExperimentId::new(e)?,
            plate: plate_number(number(p, key, FORM)?)?,
            well,
        })
    }
}

impl FromStr for SiteKey {
    type Err = KeyError;
    fn from_str(key: &str) -> Result<Self, Self::Err> {
        const FORM: &str = "EXPERIMENT/PLATE/WELL/SITE";
        let (well_part, site) = key.rsplit_once('/').ok_or_else(|| KeyError::Form {
            key: key.to_owned(),
            form: FORM,
        })?;
        let well: WellKey = well_part.parse().map_err(|_| KeyError::Form {
            key: key.to_owned(),
            form: FORM,
        })?;
        Ok(Self {
            experiment: well.experiment,
            plate: well.plate,
            well: well.well,
            site: site_number(number(site, key, FORM)?)?,
        })
    }
}

impl FromStr for ChannelKey {
    type Err = KeyError;
    fn from_str(key: &str) -> Result<Self, Self::Err> {
        const FORM: &str = "EXPERIMENT/PLATE/WELL/SITE/CHANNEL";
        let (site_part, channel) = key.rsplit_once('/').ok_or_else(|| KeyError::Form {
            key: key.to_owned(),
            form: FORM,
        })?;
        let site: SiteKey = site_part.parse().map_err(|_| KeyError::Form {
            key: key.to_owned(),
            form: FORM,
        })?;
        Ok(Self {
            experiment: site.experiment,
            plate: site.plate,
            well: site.well,
            site: site.site,
            channel: channel_number(number(channel, key, FORM)?)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wells_parse_and_print() {
        assert_eq!(WellId::parse("B02").unwrap().to_string(), "B02");
        assert_eq!(WellId::parse("B2").unwrap().to_string(), "B02");
        assert_eq!(WellId::parse("P24").unwrap().to_string(), "P24");
        assert_eq!(WellId::parse("AF48").unwrap().to_string(), "AF48");
        for bad in [
            "", "B", "02", "b02", "B00", "B49", "AG01", "B002", "B-1", "ZZ01", "B02 ",
        ] {
            assert!(WellId::parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn experiment_ids_are_checked() {
        assert!(ExperimentId::new("EXP-2026.11_a:b").is_ok());
        assert_eq!(ExperimentId::new(""), Err(KeyError::EmptyExperiment));
        assert!(ExperimentId::new("has/slash").is_err());
        assert!(ExperimentId::new("has space").is_err());
        assert!(ExperimentId::new(&"x".repeat(129)).is_err());
    }

    #[test]
    fn keys_reject_non_canonical_numbers() {
        assert!("E/01/B02".parse::<WellKey>().is_err());
        assert!("E/1/B2".parse::<WellKey>().is_err());
        assert!("E/0/B02".parse::<WellKey>().is_err());
        assert!("E/1/B02/0".parse::<SiteKey>().is_err());
        assert!("E/1/B02/1/65".parse::<ChannelKey>().is_err());
        assert!("E/1/B02/1/6/7".parse::<ChannelKey>().is_err());
    }

    proptest! {
        #[test]
        fn channel_keys_round_trip(
            exp in "[A-Za-z0-9._:-]{1,20}",
            plate in 1u32..100_000,
            row in 0u8..32, column in 1u8..=48,
            site in 1u16..=100, channel in 1u8..=64,
        ) {
            let key = ChannelKey {
                experiment: ExperimentId::new(&exp).unwrap(),
                plate,
                well: WellId::new(row, column).unwrap(),
                site,
                channel,
            };
            let text = key.to_string();
            prop_assert_eq!(text.parse::<ChannelKey>().unwrap(), key.clone());
            prop_assert_eq!(WellId::from_index(key.well.index()), Some(key.well));
            prop_assert_eq!(key.site_key().to_string().parse::<SiteKey>().unwrap(), key.site_key());
            prop_assert_eq!(key.site_key().well_key().to_string().parse::<WellKey>().unwrap(), key.site_key().well_key());
        }

        #[test]
        fn well_parse_never_panics(text in "\\PC{0,6}") {
            let _ = WellId::parse(&text);
        }
    }
}
