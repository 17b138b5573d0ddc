//! The file-name conventions of the imagers: what a file's name (and the folders above
//! it) say about the image in it.
//!
//! | convention    | example                                         | where the rest comes from |
//! |---------------|-------------------------------------------------|---------------------------|
//! | `phenix`      | `r02c05f03p01-ch2sk1fk1fl1.tiff`                | barcode: a folder `BARCODE__date…` above |
//! | `imagexpress` | `B05_s3_w2.tif` (optional `PLATE_` prefix, GUID) | `TimePoint_N/`, `ZStep_N/` folders; barcode: the prefix, else the plate folder |
//! | `cv8000`      | `PLATE_B05_T0001F003L01A01Z01C02.tif`            | barcode: the prefix |
//! | `rxrx`        | `B05_s3_w2.png` under `Plate1/`                  | plate number: `PlateN`; barcode: `EXPERIMENT_PlateN` |
//! | a pattern     | any regular expression with named groups         | its groups |
//!
//! A name gives a well, a site (field) and a channel, and may give a z-plane, a time
//! point, a plate number and a barcode. Files that are not images (`.xml`, `.HTD`,
//! thumbnails…) are recognised as such and passed over; an image whose name does not fit
//! is a [`NameError`], which the scan reports and counts.

use std::path::Path;

use regex::Regex;
use wellspring_protocol::{WellId, keys};

use crate::well::{normalise_well, well_at};

/// What a name says about its image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageName {
    pub well: WellId,
    /// The site (field of view), 1-based.
    pub site: u16,
    pub channel: u8,
    /// The z-plane, when the name has one.
    pub plane: Option<u32>,
    /// The time point, when the name or its folder has one.
    pub timepoint: Option<u32>,
    /// The plate number, when the layout has one (`Plate3/`, a pattern's `plate` group).
    pub plate: Option<u32>,
    /// The plate's barcode, when the layout has one.
    pub barcode: Option<String>,
}

/// What a file is, read by a convention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recognised {
    Image(ImageName),
    /// Not an image (metadata, a thumbnail, a hidden file): passed over silently.
    NotAnImage,
}

/// An image file whose name does not fit the convention.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{path}: does not match the {convention} convention (e.g. {example})")]
    NoMatch {
        path: String,
        convention: &'static str,
        example: &'static str,
    },
    #[error("{path}: {field} {reason}")]
    Field {
        path: String,
        field: &'static str,
        reason: String,
    },
}

/// Why a user's pattern cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("--pattern is not a regular expression: {0}")]
    Syntax(String),
    #[error(
        "--pattern needs the named groups (?P<well>…) or (?P<row>…) and (?P<column>…), and (?P<channel>…); (?P<site>…), (?P<plane>…), (?P<timepoint>…), (?P<plate>…) and (?P<barcode>…) are optional"
    )]
    Groups,
}

/// A built-in convention or a user's pattern.
#[derive(Debug, Clone)]
pub enum Convention {
    Phenix,
    ImageXpress,
    Cv8000,
    Rxrx,
    Pattern(UserPattern),
}

/// A regular expression with named groups, matched against the file name, or against the
/// path below the folder (with `/` between folders) when it contains a `/`.
#[derive(Debug, Clone)]
pub struct UserPattern {
    regex: Regex,
    whole_path: bool,
}

impl UserPattern {
    pub fn new(text: &str) -> Result<Self, PatternError> {
        let regex = Regex::new(text).map_err(|e| PatternError::Syntax(e.to_string()))?;
        let names: Vec<&str> = regex.capture_names().flatten().collect();
        let has = |n: &str| names.contains(&n);
        if !(has("well") || has("row") && has("column")) || !has("channel") {
            return Err(PatternError::Groups);
        }
        Ok(Self {
            regex,
            whole_path: text.contains('/'),
        })
    }
}

/// One compiled regular expression per built-in convention, made once.
fn built_in(pattern: &'static str, cell: &'static std::sync::OnceLock<Regex>) -> &'static Regex {
    // The patterns are constants checked by the tests: they always compile.
    #[allow(clippy::expect_used)]
    cell.get_or_init(|| Regex::new(pattern).expect("a built-in convention's pattern compiles"))
}

