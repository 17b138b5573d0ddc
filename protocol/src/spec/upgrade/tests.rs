//! Every kind of change to the reference DAG (examples/reference-dag.yaml), each with
//! the class the README's table documents for it.

use super::*;
use crate::spec::SpecFormat;
use crate::spec::tests::{Catalog, REFERENCE};

fn load(text: &str) -> Dag {
    Dag::load(text, SpecFormat::Yaml, &Catalog)
        .unwrap_or_else(|e| panic!("the edited spec must validate: {e}\n{text}"))
}

/// The reference spec at version 2 with each `(from, to)` replaced once; a `from` that is
/// not in the spec fails the test, so that no row silently tests nothing.
fn edited(edits: &[(&str, &str)]) -> String {
    let mut text = REFERENCE.replacen("version: 1 ", "version: 2 ", 1);
    assert_ne!(text, REFERENCE, "the reference spec has a version line");
    for (from, to) in edits {
        assert!(text.contains(from), "{from:?} is not in the reference spec");
        text = text.replacen(from, to, 1);
    }
    text
}

struct Row {
    what: &'static str,
    edits: &'static [(&'static str, &'static str)],
    /// Every change expected, `(location, class)`, besides the version's own.
    expected: &'static [(&'static str, ChangeClass)],
}

use ChangeClass::{Backfilled, Refused, Safe};

const NEW_TASK_NODE: &str = "  images-site-output:    {type: publish, stream: images-site, topic-name: images_site}\n  site-qc: {type: external-task, stream: images-site, task-name: extract-site-features}\n  site-qc-output: {type: publish, stream: site-qc, topic-name: site_features}\n";

