//! Names and signatures of the built-in stream-operation functions: the hierarchical
//! groupings. Their implementations live in `wellspring-actors`; the spec language (and
//! `wellspring validate`) only needs to know what they read and emit.

use super::FunctionSignature;
use crate::records::{
    ChannelImage, ExperimentLayout, ExperimentRecord, PlateRecord, SiteRecord, WellRecord,
};

pub const IMAGES_SITE_GROUPING: &str = "aggregations/images-site-grouping";
pub const SITES_WELL_GROUPING: &str = "aggregations/sites-well-grouping";
pub const WELLS_PLATE_GROUPING: &str = "aggregations/wells-plate-grouping";
pub const PLATES_EXPERIMENT_GROUPING: &str = "aggregations/plates-experiment-grouping";

/// The four groupings of the imaging hierarchy, lowest level first.
pub fn hierarchy() -> Vec<(&'static str, FunctionSignature)> {
    let sig = |input: &str, output: &str, description: &str| FunctionSignature {
        input: input.to_owned(),
        output: output.to_owned(),
        table: Some(ExperimentLayout::SCHEMA.to_owned()),
        description: description.to_owned(),
    };
    vec![
        (
            IMAGES_SITE_GROUPING,
            sig(
                ChannelImage::SCHEMA,
                SiteRecord::SCHEMA,
                "one site record once all channels of a site are in",
            ),
        ),
        (
            SITES_WELL_GROUPING,
            sig(
                SiteRecord::SCHEMA,
                WellRecord::SCHEMA,
                "one well record once all sites of a well are in",
            ),
        ),
        (
            WELLS_PLATE_GROUPING,
            sig(
                WellRecord::SCHEMA,
                PlateRecord::SCHEMA,
                "one plate record once all wells of a plate are in",
            ),
        ),
        (
            PLATES_EXPERIMENT_GROUPING,
            sig(
                PlateRecord::SCHEMA,
                ExperimentRecord::SCHEMA,
                "one experiment record once all plates are in",
            ),
        ),
    ]
}