static PHENIX: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
static IMAGEXPRESS: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
static CV8000: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
static RXRX: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();

const PHENIX_PATTERN: &str = r"(?i)^r(?P<row>\d{1,2})c(?P<column>\d{1,2})f(?P<site>\d{1,4})p(?P<plane>\d{1,3})-ch(?P<channel>\d{1,2})sk(?P<timepoint>\d{1,5})fk\d+fl\d+\.tiff?$";
const IMAGEXPRESS_PATTERN: &str = r"(?i)^(?:(?P<barcode>.+?)_)??(?P<well>[a-z]{1,2}\d{1,3})(?:_s(?P<site>\d{1,4}))?(?:_w(?P<channel>\d{1,2}))?(?P<guid>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})?\.tiff?$";
const CV8000_PATTERN: &str = r"(?i)^(?P<barcode>.+)_(?P<well>[a-z]{1,2}\d{2,3})_T(?P<timepoint>\d{1,5})F(?P<site>\d{1,4})L\d{1,3}A\d{1,3}Z(?P<plane>\d{1,3})C(?P<channel>\d{1,2})\.tiff?$";
const RXRX_PATTERN: &str =
    r"(?i)^(?P<well>[a-z]{1,2}\d{1,3})_s(?P<site>\d{1,4})_w(?P<channel>\d{1,2})\.png$";

