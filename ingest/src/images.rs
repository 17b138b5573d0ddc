//! A named file to the `channel_level` record of its image, and a scan of a whole folder:
//! [`Ingest`] says what to take (experiment, plate, barcode, z-plane, time point) and
//! [`Scanner`] finds the files that are new and stable and reads them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use wellspring_protocol::records::PlateLayout;
use wellspring_protocol::{ChannelImage, ChannelKey, ExperimentId, ExperimentLayout, WellId, keys};

use crate::convention::{Convention, ImageName, NameError, Recognised};
use crate::platemap::PlateMap;
use crate::scan::{Listing, ScanError, Stability, State, list_files};

/// Characters a `file://` URI writes as `%XX` (the rest of a path stays readable).
const URI_ESCAPES: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b']')
    .add(b'\\')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// The `file://` URI of the absolute path `path`.
pub fn location_uri(path: &Path) -> String {
    let text = path.to_string_lossy().replace('\\', "/");
    let text = if text.starts_with('/') {
        text
    } else {
        format!("/{text}")
    };
    format!("file://{}", utf8_percent_encode(&text, URI_ESCAPES))
}

/// What to take from the folder and how to name it.
#[derive(Debug, Clone)]
pub struct Ingest {
    pub experiment: ExperimentId,
    pub convention: Convention,
    /// Every image's plate number (else the layout's, the plate map's by barcode, or 1).
    pub plate: Option<u32>,
    /// Every image's barcode (else the layout's, the plate map's, or the folder's name).
    pub barcode: Option<String>,
    /// The z-plane to take, of names that have one.
    pub plane: u32,
    /// The time point to take, of names or folders that have one.
    pub timepoint: u32,
    /// When the plate map does not say.
    pub cell_type: String,
    pub plate_map: Option<PlateMap>,
}

/// A file passed over, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Passed {
    NotAnImage,
    OtherPlane(u32),
    OtherTimepoint(u32),
    Unmatched(NameError),
    /// Another file already gave this channel image.
    SameImage {
        key: String,
        first: PathBuf,
    },
    /// Two barcodes would share a plate number.
    PlateClash {
        plate: u32,
        barcodes: (String, String),
    },
}

impl Ingest {
    /// The record of the image at `relative` below `root` (absolute), or why it is passed
    /// over.
    pub fn image(&self, root: &Path, relative: &Path) -> Result<ChannelImage, Passed> {
        let name = match self.convention.read(relative) {
            Ok(Recognised::Image(name)) => name,
            Ok(Recognised::NotAnImage) => return Err(Passed::NotAnImage),
            Err(e) => return Err(Passed::Unmatched(e)),
        };
        if let Some(plane) = name.plane.filter(|p| *p != self.plane) {
            return Err(Passed::OtherPlane(plane));
        }
        if let Some(t) = name.timepoint.filter(|t| *t != self.timepoint) {
            return Err(Passed::OtherTimepoint(t));
        }
        Ok(self.record(root, relative, name))
    }

    fn record(&self, root: &Path, relative: &Path, name: ImageName) -> ChannelImage {
        let map = self.plate_map.as_ref();
        let barcode = self.barcode.clone().or(name.barcode);
        let plate = self
            .plate
            .or(name.plate)
            .or_else(|| map.and_then(|m| m.plate_of(barcode.as_deref()?)))
            .or_else(|| {
                // A map of one plate names the plate of every image.
                map.filter(|m| m.plates.len() == 1)
                    .and_then(|m| m.plates.keys().next().copied())
            })
            .unwrap_or(1);
        let mapped = map.and_then(|m| m.plates.get(&plate));
        let barcode = barcode
            .or_else(|| mapped.and_then(|p| p.barcode.clone()))
            .unwrap_or_else(|| folder_name(root));
        let cell_type = mapped
            .and_then(|p| p.cell_type.clone())
            .unwrap_or_else(|| self.cell_type.clone());
        ChannelImage {
            key: ChannelKey {
                experiment: self.experiment.clone(),
                plate,
                well: name.well,
                site: name.site,
                channel: name.channel,
            },
            cell_type: Arc::from(cell_type),
            plate_barcode: Arc::from(barcode),
            location: location_uri(&root.join(relative)),
        }
    }
}

fn folder_name(root: &Path) -> String {
    root.file_name()
        .map_or_else(|| "plate".to_owned(), |n| n.to_string_lossy().into_owned())
}

/// What one scan found.
#[derive(Debug, Default)]
pub struct ScanReport {
    /// New, stable images, with the files they came from.
    pub images: Vec<(PathBuf, ChannelImage)>,
    /// Files seen in all.
    pub files: usize,
    pub already_published: usize,
    /// Files that changed within the settle time (or are empty): looked at again later.
    pub still_written: Vec<PathBuf>,
    pub not_images: usize,
    pub other_plane: usize,
    pub other_timepoint: usize,
    /// Images whose name fits no convention, or reads as no valid well, site or channel.
    pub unmatched: Vec<NameError>,
    /// Files passed over because another file gave the same channel image, or two
    /// barcodes share a plate number: what to fix, in words.
    pub conflicts: Vec<String>,
}

