//! The built-in schemas: the fields and types of every record of the hierarchy and of
//! its bookkeeping records, as the records write them.

use super::{
    ChannelImage, DeadLetter, ExperimentLayout, ExperimentRecord, IncompleteRecord, PlateRecord,
    SiteRecord, WellRecord,
};
use crate::schema::Schema;

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