const ROWS: &[Row] = &[
    Row {
        what: "a task's URL",
        edits: &[(
            "${image-metrics-url}/v1/image-metrics",
            "${image-metrics-url}/v2/image-metrics",
        )],
        expected: &[("tasks.image-metrics", Safe)],
    },
    Row {
        what: "a task's limits, retries and timeout",
        edits: &[
            (
                "max-inflight: 64\n    retries: 5",
                "max-inflight: 32\n    retries: 8",
            ),
            ("timeout: 10s", "timeout: 20s"),
        ],
        expected: &[
            ("tasks.image-metrics", Safe),
            ("tasks.image-metrics", Safe),
            ("tasks.image-metrics", Safe),
        ],
    },
    Row {
        what: "a variable's default",
        edits: &[(
            "site-features-url: http://127.0.0.1:9102",
            "site-features-url: http://10.0.0.7:9102",
        )],
        expected: &[("variables.site-features-url", Safe)],
    },
    Row {
        what: "an incomplete timeout",
        edits: &[("incomplete-timeout: 10m", "incomplete-timeout: 30m")],
        expected: &[("graph.images-site", Safe)],
    },
    Row {
        what: "a new task node on a stream that already ran, and its publish node",
        edits: &[(
            "  images-site-output:    {type: publish, stream: images-site, topic-name: images_site}\n",
            NEW_TASK_NODE,
        )],
        expected: &[
            ("graph.site-qc", Backfilled),
            ("graph.site-qc-output", Safe),
        ],
    },
    Row {
        what: "a new grouping over a stream that already ran",
        edits: &[(
            "  images-site-output:",
            "  images-site-again:\n    type: stream-operation\n    inputs: [images-channel, experiment-metadata]\n    function: aggregations/images-site-grouping\n  images-site-output:",
        )],
        expected: &[("graph.images-site-again", Backfilled)],
    },
    Row {
        what: "a new input topic and its stream node",
        edits: &[
            (
                "  images_channel:      {value-schema: channel_level, partitions: 8}\n",
                "  images_channel:      {value-schema: channel_level, partitions: 8}\n  images_rescan:       {value-schema: channel_level}\n",
            ),
            (
                "  images-channel:      {type: topic-stream, topic-name: images_channel}\n",
                "  images-channel:      {type: topic-stream, topic-name: images_channel}\n  images-rescan:       {type: topic-stream, topic-name: images_rescan}\n",
            ),
        ],
        expected: &[
            ("topics.images_rescan", Safe),
            ("graph.images-rescan", Safe),
        ],
    },
    Row {
        what: "a compatible schema change (a new optional field)",
        edits: &[(
            "      cell_count: int\n",
            "      cell_count: int\n      model: string?\n",
        )],
        expected: &[("schemas.site_features", Safe)],
    },
    Row {
        what: "a publish node removed",
        edits: &[(
            "  images-site-output:    {type: publish, stream: images-site, topic-name: images_site}\n",
            "",
        )],
        expected: &[("graph.images-site-output", Safe)],
    },
    Row {
        what: "a grouping's level changed (the well grouping becomes a second site grouping)",
        edits: &[
            (
                "    inputs: [images-site, experiment-metadata]\n    function: aggregations/sites-well-grouping\n    value-schema: well_level",
                "    inputs: [images-channel, experiment-metadata]\n    function: aggregations/images-site-grouping\n    value-schema: site_level",
            ),
            (
                "  images-well-output:     {type: publish, stream: images-well, topic-name: images_well}\n  well-thumbnails:        {type: external-task, stream: images-well, task-name: well-thumbnails}\n  well-thumbnails-output: {type: publish, stream: well-thumbnails, topic-name: well_thumbnails}\n",
                "",
            ),
            (
                "inputs: [images-well, experiment-metadata]",
                "inputs: [images-well-v2, experiment-metadata]",
            ),
            (
                "  images-plate:\n",
                "  images-well-v2:\n    type: stream-operation\n    inputs: [images-site, experiment-metadata]\n    function: aggregations/sites-well-grouping\n  images-plate:\n",
            ),
        ],
        expected: &[
            ("graph.images-well", Refused),
            ("graph.images-well", Refused),
            ("graph.images-well", Refused),
            ("graph.images-well-output", Safe),
            ("graph.well-thumbnails", Safe),
            ("graph.well-thumbnails-output", Safe),
            ("graph.images-well-v2", Backfilled),
            ("graph.images-plate", Safe),
        ],
    },
    Row {
        what: "the partition count of a grouping",
        edits: &[(
            "    value-schema: plate_level\n",
            "    value-schema: plate_level\n    partitions: 16\n",
        )],
        expected: &[("graph.images-plate", Refused)],
    },
    Row {
        what: "the DAG's partitions, which every grouping and task without its own takes",
        edits: &[(
            "  partitions: 8                      #",
            "  partitions: 4                      #",
        )],
        expected: &[
            ("graph.image-metrics", Refused),
            ("graph.images-site", Refused),
            ("graph.site-features", Refused),
            ("graph.images-well", Refused),
            ("graph.well-thumbnails", Refused),
            ("graph.images-plate", Refused),
            ("graph.plate-features", Refused),
            ("graph.images-experiment", Refused),
        ],
    },
    Row {
        what: "the table topic that holds the layouts, removed and replaced",
        edits: &[
            (
                "  experiment_metadata: {value-schema: experiment_metadata, partitions: 1}\n",
                "  layouts: {value-schema: experiment_metadata, partitions: 1}\n",
            ),
            (
                "{type: topic-table,  topic-name: experiment_metadata}",
                "{type: topic-table,  topic-name: layouts}",
            ),
        ],
        expected: &[
            ("topics.experiment_metadata", Refused),
            ("topics.layouts", Safe),
            ("graph.experiment-metadata", Refused),
        ],
    },
    Row {
        what: "a schema change that breaks the records a topic holds",
        edits: &[
            (
                "  images_channel:      {value-schema: channel_level, partitions: 8}\n",
                "  images_channel:      {value-schema: channel_v2, partitions: 8}\n",
            ),
            (
                "schemas:\n",
                "schemas:\n  channel_v2:\n    fields:\n      experiment_id: string\n      cell_type: string\n      plate_number: int\n      plate_barcode: string\n      well: string\n      site: int\n      channel: int\n      location: string\n      exposure_ms: double\n",
            ),
        ],
        expected: &[
            ("schemas.channel_v2", Safe),
            ("topics.images_channel", Refused),
        ],
    },
    Row {
        what: "a grouping removed",
        edits: &[(
            "  images-experiment:\n    type: stream-operation\n    inputs: [images-plate, experiment-metadata]\n    function: aggregations/plates-experiment-grouping\n    value-schema: experiment_level\n    incomplete-timeout: 7d\n  experiment-output:      {type: publish, stream: images-experiment, topic-name: experiments}\n",
            "",
        )],
        expected: &[
            ("graph.experiment-output", Safe),
            ("graph.images-experiment", Refused),
        ],
    },
];