/// Scans a folder again and again, each time yielding only what is new and stable.
#[derive(Debug)]
pub struct Scanner {
    root: PathBuf,
    ingest: Ingest,
    stability: Stability,
    state: State,
    state_file: Option<PathBuf>,
    /// The file each channel image came from (published or about to be).
    sources: HashMap<ChannelKey, PathBuf>,
    barcodes: HashMap<u32, String>,
    /// Files reported once (unmatched, conflicting): not reported at every scan.
    reported: BTreeSet<PathBuf>,
}

impl Scanner {
    /// A scanner of `root` (made absolute), remembering what is published in `state`
    /// (kept at `state_file`, which scans leave out).
    pub fn new(
        root: &Path,
        ingest: Ingest,
        stability: Stability,
        state: State,
        state_file: Option<PathBuf>,
    ) -> Result<Self, ScanError> {
        let root = std::fs::canonicalize(root).map_err(|e| ScanError::Folder {
            path: root.display().to_string(),
            reason: e.to_string(),
        })?;
        let mut scanner = Self {
            root,
            ingest,
            stability,
            state,
            state_file,
            sources: HashMap::new(),
            barcodes: HashMap::new(),
            reported: BTreeSet::new(),
        };
        // What was published before still claims its channel keys.
        let published: Vec<PathBuf> = scanner.state.published().cloned().collect();
        for relative in published {
            if let Ok(image) = scanner.ingest.image(&scanner.root, &relative) {
                scanner.claim(&relative, &image);
            }
        }
        Ok(scanner)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn ingest(&self) -> &Ingest {
        &self.ingest
    }

    /// The files below the folder now (for a progress bar's length), and what below it
    /// could not be read.
    pub fn list(&self) -> Result<Listing, ScanError> {
        list_files(&self.root, self.state_file.as_deref())
    }

    /// Takes a first look at `files` (from [`Scanner::list`]), so that a scan after the
    /// settle time finds the ones that have not changed since.
    pub fn look(&mut self, files: &[PathBuf]) {
        for relative in files {
            if !self.state.is_published(relative) {
                self.stability.is_stable(&self.root, relative);
            }
        }
    }

    /// Reads `files` (from [`Scanner::list`]); `each` is called once a file.
    pub fn scan(&mut self, files: &[PathBuf], mut each: impl FnMut()) -> ScanReport {
        let mut report = ScanReport {
            files: files.len(),
            ..ScanReport::default()
        };
        for relative in files {
            each();
            if self.state.is_published(relative) {
                report.already_published += 1;
                continue;
            }
            let image = match self.ingest.image(&self.root, relative) {
                Ok(image) => image,
                Err(passed) => {
                    self.count_passed(relative, passed, &mut report);
                    continue;
                }
            };
            if let Some(conflict) = self.conflict(relative, &image) {
                self.count_passed(relative, conflict, &mut report);
                continue;
            }
            if !self.stability.is_stable(&self.root, relative) {
                report.still_written.push(relative.clone());
                continue;
            }
            self.claim(relative, &image);
            report.images.push((relative.clone(), image));
        }
        report
    }

    /// Whether `relative` (a file, or any entry the caller names) was published.
    pub fn is_published(&self, relative: &Path) -> bool {
        self.state.is_published(relative)
    }

    /// The plates of the images published or found so far, with the barcode of each.
    pub fn plates_seen(&self) -> BTreeMap<u32, String> {
        self.barcodes
            .iter()
            .map(|(plate, barcode)| (*plate, barcode.clone()))
            .collect()
    }

    /// Marks the files of `images` published (after the log acknowledged them).
    pub fn mark_published(&mut self, files: &[PathBuf]) -> Result<(), ScanError> {
        self.state.mark_published(files)?;
        for relative in files {
            self.stability.forget(relative);
        }
        Ok(())
    }

    fn claim(&mut self, relative: &Path, image: &ChannelImage) {
        self.sources
            .insert(image.key.clone(), relative.to_path_buf());
        self.barcodes
            .entry(image.key.plate)
            .or_insert_with(|| image.plate_barcode.to_string());
    }

    fn conflict(&self, relative: &Path, image: &ChannelImage) -> Option<Passed> {
        if let Some(first) = self.sources.get(&image.key).filter(|f| *f != relative) {
            return Some(Passed::SameImage {
                key: image.key.to_string(),
                first: first.clone(),
            });
        }
        let plate = image.key.plate;
        match self.barcodes.get(&plate) {
            Some(b) if **b != *image.plate_barcode => Some(Passed::PlateClash {
                plate,
                barcodes: (b.clone(), image.plate_barcode.to_string()),
            }),
            _ => None,
        }
    }

    fn count_passed(&mut self, relative: &Path, passed: Passed, report: &mut ScanReport) {
        let first_time = self.reported.insert(relative.to_path_buf());
        let path = relative.display();
        match passed {
            Passed::NotAnImage => report.not_images += 1,
            Passed::OtherPlane(_) => report.other_plane += 1,
            Passed::OtherTimepoint(_) => report.other_timepoint += 1,
            Passed::Unmatched(e) if first_time => report.unmatched.push(e),
            Passed::SameImage { key, first } if first_time => report.conflicts.push(format!(
                "{path}: channel image {key} already came from {} (pass --plane/--timepoint, or --pattern to tell them apart)",
                first.display()
            )),
            Passed::PlateClash { plate, barcodes } if first_time => {
                report.conflicts.push(format!(
                    "{path}: barcodes {} and {} would both be plate {plate} (ingest one plate folder at a time with --plate N, or give a plate map that names the barcodes)",
                    barcodes.0, barcodes.1
                ))
            }
            _ => {}
        }
    }
}

/// The layout given by flags, where no plate map gives it.
#[derive(Debug, Clone, Default)]
pub struct LayoutFlags {
    /// Well names and ranges (`B02:O23`), for every plate.
    pub wells: Vec<String>,
    pub sites: Option<u16>,
    pub channels: Option<u8>,
}

/// Why no layout can be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("{0}")]
    Missing(String),
    #[error("{0}")]
    Invalid(String),
}

