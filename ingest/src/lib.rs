//! From a microscope's folders to Wellspring's records: the imagers' file-name
//! conventions ([`Convention`]), well names normalised ([`normalise_well`]), plate maps
//! ([`PlateMap`]) and scans that publish each stable image once ([`Scanner`]).
//!
//! Nothing here publishes: a scan turns files into [`ChannelImage`]s (one per channel
//! image of a site, of the z-plane and time point asked for) and says what it passed
//! over; `wellspring ingest` sends them to Kafka or to a node and then marks them
//! published.
//!
//! - `well.rs`: well names;
//! - `convention.rs`: what a file's name and folders say;
//! - `platemap.rs`: the experiment's layout from a CSV;
//! - `scan.rs`: listing, stable files, the state of what was published;
//! - `images.rs`: a named file to a `channel_level` record, and the layout record.

mod convention;
mod images;
mod platemap;
mod scan;
mod well;

pub use convention::{Convention, ImageName, NameError, PatternError, Recognised, UserPattern};
pub use images::{Ingest, LayoutError, LayoutFlags, Passed, ScanReport, Scanner, location_uri};
pub use platemap::{MappedPlate, PlateMap, PlateMapError};
pub use scan::{Listing, ScanError, Stability, State, list_files};
pub use well::{WellError, normalise_well, well_at};

#[cfg(doc)]
use wellspring_protocol::ChannelImage;