#[test]
fn each_change_to_the_reference_dag_is_classified_as_documented() {
    let old = load(REFERENCE);
    assert_eq!(old.version, 1);
    for row in ROWS {
        let new = load(&edited(row.edits));
        let report = compare(&old, &new).unwrap();
        let mut found: Vec<(&str, ChangeClass)> = report
            .changes
            .iter()
            .filter(|c| c.location != "version")
            .map(|c| (c.location.as_str(), c.class))
            .collect();
        let mut expected = row.expected.to_vec();
        found.sort();
        expected.sort();
        assert_eq!(found, expected, "{}: {:#?}", row.what, report.changes);
        let version = &report.changes[0];
        assert_eq!(
            (version.location.as_str(), version.class),
            ("version", Safe),
            "{}",
            row.what
        );
        let worst = expected.iter().map(|(_, c)| *c).max().unwrap_or(Safe);
        assert_eq!(report.verdict(), worst, "{}", row.what);
        assert_eq!(report.allowed(), worst != Refused, "{}", row.what);
        for change in &report.changes {
            assert!(!change.reason.is_empty(), "{}: {change:?}", row.what);
            if change.class != Safe {
                assert!(
                    change.advice.as_deref().is_some_and(|a| !a.is_empty()),
                    "{}: a {} change says what to do: {change:?}",
                    row.what,
                    change.class
                );
            }
        }
    }
}

#[test]
fn the_same_spec_is_no_change_and_a_new_version_alone_is_safe() {
    let old = load(REFERENCE);
    let report = compare(&old, &load(REFERENCE)).unwrap();
    assert!(report.changes.is_empty(), "{:?}", report.changes);
    assert!(report.allowed());
    let report = compare(&old, &load(&edited(&[]))).unwrap();
    assert_eq!(report.changes.len(), 1, "{:?}", report.changes);
    assert_eq!(report.changes[0].class, Safe);
    assert_eq!((report.old_version, report.new_version), (1, 2));
}

#[test]
fn a_change_without_a_new_version_or_to_a_lower_one_is_refused() {
    let old = load(REFERENCE);
    let same_version = REFERENCE.replacen("timeout: 10s", "timeout: 20s", 1);
    let report = compare(&old, &load(&same_version)).unwrap();
    let refused: Vec<&Change> = report.refused().collect();
    assert_eq!(refused.len(), 1, "{:?}", report.changes);
    assert_eq!(refused[0].location, "version");
    assert!(
        refused[0]
            .advice
            .as_deref()
            .is_some_and(|a| a.contains("version: 2")),
        "{refused:?}"
    );
    // The timeout itself is still reported, as safe.
    assert!(
        report
            .changes
            .iter()
            .any(|c| c.location == "tasks.image-metrics" && c.class == Safe)
    );

    let newer = load(&edited(&[]));
    let report = compare(&newer, &old).unwrap();
    assert!(!report.allowed());
    assert!(
        report.changes[0]
            .advice
            .as_deref()
            .is_some_and(|a| a.contains("version 3")),
        "{:?}",
        report.changes
    );
}

#[test]
fn specs_of_two_dags_are_not_an_upgrade() {
    let old = load(REFERENCE);
    let other = load(&REFERENCE.replacen("name: microscopy-reference", "name: other-lab", 1));
    assert_eq!(
        compare(&old, &other).unwrap_err(),
        UpgradeError::DifferentDags {
            old: "microscopy-reference".into(),
            new: "other-lab".into()
        }
    );
}

#[test]
fn schema_compatibility_follows_what_stored_records_hold() {
    let schemas = SchemaSet::with_builtins();
    let schema = |fields: &[(&str, &str)]| Schema {
        builtin: false,
        ..Schema::builtin("s", fields)
    };
    let old = schema(&[("a", "int"), ("b", "string")]);
    // Widening and optional additions keep every stored record valid.
    assert!(
        breaking_changes(&old, &schema(&[("a", "long"), ("b", "string")]), &schemas).is_empty()
    );
    assert!(
        breaking_changes(
            &old,
            &schema(&[("a", "int"), ("b", "string"), ("c", "double?")]),
            &schemas
        )
        .is_empty()
    );
    assert!(
        breaking_changes(&old, &schema(&[("a", "int"), ("b", "string?")]), &schemas).is_empty()
    );
    assert!(breaking_changes(&old, &schema(&[("a", "int")]), &schemas).is_empty());
    // A new required field, a narrowed type, and rejecting what was ignored break them.
    let new_required = breaking_changes(
        &old,
        &schema(&[("a", "int"), ("b", "string"), ("c", "int")]),
        &schemas,
    );
    assert!(
        new_required[0].contains("field c is new and required"),
        "{new_required:?}"
    );
    let narrowed = breaking_changes(&old, &schema(&[("a", "string"), ("b", "string")]), &schemas);
    assert!(
        narrowed[0].contains("field a changes type int -> string"),
        "{narrowed:?}"
    );
    let optional_to_required = breaking_changes(
        &schema(&[("a", "int?")]),
        &schema(&[("a", "int")]),
        &schemas,
    );
    assert_eq!(optional_to_required.len(), 1);
    let strict = Schema {
        additional_fields: AdditionalFields::Reject,
        ..old.clone()
    };
    assert!(breaking_changes(&old, &strict, &schemas)[0].contains("ignore -> reject"));
}
