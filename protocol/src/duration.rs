//! Durations, read the same way everywhere: in a DAG spec, in the task store's JSON bodies
//! and in every command-line flag.
//!
//! One rule: a JSON number is milliseconds (the reference task-queue API sends
//! `"duration": 30000`); a text duration carries its unit (`250ms`, `30s`, `5m`, `2h`,
//! `1d`, also `1.5s` or `1h 30m`); text without a unit (`"30000"`) is refused, since
//! nothing says whether it means seconds or milliseconds. The text grammar is
//! [`humantime`]'s.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde_json::Value as Json;

/// The longest duration accepted (about 31 years): anything longer is a typo.
pub const MAX: Duration = Duration::from_secs(1_000_000_000);

/// Why a value is not a duration; the message says how to write one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error(
        "{text:?} has no unit: write it with one, like {text}ms or {text}s (a text duration carries its unit: ms, s, m, h or d; a JSON number is milliseconds)"
    )]
    Unitless { text: String },
    #[error("{text:?} is not a duration like 250ms, 30s, 5m, 2h or 1d: {reason}")]
    Invalid { text: String, reason: String },
    #[error("{0} is longer than the longest duration accepted (1000000000s)")]
    TooLong(String),
    #[error(
        "{0} is not a duration: a number is a whole number of milliseconds (or write text like \"30s\")"
    )]
    NotMillis(String),
    #[error("must be a duration like \"30s\" or a number of milliseconds, found {0}")]
    WrongType(&'static str),
}

/// A text duration: a number and its unit, e.g. `250ms`, `30s`, `5m`, `2h`, `1d`.
pub fn parse_text(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    if text.chars().any(|c| c.is_ascii_digit())
        && text.chars().all(|c| c.is_ascii_digit() || c == '.')
    {
        return Err(DurationError::Unitless {
            text: text.to_owned(),
        });
    }
    let duration = humantime::parse_duration(text).map_err(|e| DurationError::Invalid {
        text: text.to_owned(),
        reason: e.to_string(),
    })?;
    bounded(duration, || format!("{text:?}"))
}

/// A number of milliseconds.
pub fn from_millis(ms: u64) -> Result<Duration, DurationError> {
    bounded(Duration::from_millis(ms), || ms.to_string())
}

/// A JSON value: a whole number of milliseconds, or a text duration with its unit.
pub fn from_json(value: &Json) -> Result<Duration, DurationError> {
    match value {
        Json::Number(n) => n
            .as_u64()
            .ok_or_else(|| DurationError::NotMillis(n.to_string()))
            .and_then(from_millis),
        Json::String(text) => parse_text(text),
        Json::Null => Err(DurationError::WrongType("null")),
        Json::Bool(_) => Err(DurationError::WrongType("a boolean")),
        Json::Array(_) => Err(DurationError::WrongType("a list")),
        Json::Object(_) => Err(DurationError::WrongType("an object")),
    }
}

fn bounded(duration: Duration, shown: impl FnOnce() -> String) -> Result<Duration, DurationError> {
    if duration > MAX {
        Err(DurationError::TooLong(shown()))
    } else {
        Ok(duration)
    }
}

/// Reads a duration by the rule above from any serde format (for `Deserialize` impls).
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    deserializer.deserialize_any(DurationVisitor)
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration: a number of milliseconds, or text with its unit like \"30s\"")
    }

    fn visit_u64<E: de::Error>(self, ms: u64) -> Result<Duration, E> {
        from_millis(ms).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Duration, E> {
        u64::try_from(n)
            .map_err(|_| DurationError::NotMillis(n.to_string()))
            .and_then(from_millis)
            .map_err(E::custom)
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Duration, E> {
        Err(E::custom(DurationError::NotMillis(n.to_string())))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
        parse_text(text).map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_carries_its_unit() {
        for (text, ms) in [
            ("250ms", 250),
            ("30s", 30_000),
            ("5m", 300_000),
            ("2h", 7_200_000),
            ("1.5s", 1_500),
            ("1d", 86_400_000),
            ("1h 30m", 5_400_000),
            (" 10m ", 600_000),
        ] {
            assert_eq!(parse_text(text), Ok(Duration::from_millis(ms)), "{text}");
        }
    }

    #[test]
    fn text_without_a_unit_is_refused_with_how_to_write_it() {
        for text in ["30000", "1.5", "0"] {
            let error = parse_text(text).unwrap_err();
            assert_eq!(
                error,
                DurationError::Unitless {
                    text: text.to_owned()
                }
            );
            let message = error.to_string();
            assert!(
                message.contains("has no unit") && message.contains(&format!("{text}ms")),
                "{message}"
            );
        }
    }

    #[test]
    fn nonsense_is_refused() {
        for text in ["5 parsecs", "x", "", "-1s", "1e30h", "99999999999d"] {
            assert!(parse_text(text).is_err(), "{text}");
        }
    }

    #[test]
    fn a_json_number_is_milliseconds_and_a_string_needs_its_unit() {
        assert_eq!(from_json(&json!(30000)), Ok(Duration::from_secs(30)));
        assert_eq!(from_json(&json!("30s")), Ok(Duration::from_secs(30)));
        assert!(matches!(
            from_json(&json!("30000")),
            Err(DurationError::Unitless { .. })
        ));
        for bad in [json!(-1), json!(1.5), json!(true), json!(null), json!([1])] {
            assert!(from_json(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn serde_reads_by_the_same_rule() {
        #[derive(serde::Deserialize)]
        struct Body {
            #[serde(deserialize_with = "deserialize")]
            duration: Duration,
        }
        let read = |text: &str| serde_json::from_str::<Body>(text).map(|b| b.duration);
        assert_eq!(
            read(r#"{"duration": 30000}"#).unwrap(),
            Duration::from_secs(30)
        );
        assert_eq!(
            read(r#"{"duration": "30s"}"#).unwrap(),
            Duration::from_secs(30)
        );
        let unitless = read(r#"{"duration": "30000"}"#).unwrap_err().to_string();
        assert!(unitless.contains("has no unit"), "{unitless}");
        assert!(read(r#"{"duration": -5}"#).is_err());
        assert!(read(r#"{"duration": 2.5}"#).is_err());
    }
}