impl Ingest {
    /// Whether the layout's plates come from the images (wells from `--wells`, but no
    /// plate map nor `--plate` to say which plates): then it is made once the first scan
    /// has found images, from the plates they name.
    pub fn layout_waits_for_images(&self, flags: &LayoutFlags) -> bool {
        self.plate_map.is_none() && self.plate.is_none() && !flags.wells.is_empty()
    }

    /// The experiment's layout, from the plate map and the flags (flags win), or `None`
    /// when neither gives wells. `seen` is the plates (and their barcodes) the images
    /// named, for the plates that neither the plate map nor `--plate` gives.
    pub fn layout(
        &self,
        flags: &LayoutFlags,
        seen: &BTreeMap<u32, String>,
    ) -> Result<Option<ExperimentLayout>, LayoutError> {
        let map = self.plate_map.as_ref();
        if map.is_none() && flags.wells.is_empty() {
            return Ok(None);
        }
        let channels = flags.channels.or(map.and_then(|m| m.channels)).ok_or_else(|| {
            LayoutError::Missing(
                "the layout needs the channels per site: give --channels N (a LoadData plate map says it by its FileName_ columns)".into(),
            )
        })?;
        let mut plates = Vec::new();
        let mut sites = flags.sites.unwrap_or(1);
        if flags.wells.is_empty() {
            for (number, plate) in map.map(|m| &m.plates).into_iter().flatten() {
                sites = flags.sites.unwrap_or(sites.max(plate.sites));
                plates.push(PlateLayout {
                    plate: *number,
                    barcode: plate.barcode.clone(),
                    wells: plate.wells.iter().copied().collect(),
                });
            }
        } else {
            let wells = expand(&flags.wells)?;
            let numbers: Vec<u32> = match (self.plate, map) {
                (Some(p), _) => vec![p],
                (None, Some(m)) => m.plates.keys().copied().collect(),
                (None, None) => seen.keys().copied().collect(),
            };
            if numbers.is_empty() {
                return Err(LayoutError::Missing(
                    "no images yet to tell the layout's plates: give --plate N or a --plate-map"
                        .into(),
                ));
            }
            for number in numbers {
                let mapped = map.and_then(|m| m.plates.get(&number));
                plates.push(PlateLayout {
                    plate: number,
                    barcode: self
                        .barcode
                        .clone()
                        .or_else(|| mapped.and_then(|p| p.barcode.clone()))
                        .or_else(|| seen.get(&number).cloned()),
                    wells: wells.clone(),
                });
            }
        }
        if flags.sites.is_none() && map.is_none() {
            return Err(LayoutError::Missing(
                "the layout needs the sites per well: give --sites N".into(),
            ));
        }
        keys::site_number(i64::from(sites)).map_err(|e| LayoutError::Invalid(e.to_string()))?;
        Ok(Some(ExperimentLayout {
            experiment: self.experiment.clone(),
            channels_per_site: channels,
            sites_per_well: sites,
            plates,
        }))
    }
}

/// Well names and ranges (`A1`, `b02:o23`), sorted and unique.
fn expand(entries: &[String]) -> Result<Vec<WellId>, LayoutError> {
    let well = |text: &str| {
        crate::well::normalise_well(text).map_err(|e| LayoutError::Invalid(format!("--wells: {e}")))
    };
    let mut wells = BTreeSet::new();
    for entry in entries.iter().flat_map(|e| e.split(',')) {
        match entry.split_once(':') {
            None => {
                wells.insert(well(entry)?);
            }
            Some((from, to)) => {
                let (from, to) = (well(from)?, well(to)?);
                if from.row() > to.row() || from.column() > to.column() {
                    return Err(LayoutError::Invalid(format!(
                        "--wells: the range {entry} runs backwards (write top-left:bottom-right)"
                    )));
                }
                for row in from.row()..=to.row() {
                    for column in from.column()..=to.column() {
                        wells.extend(WellId::new(row, column));
                    }
                }
            }
        }
    }
    Ok(wells.into_iter().collect())
}

#[cfg(test)]
#[path = "images_tests.rs"]
mod tests;
