//! The records against their schemas, the JSON they read and write, and the errors that name the field.

use super::*;
use crate::schema::SchemaSet;
use crate::value::Value;
use serde_json::json;

fn image() -> ChannelImage {
    ChannelImage {
        key: "EXP-1/2/B02/3/5".parse().unwrap(),
        cell_type: "HUVEC".into(),
        plate_barcode: "BC-2".into(),
        location: "s3://lab/EXP-1/2/B02/3/5.tiff".into(),
    }
}

#[test]
fn every_record_matches_its_builtin_schema() {
    let set = SchemaSet::with_builtins();
    let site = SiteRecord {
        key: image().key.site_key(),
        provenance: Provenance {
            cell_type: "HUVEC".into(),
            plate_barcode: "BC-2".into(),
        },
        channels: vec![ChannelRef {
            channel: 5,
            location: "x".into(),
        }],
    };
    let well = WellRecord {
        key: site.key.well_key(),
        provenance: site.provenance.clone(),
        sites: vec![SiteImages {
            site: 3,
            channels: site.channels.clone(),
        }],
    };
    let plate = PlateRecord {
        key: well.key.plate_key(),
        provenance: site.provenance.clone(),
        wells: vec![WellSummary {
            well: well.key.well,
            sites: 1,
            images: 1,
        }],
    };
    let experiment = ExperimentRecord {
        experiment: plate.key.experiment.clone(),
        cell_type: "HUVEC".into(),
        plates: vec![PlateSummary {
            plate: 2,
            barcode: "BC-2".into(),
            wells: 1,
            images: 1,
        }],
    };
    let incomplete = IncompleteRecord {
        level: "site".into(),
        key: site.key.to_string(),
        experiment: site.key.experiment.clone(),
        present: 5,
        expected: Some(6),
        missing: vec!["channel 5 of site 3 of well B02 of plate 2".into()],
        open_since_ms: 7,
    };
    let dead = DeadLetter {
        dag: "d".into(),
        node: "n".into(),
        reason: "r".into(),
        origin: Some(Origin {
            topic: "t".into(),
            partition: 1,
            offset: 9,
        }),
        key: None,
        record: Value::Null,
        attempts: 0,
    };
    for (schema, value) in [
        (ChannelImage::SCHEMA, image().to_value()),
        (SiteRecord::SCHEMA, site.to_value()),
        (WellRecord::SCHEMA, well.to_value()),
        (PlateRecord::SCHEMA, plate.to_value()),
        (ExperimentRecord::SCHEMA, experiment.to_value()),
        (IncompleteRecord::SCHEMA, incomplete.to_value()),
        (DeadLetter::SCHEMA, dead.to_value()),
    ] {
        let checked = set
            .validate_value(schema, &value)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(checked, value, "{schema} round trip");
    }
    assert_eq!(
        ChannelImage::from_value(&image().to_value()).unwrap(),
        image()
    );
    assert_eq!(SiteRecord::from_value(&site.to_value()).unwrap(), site);
    assert_eq!(WellRecord::from_value(&well.to_value()).unwrap(), well);
    assert_eq!(PlateRecord::from_value(&plate.to_value()).unwrap(), plate);
}

