//! Plate maps: the experiment's layout (which wells of which plates hold samples, how many
//! sites each) from a CSV file, in either of the two shapes labs have:
//!
//! - CellProfiler's LoadData: `Metadata_Plate, Metadata_Well, Metadata_Site` (one row per
//!   site; `FileName_*` columns, one per channel, give the channel count);
//! - the RxRx datasets': `experiment, plate, well, site` (and `cell_type`).
//!
//! A plate is a number (`3`) or a barcode (`BC-0042`); barcodes are numbered 1, 2, …
//! in sorted order, and an image finds its plate number through its barcode.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use wellspring_protocol::{WellId, keys};

use crate::well::normalise_well;

/// Why a plate map cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum PlateMapError {
    #[error("cannot read the plate map {path}: {reason}")]
    Read { path: String, reason: String },
    #[error(
        "the plate map {path} has neither Metadata_Plate, Metadata_Well (CellProfiler LoadData) nor plate, well (rxrx) columns; its header is: {header}"
    )]
    Columns { path: String, header: String },
    #[error("the plate map {path}, line {line}: {reason}")]
    Row {
        path: String,
        line: u64,
        reason: String,
    },
    #[error("the plate map {path} has no row for experiment {experiment} (it has: {found})")]
    NoRows {
        path: String,
        experiment: String,
        found: String,
    },
}

/// One plate of a plate map.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MappedPlate {
    pub barcode: Option<String>,
    pub wells: BTreeSet<WellId>,
    /// The highest site number of any of its rows (1 when the map has no site column).
    pub sites: u16,
    pub cell_type: Option<String>,
}

/// A plate map, read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PlateMap {
    /// By plate number.
    pub plates: BTreeMap<u32, MappedPlate>,
    /// Channels per site, when the map says (LoadData's `FileName_*` columns).
    pub channels: Option<u8>,
}

impl PlateMap {
    /// The plate number of `barcode`, when the map names plates by barcode.
    pub fn plate_of(&self, barcode: &str) -> Option<u32> {
        self.plates
            .iter()
            .find(|(_, p)| p.barcode.as_deref() == Some(barcode))
            .map(|(n, _)| *n)
    }

