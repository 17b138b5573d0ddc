//! What several commands' flags share: clap value parsers that refuse a bad value with
//! clap's usual message (durations by the one rule of `wellspring_protocol::duration`,
//! fractions, `NAME=VALUE` pairs), and the experiment shape `demo` and `generate` make up.

use std::time::Duration;

use clap::Args;
use wellspring_protocol::duration::{self, DurationError};

use crate::workload::WorkloadConfig;

/// A duration with its unit: `250ms`, `30s`, `5m`, `2h`, `1d`.
pub fn duration(text: &str) -> Result<Duration, DurationError> {
    duration::parse_text(text)
}

/// A duration of at least `min`.
pub fn duration_at_least(
    min: Duration,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |text| {
        let value = duration::parse_text(text).map_err(|e| e.to_string())?;
        if value < min {
            return Err(format!("must be at least {}", written(min)));
        }
        Ok(value)
    }
}

/// `3s` or `250ms`: a bound as a person writes it.
fn written(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// A point in time as milliseconds since the Unix epoch: a duration ago (`2h`: two
/// hours before now) or a UTC time (`2026-12-02T03:00:00Z`, or without the `Z`).
pub fn since(text: &str) -> Result<i64, String> {
    since_at(text, std::time::SystemTime::now())
}

fn since_at(text: &str, now: std::time::SystemTime) -> Result<i64, String> {
    let text = text.trim();
    let time = match duration::parse_text(text) {
        Ok(ago) => now.checked_sub(ago).ok_or("that is before 1970")?,
        Err(_) => humantime::parse_rfc3339_weak(text).map_err(|_| {
            format!(
                "{text:?} is neither a duration ago (`2h`) nor a UTC time (`2026-12-02T03:00:00Z`)"
            )
        })?,
    };
    let since_epoch = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| "that is before 1970".to_owned())?;
    i64::try_from(since_epoch.as_millis()).map_err(|_| "that is too far in the future".into())
}

/// A fraction from 0 to 1.
pub fn fraction(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("must be between 0 and 1, not {value}"))
    }
}

/// `NAME=VALUE`.
pub fn pair(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("{text:?} must look like name=value"))
}

/// A whole number of at least 1.
pub fn count() -> clap::builder::RangedU64ValueParser<u32> {
    clap::builder::RangedU64ValueParser::new().range(1..=u64::from(u32::MAX))
}

/// What `demo` and `generate` share about the experiment they make up.
#[derive(Args)]
pub struct WorkloadArgs {
    /// Wells in use per plate (308: the interior of a 384-well plate).
    #[arg(long, default_value_t = 308)]
    wells: usize,
    /// Sites imaged per well.
    #[arg(long, default_value_t = 4)]
    sites: u16,
    /// Channels imaged per site.
    #[arg(long, default_value_t = 6)]
    channels: u8,
    /// Fraction of images sent twice (0 to 1).
    #[arg(long, default_value_t = 0.02, value_parser = fraction)]
    duplicates: f64,
    /// Malformed records mixed into the images (they go to the dead-letter topic).
    #[arg(long, default_value_t = 0)]
    pub bad_records: usize,
    /// Images published per second (default: as fast as the log takes them).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seed of the image order and repeats (and of the demo's simulated failures).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

impl WorkloadArgs {
    pub fn config(&self, experiment: String, plates: u32) -> WorkloadConfig {
        WorkloadConfig {
            experiment,
            plates,
            wells: self.wells,
            sites: self.sites,
            channels: self.channels,
            duplicates: self.duplicates,
            bad_records: self.bad_records,
            seed: self.seed,
            ..WorkloadConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_their_unit_and_bounds_hold() {
        assert_eq!(duration("90s"), Ok(Duration::from_secs(90)));
        let unitless = duration("30").unwrap_err().to_string();
        assert!(unitless.contains("has no unit"), "{unitless}");
        let at_least = duration_at_least(Duration::from_secs(1));
        assert_eq!(at_least("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(at_least("999ms"), Err("must be at least 1s".into()));
        assert!(at_least("10").unwrap_err().contains("has no unit"));
    }

    #[test]
    fn since_is_a_duration_ago_or_a_utc_time() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(10_000);
        assert_eq!(since_at("2h", now), Ok(10_000_000 - 7_200_000));
        assert_eq!(since_at("90s", now), Ok(10_000_000 - 90_000));
        assert_eq!(
            since_at("1970-01-01T00:01:40Z", now),
            Ok(100_000),
            "a UTC time"
        );
        assert_eq!(since_at("1970-01-01T00:01:40", now), Ok(100_000));
        assert!(since_at("4h", now).unwrap_err().contains("before 1970"));
        let vague = since_at("yesterday", now).unwrap_err();
        assert!(vague.contains("neither a duration ago"), "{vague}");
    }

    #[test]
    fn fractions_pairs_and_counts() {
        assert_eq!(fraction("0.25"), Ok(0.25));
        assert_eq!(fraction("1"), Ok(1.0));
        assert!(fraction("2").unwrap_err().contains("between 0 and 1"));
        assert!(fraction("-0.1").is_err());
        assert!(fraction("lots").is_err());
        assert_eq!(pair("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(pair("novalue").is_err());
        assert!(pair("=x").is_err());
        use clap::builder::TypedValueParser;
        let command = clap::Command::new("t");
        let parse = |text: &str| count().parse_ref(&command, None, std::ffi::OsStr::new(text));
        assert_eq!(parse("3").ok(), Some(3));
        assert!(parse("0").is_err());
    }
}
