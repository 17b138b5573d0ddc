//! The key fields the records share, as serde reads and writes them (`#[serde(with =
//! "…")]`): each one is checked on the way in (an experiment id's characters, a well's
//! name, a plate, site or channel number's range), so a record that reads has valid keys.

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serializer};

use crate::keys::{self, ExperimentId, KeyError, WellId};

/// Reads a string in place (records are read from a [`Value`](crate::Value), which lends
/// its strings) and parses it.
fn parse_str<'de, D: Deserializer<'de>, T>(
    d: D,
    parse: impl FnOnce(&str) -> Result<T, KeyError>,
) -> Result<T, D::Error> {
    parse(<&str>::deserialize(d)?).map_err(de::Error::custom)
}

pub(super) mod experiment_id {
    use super::*;

    pub fn serialize<S: Serializer>(id: &ExperimentId, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(id.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ExperimentId, D::Error> {
        parse_str(d, ExperimentId::new)
    }
}

pub(super) mod well {
    use super::*;

    pub fn serialize<S: Serializer>(well: &WellId, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(well)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<WellId, D::Error> {
        parse_str(d, WellId::parse)
    }
}

/// The 1-based numbers, read as integers and checked against their range.
macro_rules! number_field {
    ($name:ident, $ty:ty, $check:path) => {
        pub(super) mod $name {
            use super::*;

            pub fn serialize<S: Serializer>(number: &$ty, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_i64(i64::from(*number))
            }

            pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
                $check(i64::deserialize(d)?).map_err(de::Error::custom)
            }
        }
    };
}

number_field!(plate_number, u32, keys::plate_number);
number_field!(site, u16, keys::site_number);
number_field!(channel, u8, keys::channel_number);
