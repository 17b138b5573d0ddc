use std::path::Path;

use proptest::prelude::*;

use super::*;

fn read(convention: &Convention, path: &str) -> ImageName {
    match convention.read(Path::new(path)) {
        Ok(Recognised::Image(name)) => name,
        other => panic!("{path}: {other:?}"),
    }
}

fn well(text: &str) -> WellId {
    WellId::parse(text).unwrap()
}

fn letters(row: u8) -> String {
    if row < 26 {
        char::from(b'A' + row).to_string()
    } else {
        format!("A{}", char::from(b'A' + row - 26))
    }
}

#[test]
fn the_issue_examples_read_as_they_should() {
    let phenix = read(
        &Convention::Phenix,
        "PLATE-7__2024-01-31T10_00_00-Measurement 1/Images/r02c05f03p01-ch2sk1fk1fl1.tiff",
    );
    assert_eq!(
        phenix,
        ImageName {
            well: well("B05"),
            site: 3,
            channel: 2,
            plane: Some(1),
            timepoint: Some(1),
            plate: None,
            barcode: Some("PLATE-7".into()),
        }
    );
    let imagexpress = read(
        &Convention::ImageXpress,
        "BC123/TimePoint_2/ZStep_3/B05_s3_w2.tif",
    );
    assert_eq!(
        (imagexpress.well, imagexpress.site, imagexpress.channel),
        (well("B05"), 3, 2)
    );
    assert_eq!(imagexpress.timepoint, Some(2));
    assert_eq!(imagexpress.plane, Some(3));
    assert_eq!(imagexpress.barcode.as_deref(), Some("BC123"));
    let prefixed = read(
        &Convention::ImageXpress,
        "TimePoint_1/Plate1_A01_s1_w1F5D4D6E2-1C2B-4A6E-9B1E-0123456789AB.TIF",
    );
    assert_eq!(
        (prefixed.well, prefixed.barcode.as_deref()),
        (well("A01"), Some("Plate1"))
    );
    let cv = read(
        &Convention::Cv8000,
        "run/PLATE_B05_T0001F003L01A01Z01C02.tif",
    );
    assert_eq!((cv.well, cv.site, cv.channel), (well("B05"), 3, 2));
    assert_eq!((cv.plane, cv.timepoint), (Some(1), Some(1)));
    assert_eq!(cv.barcode.as_deref(), Some("PLATE"));
    let rxrx = read(&Convention::Rxrx, "HEPG2-01/Plate3/B05_s2_w6.png");
    assert_eq!((rxrx.well, rxrx.site, rxrx.channel), (well("B05"), 2, 6));
    assert_eq!(rxrx.plate, Some(3));
    assert_eq!(rxrx.barcode.as_deref(), Some("HEPG2-01_Plate3"));
}

#[test]
fn what_is_not_an_image_is_passed_over_and_a_bad_name_is_an_error() {
    for path in [
        "Plate1.HTD",
        "TimePoint_1/B05_s1_w1_thumb.tif",
        ".hidden.tif",
        "a/index.xml",
    ] {
        assert_eq!(
            Convention::ImageXpress.read(Path::new(path)),
            Ok(Recognised::NotAnImage),
            "{path}"
        );
    }
    let error = Convention::Phenix
        .read(Path::new("Images/picture.tiff"))
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("does not match the phenix convention"),
        "{error}"
    );
    // Right shape, impossible well or channel.
    assert!(matches!(
        Convention::Cv8000.read(Path::new("P_Z99_T0001F001L01A01Z01C01.tif")),
        Err(NameError::Field { field: "well", .. })
    ));
    assert!(matches!(
        Convention::Rxrx.read(Path::new("Plate1/B05_s1_w99.png")),
        Err(NameError::Field {
            field: "channel",
            ..
        })
    ));
    assert!(matches!(
        Convention::Rxrx.read(Path::new("B05_s1_w1.png")),
        Err(NameError::Field { field: "plate", .. })
    ));
    assert!(
        Convention::Rxrx
            .read(Path::new("Plate1/B05_s1_w1.tif"))
            .is_err()
    );
}

