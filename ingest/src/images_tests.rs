use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

fn folder(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wellspring-images-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::canonicalize(dir).unwrap()
}

fn ingest(convention: Convention) -> Ingest {
    Ingest {
        experiment: ExperimentId::new("EXP-1").unwrap(),
        convention,
        plate: None,
        barcode: None,
        plane: 1,
        timepoint: 1,
        cell_type: "HUVEC".into(),
        plate_map: None,
    }
}

fn touch(root: &Path, relative: &str) {
    let path = root.join(relative);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, b"pixels").unwrap();
}

#[test]
fn locations_are_file_uris() {
    assert_eq!(
        location_uri(Path::new("/data/a b/#1.tif")),
        "file:///data/a%20b/%231.tif"
    );
}

#[test]
fn an_image_takes_its_plate_and_barcode_from_flags_layout_or_map() {
    let root = Path::new("/lab/BC-9");
    let rxrx = ingest(Convention::Rxrx);
    let image = rxrx
        .image(root, Path::new("HEPG2-01/Plate2/b5_s1_w3.png"))
        .unwrap();
    assert_eq!(image.key.to_string(), "EXP-1/2/B05/1/3");
    assert_eq!(&*image.plate_barcode, "HEPG2-01_Plate2");
    assert_eq!(
        image.location,
        "file:///lab/BC-9/HEPG2-01/Plate2/b5_s1_w3.png"
    );
    let flagged = Ingest {
        plate: Some(7),
        barcode: Some("X".into()),
        ..rxrx.clone()
    };
    let image = flagged
        .image(root, Path::new("Plate2/B05_s1_w3.png"))
        .unwrap();
    assert_eq!((image.key.plate, &*image.plate_barcode), (7, "X"));
    // CV8000 names carry the barcode; a plate map numbers the barcodes.
    let mut map = PlateMap::default();
    for (n, barcode) in [(1, "BC-A"), (2, "BC-B")] {
        map.plates.insert(
            n,
            crate::MappedPlate {
                barcode: Some(barcode.into()),
                cell_type: Some("U2OS".into()),
                ..Default::default()
            },
        );
    }
    let cv = Ingest {
        plate_map: Some(map),
        ..ingest(Convention::Cv8000)
    };
    let image = cv
        .image(root, Path::new("BC-B_C03_T0001F002L01A01Z01C04.tif"))
        .unwrap();
    assert_eq!(image.key.to_string(), "EXP-1/2/C03/2/4");
    assert_eq!(&*image.cell_type, "U2OS");
    // A folder without a barcode names the plate.
    let phenix =
        ingest(Convention::Phenix).image(root, Path::new("r01c01f01p01-ch1sk1fk1fl1.tiff"));
    assert_eq!(&*phenix.unwrap().plate_barcode, "BC-9");
}

#[test]
fn planes_and_time_points_are_taken_as_asked() {
    let root = Path::new("/lab");
    let phenix = Ingest {
        plane: 2,
        timepoint: 3,
        ..ingest(Convention::Phenix)
    };
    assert!(
        phenix
            .image(root, Path::new("r01c01f01p02-ch1sk3fk1fl1.tiff"))
            .is_ok()
    );
    assert_eq!(
        phenix.image(root, Path::new("r01c01f01p01-ch1sk3fk1fl1.tiff")),
        Err(Passed::OtherPlane(1))
    );
    assert_eq!(
        phenix.image(root, Path::new("r01c01f01p02-ch1sk1fk1fl1.tiff")),
        Err(Passed::OtherTimepoint(1))
    );
}