impl Convention {
    /// The convention `name` (`phenix`, `imagexpress`, `cv8000` or `cv7000`, `rxrx`).
    pub fn named(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "phenix" | "opera" | "operetta" => Some(Self::Phenix),
            "imagexpress" => Some(Self::ImageXpress),
            "cv8000" | "cv7000" | "yokogawa" => Some(Self::Cv8000),
            "rxrx" => Some(Self::Rxrx),
            _ => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Phenix => "phenix",
            Self::ImageXpress => "imagexpress",
            Self::Cv8000 => "cv8000",
            Self::Rxrx => "rxrx",
            Self::Pattern(_) => "--pattern",
        }
    }

    pub fn example(&self) -> &'static str {
        match self {
            Self::Phenix => "r02c05f03p01-ch2sk1fk1fl1.tiff",
            Self::ImageXpress => "TimePoint_1/B05_s3_w2.tif",
            Self::Cv8000 => "PLATE_B05_T0001F003L01A01Z01C02.tif",
            Self::Rxrx => "Plate1/B05_s3_w2.png",
            Self::Pattern(_) => "a name your pattern matches",
        }
    }

    /// Reads the file at `relative` (its path below the scanned folder).
    pub fn read(&self, relative: &Path) -> Result<Recognised, NameError> {
        let path = relative.to_string_lossy().replace('\\', "/");
        let mut parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let Some(file) = parts.pop() else {
            return Ok(Recognised::NotAnImage);
        };
        let folders = parts;
        if file.starts_with('.') || !is_image(file) {
            return Ok(Recognised::NotAnImage);
        }
        let no_match = || NameError::NoMatch {
            path: path.clone(),
            convention: self.name(),
            example: self.example(),
        };
        let field = |field: &'static str, reason: String| NameError::Field {
            path: path.clone(),
            field,
            reason,
        };
        let (regex, subject) = match self {
            Self::Phenix => (built_in(PHENIX_PATTERN, &PHENIX), file),
            Self::ImageXpress => {
                if file.to_ascii_lowercase().contains("_thumb") {
                    return Ok(Recognised::NotAnImage);
                }
                (built_in(IMAGEXPRESS_PATTERN, &IMAGEXPRESS), file)
            }
            Self::Cv8000 => (built_in(CV8000_PATTERN, &CV8000), file),
            Self::Rxrx => (built_in(RXRX_PATTERN, &RXRX), file),
            Self::Pattern(p) => (&p.regex, if p.whole_path { path.as_str() } else { file }),
        };
        let captures = regex.captures(subject).ok_or_else(no_match)?;
        let group = |name: &str| captures.name(name).map(|m| m.as_str());
        let number = |name: &'static str| -> Result<Option<u32>, NameError> {
            group(name)
                .map(|text| {
                    text.parse::<u32>()
                        .map_err(|_| field(name, format!("{text:?} is not a number")))
                })
                .transpose()
        };
        let well = match group("well") {
            Some(text) => normalise_well(text).map_err(|e| field("well", e.to_string()))?,
            None => {
                let (Some(row), Some(column)) = (group("row"), group("column")) else {
                    return Err(no_match());
                };
                let row = match row.parse::<u32>() {
                    Ok(n) => n,
                    // A pattern may give the row as letters (`B`).
                    Err(_) => normalise_well(&format!("{row}1"))
                        .map(|w| u32::from(w.row()) + 1)
                        .map_err(|e| field("row", e.to_string()))?,
                };
                let column: u32 = column
                    .parse()
                    .map_err(|_| field("column", format!("{column:?} is not a number")))?;
                well_at(row, column).map_err(|e| field("well", e.to_string()))?
            }
        };
        let site = match number("site")? {
            None => 1,
            Some(n) => keys::site_number(i64::from(n)).map_err(|e| field("site", e.to_string()))?,
        };
        let channel = match number("channel")? {
            None => 1,
            Some(n) => {
                keys::channel_number(i64::from(n)).map_err(|e| field("channel", e.to_string()))?
            }
        };
        let mut name = ImageName {
            well,
            site,
            channel,
            plane: number("plane")?,
            timepoint: number("timepoint")?,
            plate: number("plate")?,
            barcode: group("barcode").map(str::to_owned),
        };
        if let Some(plate) = name.plate {
            keys::plate_number(i64::from(plate)).map_err(|e| field("plate", e.to_string()))?;
        }
        self.read_folders(&folders, &mut name)
            .map_err(|(f, reason)| field(f, reason))?;
        Ok(Recognised::Image(name))
    }

    /// What the folders above the file add: time points, z-steps, plates, barcodes.
    fn read_folders(
        &self,
        folders: &[&str],
        name: &mut ImageName,
    ) -> Result<(), (&'static str, String)> {
        let numbered = |prefix: &str, folder: &str| -> Option<u32> {
            let lower = folder.to_ascii_lowercase();
            lower.strip_prefix(prefix)?.parse().ok()
        };
        match self {
            Self::Phenix => {
                // Harmony exports a measurement as `BARCODE__2024-01-31T10_00_00-Measurement 1/Images/`.
                if name.barcode.is_none() {
                    name.barcode = folders.iter().rev().find_map(|f| {
                        f.split_once("__")
                            .map(|(barcode, _)| barcode.to_owned())
                            .filter(|b| !b.is_empty())
                    });
                }
            }
            Self::ImageXpress => {
                let mut plate_folder = None;
                for (i, folder) in folders.iter().enumerate() {
                    if let Some(t) = numbered("timepoint_", folder) {
                        name.timepoint = Some(t);
                        plate_folder = i.checked_sub(1).map(|p| folders[p]);
                    } else if let Some(z) = numbered("zstep_", folder) {
                        name.plane = Some(z);
                    }
                }
                if name.barcode.is_none() {
                    name.barcode = plate_folder.map(str::to_owned);
                }
            }
            Self::Cv8000 | Self::Pattern(_) => {}
            Self::Rxrx => {
                let at = folders
                    .iter()
                    .rposition(|f| numbered("plate", f).is_some())
                    .ok_or((
                        "plate",
                        "folder PlateN is missing above the image".to_owned(),
                    ))?;
                let plate = numbered("plate", folders[at]).unwrap_or(1);
                keys::plate_number(i64::from(plate)).map_err(|e| ("plate", e.to_string()))?;
                name.plate = Some(plate);
                if name.barcode.is_none() {
                    name.barcode = Some(match at.checked_sub(1) {
                        Some(e) => format!("{}_{}", folders[e], folders[at]),
                        None => folders[at].to_owned(),
                    });
                }
            }
        }
        Ok(())
    }
}

fn is_image(file: &str) -> bool {
    let lower = file.to_ascii_lowercase();
    [".tif", ".tiff", ".png"]
        .iter()
        .any(|ext| lower.ends_with(ext))
}

#[cfg(test)]
#[path = "convention_tests.rs"]
mod tests;