#[test]
fn layouts_expand_ranges_and_reject_nonsense() {
    let value = Value::from(&json!({
        "experiment_id": "EXP-1", "channels_per_site": 6, "sites_per_well": 4,
        "plates": [{"plate_number": 2, "wells": ["B02:O23"]},
                   {"plate_number": 1, "plate_barcode": "BC1", "wells": ["A01", "A02", "A01"]}]}));
    let layout = ExperimentLayout::from_value(&value).unwrap();
    assert_eq!(layout.plates[0].plate, 1);
    assert_eq!(layout.plates[0].wells.len(), 2);
    assert_eq!(layout.plates[1].wells.len(), 308);
    assert_eq!(layout.image_count(), (308 + 2) * 4 * 6);
    assert!(layout.plate(2).unwrap().has_well("O23".parse().unwrap()));
    assert!(!layout.plate(2).unwrap().has_well("P24".parse().unwrap()));
    let round = ExperimentLayout::from_value(&layout.to_value()).unwrap();
    assert_eq!(round, layout);

    for bad in [
        json!({"experiment_id": "E", "channels_per_site": 0, "sites_per_well": 4, "plates": []}),
        json!({"experiment_id": "E", "channels_per_site": 6, "sites_per_well": 4, "plates": []}),
        json!({"experiment_id": "E", "channels_per_site": 6, "sites_per_well": 4,
               "plates": [{"plate_number": 1, "wells": ["O23:B02"]}]}),
        json!({"experiment_id": "E", "channels_per_site": 6, "sites_per_well": 4,
               "plates": [{"plate_number": 1, "wells": ["Q99"]}]}),
        json!({"experiment_id": "E", "channels_per_site": 6, "sites_per_well": 4,
               "plates": [{"plate_number": 1, "wells": ["A01"]}, {"plate_number": 1, "wells": ["A01"]}]}),
    ] {
        assert!(
            ExperimentLayout::from_value(&Value::from(&bad)).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn bad_channel_records_name_the_field() {
    let mut value = image().to_value();
    if let Value::Record(fields) = &mut value {
        fields.insert("well".into(), Value::from("Z99"));
    }
    let err = ChannelImage::from_value(&value).unwrap_err();
    assert!(err.to_string().starts_with("field well:"), "{err}");
}

/// One record of each type, and the variants that write differently.
struct Samples {
    image: ChannelImage,
    layout: ExperimentLayout,
    site: SiteRecord,
    well: WellRecord,
    plate: PlateRecord,
    experiment: ExperimentRecord,
    incomplete: IncompleteRecord,
    waiting: IncompleteRecord,
    dead: DeadLetter,
    dead_bare: DeadLetter,
}

fn samples() -> Samples {
    let image = image();
    let provenance = Provenance {
        cell_type: "HUVEC".into(),
        plate_barcode: "BC-2".into(),
    };
    let channel = |channel, location: &str| ChannelRef {
        channel,
        location: location.into(),
    };
    let site = SiteRecord {
        key: image.key.site_key(),
        provenance: provenance.clone(),
        channels: vec![channel(1, "s3://a/1.tiff"), channel(5, "s3://a/5.tiff")],
    };
    let well = WellRecord {
        key: site.key.well_key(),
        provenance: provenance.clone(),
        sites: vec![
            SiteImages {
                site: 3,
                channels: site.channels.clone(),
            },
            SiteImages {
                site: 4,
                channels: vec![channel(2, "b")],
            },
        ],
    };
    let plate = PlateRecord {
        key: well.key.plate_key(),
        provenance,
        wells: vec![
            WellSummary {
                well: "B02".parse().unwrap(),
                sites: 2,
                images: 3,
            },
            WellSummary {
                well: "AF48".parse().unwrap(),
                sites: 1,
                images: 6,
            },
        ],
    };
    let experiment = ExperimentRecord {
        experiment: plate.key.experiment.clone(),
        cell_type: "HUVEC".into(),
        plates: vec![
            PlateSummary {
                plate: 2,
                barcode: "BC-2".into(),
                wells: 2,
                images: 9,
            },
            PlateSummary {
                plate: 7,
                barcode: "BC-7".into(),
                wells: 1,
                images: 1,
            },
        ],
    };
    let layout = ExperimentLayout::from_value(&Value::from(&json!({
        "experiment_id": "EXP-1", "channels_per_site": 6, "sites_per_well": 4,
        "plates": [{"plate_number": 2, "wells": ["B02:C03"]},
                   {"plate_number": 1, "plate_barcode": "BC1", "wells": ["A01", "A02"]}]})))
    .unwrap();
    let incomplete = IncompleteRecord {
        level: "site".into(),
        key: site.key.to_string(),
        experiment: site.key.experiment.clone(),
        present: 5,
        expected: Some(6),
        missing: vec![
            "channel 5 of site 3 of well B02 of plate 2".into(),
            "x".into(),
        ],
        open_since_ms: 7,
    };
    let waiting = IncompleteRecord {
        expected: None,
        missing: vec![],
        ..incomplete.clone()
    };
    let dead = DeadLetter {
        dag: "d".into(),
        node: "n".into(),
        reason: "r".into(),
        origin: Some(Origin {
            topic: "t".into(),
            partition: 1,
            offset: 9,
        }),
        key: None,
        record: Value::from(&json!({"a": [1, 2.5, "x", null, true], "b": {"c": -3}})),
        attempts: 2,
    };
    let dead_bare = DeadLetter {
        origin: None,
        key: Some("k".into()),
        record: Value::from("not json"),
        ..dead.clone()
    };
    Samples {
        image,
        layout,
        site,
        well,
        plate,
        experiment,
        incomplete,
        waiting,
        dead,
        dead_bare,
    }
}

fn read(text: &str) -> Value {
    Value::from(&serde_json::from_str::<serde_json::Value>(text).unwrap())
}

/// The JSON text each record has always written (taken from the hand-written conversions
/// the derived ones replaced), and the records read back from it.
#[test]
fn every_record_writes_and_reads_the_json_it_always_has() {
    let s = samples();
    let image = r#"{"cell_type":"HUVEC","channel":5,"experiment_id":"EXP-1","location":"s3://lab/EXP-1/2/B02/3/5.tiff","plate_barcode":"BC-2","plate_number":2,"site":3,"well":"B02"}"#;
    let layout = r#"{"channels_per_site":6,"experiment_id":"EXP-1","plates":[{"plate_barcode":"BC1","plate_number":1,"wells":["A01","A02"]},{"plate_barcode":null,"plate_number":2,"wells":["B02","B03","C02","C03"]}],"sites_per_well":4}"#;
    let site = r#"{"cell_type":"HUVEC","channels":[{"channel":1,"location":"s3://a/1.tiff"},{"channel":5,"location":"s3://a/5.tiff"}],"experiment_id":"EXP-1","plate_barcode":"BC-2","plate_number":2,"site":3,"well":"B02"}"#;
    let well = r#"{"cell_type":"HUVEC","experiment_id":"EXP-1","plate_barcode":"BC-2","plate_number":2,"sites":[{"channels":[{"channel":1,"location":"s3://a/1.tiff"},{"channel":5,"location":"s3://a/5.tiff"}],"site":3},{"channels":[{"channel":2,"location":"b"}],"site":4}],"well":"B02"}"#;
    let plate = r#"{"cell_type":"HUVEC","experiment_id":"EXP-1","images":9,"plate_barcode":"BC-2","plate_number":2,"wells":[{"images":3,"sites":2,"well":"B02"},{"images":6,"sites":1,"well":"AF48"}]}"#;
    let experiment = r#"{"cell_type":"HUVEC","experiment_id":"EXP-1","images":10,"plates":[{"images":9,"plate_barcode":"BC-2","plate_number":2,"wells":2},{"images":1,"plate_barcode":"BC-7","plate_number":7,"wells":1}]}"#;
    let incomplete = r#"{"description":"site EXP-1/2/B02/3 is incomplete (5 of 6 present); missing: channel 5 of site 3 of well B02 of plate 2, x","expected":6,"experiment_id":"EXP-1","key":"EXP-1/2/B02/3","level":"site","missing":["channel 5 of site 3 of well B02 of plate 2","x"],"open_since_ms":7,"present":5}"#;
    let waiting = r#"{"description":"site EXP-1/2/B02/3 is incomplete (5 present, metadata not received); missing: ","expected":null,"experiment_id":"EXP-1","key":"EXP-1/2/B02/3","level":"site","missing":[],"open_since_ms":7,"present":5}"#;
    let dead = r#"{"attempts":2,"dag":"d","key":null,"node":"n","reason":"r","record":{"a":[1,2.5,"x",null,true],"b":{"c":-3}},"source_offset":9,"source_partition":1,"source_topic":"t"}"#;
    let dead_bare = r#"{"attempts":2,"dag":"d","key":"k","node":"n","reason":"r","record":"not json","source_offset":null,"source_partition":null,"source_topic":null}"#;
    for (name, value, text) in [
        ("image", s.image.to_value(), image),
        ("layout", s.layout.to_value(), layout),
        ("site", s.site.to_value(), site),
        ("well", s.well.to_value(), well),
        ("plate", s.plate.to_value(), plate),
        ("experiment", s.experiment.to_value(), experiment),
        ("incomplete", s.incomplete.to_value(), incomplete),
        ("waiting", s.waiting.to_value(), waiting),
        ("dead", s.dead.to_value(), dead),
        ("dead_bare", s.dead_bare.to_value(), dead_bare),
    ] {
        assert_eq!(value.to_json_string(), text, "{name}");
    }
    assert_eq!(ChannelImage::from_value(&read(image)).unwrap(), s.image);
    let mut previous = None;
    assert_eq!(
        ChannelImage::from_value_sharing(&read(image), &mut previous).unwrap(),
        s.image
    );
    assert_eq!(
        ExperimentLayout::from_value(&read(layout)).unwrap(),
        s.layout
    );
    assert_eq!(SiteRecord::from_value(&read(site)).unwrap(), s.site);
    assert_eq!(WellRecord::from_value(&read(well)).unwrap(), s.well);
    assert_eq!(PlateRecord::from_value(&read(plate)).unwrap(), s.plate);
    assert_eq!(key_of::site(&read(image)).unwrap(), s.site.key);
    assert_eq!(key_of::well(&read(site)).unwrap(), s.well.key);
    assert_eq!(key_of::plate(&read(well)).unwrap(), s.plate.key);
    assert_eq!(
        key_of::experiment(&read(plate)).unwrap(),
        s.experiment.experiment
    );
}

/// `value` with the field at `path` (record fields and array indexes) set, or removed.
fn edited(mut value: Value, path: &[&str], new: Option<Value>) -> Value {
    let (last, parents) = path.split_last().unwrap();
    let mut at = &mut value;
    for step in parents {
        at = match at {
            Value::Record(fields) => fields.get_mut(*step).unwrap(),
            Value::Array(items) => &mut items[step.parse::<usize>().unwrap()],
            _ => panic!("{step} is inside neither a record nor an array"),
        };
    }
    match (at, new) {
        (Value::Record(fields), Some(new)) => {
            fields.insert((*last).into(), new);
        }
        (Value::Record(fields), None) => {
            fields.remove(*last);
        }
        (Value::Array(items), Some(new)) => items[last.parse::<usize>().unwrap()] = new,
        _ => panic!("cannot edit {path:?}"),
    }
    value
}

/// Every reading error names the field, in the words the hand-written readers used; the
/// first field (in the schema's order) that is wrong or missing is the one reported.
#[test]
fn reading_errors_name_the_field() {
    let s = samples();
    let (image, site, well, plate) = (
        s.image.to_value(),
        s.site.to_value(),
        s.well.to_value(),
        s.plate.to_value(),
    );
    let int = Value::Int;
    let text = Value::from;
    let message = |result: Result<(), RecordError>| result.map_err(|e| e.to_string()).err();
    for (field, new, expected, a_key) in [
        (
            "well",
            Some(text("Z99")),
            r#"field well: well "Z99" is not a well name like B02 (row letters A-Z or AA-AF, column 1-48)"#,
            true,
        ),
        ("well", Some(int(3)), "field well should be a string", true),
        ("well", None, "field well is missing", true),
        (
            "experiment_id",
            Some(text("a b")),
            r#"field experiment_id: experiment id "a b" has a character outside letters, digits, '.', '_', ':' and '-'"#,
            true,
        ),
        (
            "experiment_id",
            None,
            "field experiment_id is missing",
            true,
        ),
        (
            "plate_number",
            Some(int(0)),
            "field plate_number: plate number 0 is out of range (must be 1 to 1000000000)",
            true,
        ),
        (
            "plate_number",
            Some(text("1")),
            "field plate_number should be an integer",
            true,
        ),
        (
            "site",
            Some(int(-1)),
            "field site: site number -1 is out of range (must be 1 to 10000)",
            true,
        ),
        (
            "channel",
            Some(int(65)),
            "field channel: channel number 65 is out of range (must be 1 to 64)",
            false,
        ),
        (
            "location",
            Some(int(1)),
            "field location should be a string",
            false,
        ),
        ("location", None, "field location is missing", false),
        (
            "cell_type",
            Some(Value::Null),
            "field cell_type should be a string",
            false,
        ),
    ] {
        let value = edited(image.clone(), &[field], new);
        assert_eq!(
            message(ChannelImage::from_value(&value).map(drop)).as_deref(),
            Some(expected),
            "{field}"
        );
        assert_eq!(
            message(ChannelImage::from_value_sharing(&value, &mut None).map(drop)).as_deref(),
            Some(expected),
            "{field}"
        );
        assert_eq!(
            message(key_of::site(&value).map(drop)).as_deref(),
            a_key.then_some(expected),
            "{field}: routing reads only the keys"
        );
    }
    assert_eq!(
        message(ChannelImage::from_value(&Value::Null).map(drop)).as_deref(),
        Some("field experiment_id is missing")
    );
    for (name, value, expected) in [
        (
            "site channels",
            message(
                SiteRecord::from_value(&edited(site.clone(), &["channels"], Some(int(1))))
                    .map(drop),
            ),
            "field channels should be an array",
        ),
        (
            "site channels.0.channel",
            message(
                SiteRecord::from_value(&edited(
                    site.clone(),
                    &["channels", "0", "channel"],
                    Some(int(0)),
                ))
                .map(drop),
            ),
            "field channel: channel number 0 is out of range (must be 1 to 64)",
        ),
        (
            "site channels.0.channel",
            message(
                SiteRecord::from_value(&edited(
                    site.clone(),
                    &["channels", "0", "channel"],
                    Some(text("1")),
                ))
                .map(drop),
            ),
            "field channel should be an integer",
        ),
        (
            "site channels.1.location",
            message(
                SiteRecord::from_value(&edited(
                    site.clone(),
                    &["channels", "1", "location"],
                    Some(Value::Null),
                ))
                .map(drop),
            ),
            "field location should be a string",
        ),
        (
            "site channels.1",
            message(
                SiteRecord::from_value(&edited(site.clone(), &["channels", "1"], Some(int(4))))
                    .map(drop),
            ),
            "field channel is missing",
        ),
        (
            "site site",
            message(
                SiteRecord::from_value(&edited(site.clone(), &["site"], Some(int(0)))).map(drop),
            ),
            "field site: site number 0 is out of range (must be 1 to 10000)",
        ),
        (
            "well sites",
            message(
                WellRecord::from_value(&edited(well.clone(), &["sites"], Some(Value::Null)))
                    .map(drop),
            ),
            "field sites should be an array",
        ),
        (
            "well sites.0.site",
            message(
                WellRecord::from_value(&edited(
                    well.clone(),
                    &["sites", "0", "site"],
                    Some(int(0)),
                ))
                .map(drop),
            ),
            "field site: site number 0 is out of range (must be 1 to 10000)",
        ),
        (
            "well sites.1.channels",
            message(
                WellRecord::from_value(&edited(
                    well.clone(),
                    &["sites", "1", "channels"],
                    Some(text("x")),
                ))
                .map(drop),
            ),
            "field channels should be an array",
        ),
        (
            "well plate_number",
            message(
                WellRecord::from_value(&edited(well.clone(), &["plate_number"], Some(int(-5))))
                    .map(drop),
            ),
            "field plate_number: plate number -5 is out of range (must be 1 to 1000000000)",
        ),
        (
            "plate wells.0.images",
            message(
                PlateRecord::from_value(&edited(
                    plate.clone(),
                    &["wells", "0", "images"],
                    Some(int(-1)),
                ))
                .map(drop),
            ),
            "field images should be a count",
        ),
        (
            "plate wells.0.images",
            message(
                PlateRecord::from_value(&edited(
                    plate.clone(),
                    &["wells", "0", "images"],
                    Some(text("1")),
                ))
                .map(drop),
            ),
            "field images should be an integer",
        ),
        (
            "plate wells.1.sites",
            message(
                PlateRecord::from_value(&edited(
                    plate.clone(),
                    &["wells", "1", "sites"],
                    Some(int(0)),
                ))
                .map(drop),
            ),
            "field sites: site number 0 is out of range (must be 1 to 10000)",
        ),
        (
            "plate wells.1.well",
            message(
                PlateRecord::from_value(&edited(
                    plate.clone(),
                    &["wells", "1", "well"],
                    Some(text("ZZ1")),
                ))
                .map(drop),
            ),
            r#"field well: well "ZZ1" is not a well name like B02 (row letters A-Z or AA-AF, column 1-48)"#,
        ),
        (
            "plate experiment_id",
            message(
                PlateRecord::from_value(&edited(plate.clone(), &["experiment_id"], Some(text(""))))
                    .map(drop),
            ),
            "field experiment_id: experiment id is empty",
        ),
    ] {
        assert_eq!(value.as_deref(), Some(expected), "{name}");
    }
}