#[test]
fn a_rescan_finds_nothing_new_and_a_changing_file_waits() {
    let root = folder("rescan");
    for name in [
        "B02_s1_w1.tif",
        "B02_s1_w2.tif",
        "B02_s2_w1.tif",
        "notes.txt",
        "bad_name.tif",
    ] {
        touch(&root, &format!("PLATE-1/TimePoint_1/{name}"));
    }
    touch(&root, "PLATE-1/TimePoint_1/b2_s1_w1.tif");
    let state_file = root.join(".state");
    let open = || {
        Scanner::new(
            &root,
            ingest(Convention::ImageXpress),
            Stability::new(Duration::ZERO),
            State::open(&state_file, true).unwrap(),
            Some(state_file.clone()),
        )
        .unwrap()
    };
    let mut scanner = open();
    let files = scanner.list().unwrap().files;
    assert_eq!(files.len(), 6);
    let report = scanner.scan(&files, || {});
    let keys: Vec<String> = report
        .images
        .iter()
        .map(|(_, i)| i.key.to_string())
        .collect();
    assert_eq!(
        keys,
        ["EXP-1/1/B02/1/1", "EXP-1/1/B02/1/2", "EXP-1/1/B02/2/1"]
    );
    assert_eq!(report.not_images, 1);
    assert_eq!(report.unmatched.len(), 1, "{:?}", report.unmatched);
    // b2_s1_w1.tif names the same image as B02_s1_w1.tif.
    assert_eq!(report.conflicts.len(), 1, "{:?}", report.conflicts);
    let published: Vec<PathBuf> = report.images.iter().map(|(p, _)| p.clone()).collect();
    scanner.mark_published(&published).unwrap();
    let files = scanner.list().unwrap().files;
    let again = scanner.scan(&files, || {});
    assert!(again.images.is_empty());
    assert_eq!(again.already_published, 3);
    // A new scanner reads the state file.
    let mut reopened = open();
    let files = reopened.list().unwrap().files;
    let report = reopened.scan(&files, || {});
    assert!(report.images.is_empty());
    assert_eq!(report.conflicts.len(), 1, "the duplicate still conflicts");
    // A file that changes between looks waits.
    let mut slow = Scanner::new(
        &root,
        ingest(Convention::ImageXpress),
        Stability::new(Duration::from_secs(3600)),
        State::in_memory(),
        None,
    )
    .unwrap();
    touch(&root, "PLATE-1/TimePoint_1/B03_s1_w1.tif");
    let files = slow.list().unwrap().files;
    slow.look(&files);
    let report = slow.scan(&files, || {});
    assert!(report.images.is_empty());
    assert_eq!(report.still_written.len(), 5);
}

#[test]
fn layouts_from_flags_and_maps() {
    let flags = LayoutFlags {
        wells: vec!["b2:c3".into(), "A1".into()],
        sites: Some(4),
        channels: Some(5),
    };
    let layout = ingest(Convention::Rxrx)
        .layout(&flags, &BTreeMap::from([(3, "P3".to_owned())]))
        .unwrap()
        .unwrap();
    assert_eq!(layout.plates[0].plate, 3);
    assert_eq!(layout.plates[0].barcode.as_deref(), Some("P3"));
    let wells: Vec<String> = layout.plates[0]
        .wells
        .iter()
        .map(|w| w.to_string())
        .collect();
    assert_eq!(wells, ["A01", "B02", "B03", "C02", "C03"]);
    assert_eq!((layout.sites_per_well, layout.channels_per_site), (4, 5));
    assert!(
        ingest(Convention::Rxrx)
            .layout(&LayoutFlags::default(), &BTreeMap::new())
            .unwrap()
            .is_none()
    );
    let no_channels = LayoutFlags {
        channels: None,
        ..flags.clone()
    };
    let error = ingest(Convention::Rxrx)
        .layout(&no_channels, &BTreeMap::new())
        .unwrap_err();
    assert!(error.to_string().contains("--channels"), "{error}");
    let backwards = LayoutFlags {
        wells: vec!["C3:B2".into()],
        ..flags
    };
    assert!(
        ingest(Convention::Rxrx)
            .layout(&backwards, &BTreeMap::from([(1, "P".to_owned())]))
            .is_err()
    );
    let waiting = LayoutFlags {
        wells: vec!["A1".into()],
        sites: Some(1),
        channels: Some(1),
    };
    assert!(ingest(Convention::Rxrx).layout_waits_for_images(&waiting));
    let none_seen = ingest(Convention::Rxrx).layout(&waiting, &BTreeMap::new());
    assert!(none_seen.unwrap_err().to_string().contains("--plate N"));
}