    /// Reads the map at `path`; rxrx-style rows of other experiments than `experiment` are
    /// left out (one metadata file covers a whole dataset).
    pub fn read(path: &Path, experiment: &str) -> Result<Self, PlateMapError> {
        let name = path.display().to_string();
        let read_error = |e: csv::Error| PlateMapError::Read {
            path: name.clone(),
            reason: e.to_string(),
        };
        let mut reader = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .flexible(false)
            .from_path(path)
            .map_err(read_error)?;
        let header = reader.headers().map_err(read_error)?.clone();
        let column = |names: &[&str]| {
            header
                .iter()
                .position(|h| names.iter().any(|n| h.eq_ignore_ascii_case(n)))
        };
        let (plate_at, well_at, site_at) = match (
            column(&["Metadata_Plate"]),
            column(&["Metadata_Well"]),
            column(&["plate"]),
            column(&["well"]),
        ) {
            (Some(p), Some(w), _, _) => (p, w, column(&["Metadata_Site"])),
            (_, _, Some(p), Some(w)) => (p, w, column(&["site"])),
            _ => {
                return Err(PlateMapError::Columns {
                    path: name,
                    header: header.iter().collect::<Vec<_>>().join(", "),
                });
            }
        };
        let experiment_at = column(&["experiment", "Metadata_Experiment"]);
        let cell_type_at = column(&["cell_type", "Metadata_CellType", "Metadata_Cell_Type"]);
        let channels = header
            .iter()
            .filter(|h| h.to_ascii_lowercase().starts_with("filename_"))
            .count();
        let channels = if channels == 0 {
            None
        } else {
            Some(
                keys::channel_number(channels as i64).map_err(|e| PlateMapError::Row {
                    path: name.clone(),
                    line: 1,
                    reason: e.to_string(),
                })?,
            )
        };
        // By the plate's text as written: numbers and barcodes are told apart at the end.
        let mut by_text: BTreeMap<String, MappedPlate> = BTreeMap::new();
        let mut experiments = BTreeSet::new();
        for row in reader.records() {
            let row = row.map_err(read_error)?;
            let line = row.position().map_or(0, |p| p.line());
            let bad = |reason: String| PlateMapError::Row {
                path: name.clone(),
                line,
                reason,
            };
            if let Some(e) = experiment_at.and_then(|i| row.get(i)) {
                experiments.insert(e.to_owned());
                if e != experiment {
                    continue;
                }
            }
            let plate = row.get(plate_at).unwrap_or_default();
            if plate.is_empty() {
                return Err(bad("the plate is empty".into()));
            }
            let well = normalise_well(row.get(well_at).unwrap_or_default())
                .map_err(|e| bad(e.to_string()))?;
            let site = match site_at.and_then(|i| row.get(i)) {
                None | Some("") => 1,
                Some(text) => {
                    let n: i64 = text
                        .parse()
                        .map_err(|_| bad(format!("site {text:?} is not a number")))?;
                    keys::site_number(n).map_err(|e| bad(e.to_string()))?
                }
            };
            let entry = by_text.entry(plate.to_owned()).or_default();
            entry.wells.insert(well);
            entry.sites = entry.sites.max(site);
            if entry.cell_type.is_none() {
                entry.cell_type = cell_type_at
                    .and_then(|i| row.get(i))
                    .filter(|c| !c.is_empty())
                    .map(str::to_owned);
            }
        }
        if by_text.is_empty() {
            return Err(PlateMapError::NoRows {
                path: name,
                experiment: experiment.to_owned(),
                found: experiments.into_iter().collect::<Vec<_>>().join(", "),
            });
        }
        let numbered = by_text
            .keys()
            .all(|t| t.parse::<u32>().is_ok_and(|n| n >= 1));
        let mut plates = BTreeMap::new();
        for (i, (text, mut plate)) in by_text.into_iter().enumerate() {
            let number = if numbered {
                text.parse::<u32>().unwrap_or(1)
            } else {
                plate.barcode = Some(text);
                i as u32 + 1
            };
            plates.insert(number, plate);
        }
        Ok(Self { plates, channels })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("wellspring-platemap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_loaddata_map_by_barcode() {
        let path = write(
            "loaddata.csv",
            "Metadata_Plate,Metadata_Well,Metadata_Site,FileName_DNA,FileName_RNA\n\
             BC-2,b2,1,x,y\nBC-2,B02,2,x,y\nBC-1,A1,1,x,y\nBC-2,c03,1,x,y\n",
        );
        let map = PlateMap::read(&path, "EXP-1").unwrap();
        assert_eq!(map.channels, Some(2));
        assert_eq!(map.plate_of("BC-1"), Some(1));
        assert_eq!(map.plate_of("BC-2"), Some(2));
        let plate = &map.plates[&2];
        let wells: Vec<String> = plate.wells.iter().map(|w| w.to_string()).collect();
        assert_eq!(wells, ["B02", "C03"]);
        assert_eq!(plate.sites, 2);
    }

    #[test]
    fn an_rxrx_map_keeps_its_experiment() {
        let path = write(
            "metadata.csv",
            "site_id,well_id,cell_type,dataset,experiment,plate,well,site\n\
             a,b,HEPG2,train,HEPG2-01,1,B02,1\na,b,HEPG2,train,HEPG2-01,1,B02,2\n\
             a,b,HEPG2,train,HEPG2-01,3,B03,1\na,b,U2OS,train,U2OS-01,1,B02,1\n",
        );
        let map = PlateMap::read(&path, "HEPG2-01").unwrap();
        assert_eq!(map.plates.keys().copied().collect::<Vec<_>>(), [1, 3]);
        assert_eq!(map.plates[&1].sites, 2);
        assert_eq!(map.plates[&1].cell_type.as_deref(), Some("HEPG2"));
        assert_eq!(map.channels, None);
        let none = PlateMap::read(&path, "RPE-01").unwrap_err().to_string();
        assert!(none.contains("HEPG2-01, U2OS-01"), "{none}");
    }

    #[test]
    fn bad_maps_say_what_is_wrong() {
        let columns = write("columns.csv", "a,b\n1,2\n");
        let error = PlateMap::read(&columns, "E").unwrap_err().to_string();
        assert!(error.contains("its header is: a, b"), "{error}");
        let well = write("well.csv", "plate,well,site\n1,B02,1\n1,Q99,1\n");
        let error = PlateMap::read(&well, "E").unwrap_err().to_string();
        assert!(error.contains("line 3") && error.contains("Q99"), "{error}");
    }
}