#[test]
fn a_pattern_needs_its_groups_and_reads_them() {
    assert!(
        UserPattern::new("(")
            .unwrap_err()
            .to_string()
            .contains("regular")
    );
    assert_eq!(
        UserPattern::new(r"(?P<well>\w+)\.tif").unwrap_err(),
        PatternError::Groups
    );
    let pattern = Convention::Pattern(
        UserPattern::new(r"(?i)^plate(?P<plate>\d+)/(?P<row>[A-P])(?P<column>\d+)-f(?P<site>\d+)-c(?P<channel>\d+)\.tif$")
            .unwrap(),
    );
    let name = read(&pattern, "plate2/c7-f2-c3.tif");
    assert_eq!(
        (name.well, name.site, name.channel, name.plate),
        (well("C07"), 2, 3, Some(2))
    );
    let by_file = Convention::Pattern(
        UserPattern::new(r"^(?P<well>[A-Z]\d+)_(?P<channel>\d)\.png$").unwrap(),
    );
    assert_eq!(read(&by_file, "deep/er/B2_4.png").well, well("B02"));
    assert!(by_file.read(Path::new("deep/B2.png")).is_err());
}

proptest! {
    #[test]
    fn phenix_names_round_trip(
        row in 1u32..=32, column in 1u32..=48, site in 1u16..=999, plane in 1u32..=99,
        channel in 1u8..=64, timepoint in 1u32..=999,
    ) {
        let path = format!("r{row:02}c{column:02}f{site:02}p{plane:02}-ch{channel}sk{timepoint}fk1fl1.tiff");
        let name = read(&Convention::Phenix, &path);
        prop_assert_eq!(name.well, well_at(row, column).unwrap());
        prop_assert_eq!((name.site, name.channel, name.plane, name.timepoint), (site, channel, Some(plane), Some(timepoint)));
    }

    #[test]
    fn imagexpress_names_round_trip(
        row in 0u8..32, column in 1u8..=48, site in 1u16..=999, channel in 1u8..=64,
        timepoint in 1u32..=99, pad in any::<bool>(), prefix in proptest::option::of("[A-Za-z][A-Za-z0-9-]{0,8}"),
    ) {
        let well_text = if pad { format!("{}{column:02}", letters(row)) } else { format!("{}{column}", letters(row)) };
        let prefix_text = prefix.as_ref().map(|p| format!("{p}_")).unwrap_or_default();
        let path = format!("PLATE/TimePoint_{timepoint}/{prefix_text}{well_text}_s{site}_w{channel}.tif");
        let name = read(&Convention::ImageXpress, &path);
        prop_assert_eq!(name.well, WellId::new(row, column).unwrap());
        prop_assert_eq!((name.site, name.channel, name.timepoint), (site, channel, Some(timepoint)));
        prop_assert_eq!(name.barcode, Some(prefix.unwrap_or_else(|| "PLATE".into())));
    }

    #[test]
    fn cv8000_names_round_trip(
        row in 0u8..32, column in 1u8..=48, site in 1u16..=999, channel in 1u8..=64,
        plane in 1u32..=99, timepoint in 1u32..=9999, barcode in "[A-Z0-9][A-Z0-9_-]{0,10}",
    ) {
        let path = format!("{barcode}_{}{column:02}_T{timepoint:04}F{site:03}L01A01Z{plane:02}C{channel:02}.tif", letters(row));
        let name = read(&Convention::Cv8000, &path);
        prop_assert_eq!(name.well, WellId::new(row, column).unwrap());
        prop_assert_eq!((name.site, name.channel, name.plane, name.timepoint), (site, channel, Some(plane), Some(timepoint)));
        prop_assert_eq!(name.barcode, Some(barcode));
    }

    #[test]
    fn rxrx_names_round_trip(
        row in 0u8..16, column in 1u8..=24, site in 1u16..=9, channel in 1u8..=6, plate in 1u32..=99,
    ) {
        let path = format!("EXP-1/Plate{plate}/{}{column:02}_s{site}_w{channel}.png", letters(row));
        let name = read(&Convention::Rxrx, &path);
        prop_assert_eq!(name.well, WellId::new(row, column).unwrap());
        prop_assert_eq!((name.site, name.channel, name.plate), (site, channel, Some(plate)));
    }

    /// No name makes a convention panic.
    #[test]
    fn any_name_is_read_or_refused(path in "[A-Za-z0-9_./-]{0,40}(\\.tif|\\.png)?") {
        for convention in [Convention::Phenix, Convention::ImageXpress, Convention::Cv8000, Convention::Rxrx] {
            let _ = convention.read(Path::new(&path));
        }
    }
}
