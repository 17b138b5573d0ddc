use super::*;

/// The built-in groupings plus one custom function, as a runtime would offer them.
pub(crate) struct Catalog;

impl FunctionCatalog for Catalog {
    fn signature(&self, name: &str) -> Option<FunctionSignature> {
        if name == "custom/identity" {
            return Some(FunctionSignature {
                input: "json".into(),
                output: "json".into(),
                table: None,
                description: String::new(),
            });
        }
        builtins::hierarchy()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| s)
    }
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = builtins::hierarchy()
            .into_iter()
            .map(|(n, _)| n.to_owned())
            .collect();
        names.push("custom/identity".into());
        names
    }
}

pub(crate) const REFERENCE: &str = include_str!("../../../examples/reference-dag.yaml");

fn load_yaml(text: &str) -> Result<Dag, SpecErrors> {
    Dag::load(text, SpecFormat::Yaml, &Catalog)
}

fn errors_of(text: &str) -> Vec<SpecError> {
    match load_yaml(text) {
        Ok(_) => panic!("spec should not validate"),
        Err(SpecErrors(errors)) => errors,
    }
}

fn has(errors: &[SpecError], location: &str, field: &str, needle: &str) -> bool {
    errors
        .iter()
        .any(|e| e.location == location && e.field == field && e.message.contains(needle))
}

/// A minimal valid spec; tests break one thing at a time.
const BASE: &str = r#"
name: t
variables: {svc: "http://127.0.0.1:1"}
topics:
  images: {value-schema: channel_level}
  meta: {value-schema: experiment_metadata}
  out: {value-schema: site_level}
tasks:
  call: {url: "${svc}/x", input-schema: site_level}
graph:
  images-channel: {type: topic-stream, topic-name: images}
  metadata: {type: topic-table, topic-name: meta}
  images-site: {type: stream-operation, inputs: [images-channel, metadata], function: aggregations/images-site-grouping}
  call-site: {type: external-task, stream: images-site, task-name: call}
  publish-site: {type: publish, stream: images-site, topic-name: out}
"#;

#[test]
fn the_reference_dag_validates_in_yaml_and_json() {
    let dag = load_yaml(REFERENCE).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(dag.name, "microscopy-reference");
    assert_eq!(dag.nodes.len(), 18);
    // Topological order: every node after its inputs.
    for (i, node) in dag.nodes.iter().enumerate() {
        for up in node.kind.upstream() {
            let j = dag.nodes.iter().position(|n| n.name == up).unwrap();
            assert!(j < i, "{up} must come before {}", node.name);
        }
    }
    assert_eq!(
        dag.output_schema("images-site").as_deref(),
        Some("site_level")
    );
    assert_eq!(
        dag.output_schema("image-metrics").as_deref(),
        Some("image_metrics")
    );
    let TaskDecl::Http(task) = &dag.tasks["image-metrics"] else {
        panic!("an HTTP task")
    };
    assert_eq!(task.max_inflight, 64);
    assert_eq!(task.retries, 5);
    assert!(
        task.success
            .failure(200, |_| Some("Handled".into()))
            .is_some()
    );
    assert_eq!(task.success.failure(200, |_| None), None);
    assert!(task.success.failure(503, |_| None).is_some());

    let json = r#"{"name": "extract-site-level-features",
      "topics": {"images_channels": {"value-schema": "channel_level"},
                 "experiment_metadata": {"value-schema": "experiment_metadata"},
                 "extracted_features": {"value-schema": "json"}},
      "variables": {"features-url": "http://127.0.0.1:1"},
      "tasks": {"extract-features": {"type": "http", "url": "${features-url}/f", "max-inflight": 400, "retries": 5}},
      "graph": {
       "images-channel":      {"type": "topic-stream", "topic-name": "images_channels"},
       "experiment-metadata": {"type": "topic-table",  "topic-name": "experiment_metadata"},
       "images-site":         {"type": "stream-operation",
                               "key-schema": "string", "value-schema": "site_level",
                               "inputs": ["images-channel", "experiment-metadata"],
                               "function": "aggregations/images-site-grouping"},
       "features-site":       {"type": "external-task", "stream": "images-site",
                               "task-name": "extract-features"},
       "features-output":     {"type": "publish", "topic-name": "extracted_features",
                               "stream": "features-site"}}}"#;
    let dag = Dag::load(json, SpecFormat::Json, &Catalog).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(dag.nodes.len(), 5);
}

#[test]
fn base_spec_is_valid() {
    load_yaml(BASE).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn unknown_input_names_node_and_field_with_a_suggestion() {
    let errors = errors_of(&BASE.replace(
        "stream: images-site, task-name",
        "stream: images-sight, task-name",
    ));
    assert!(
        has(
            &errors,
            "graph.call-site",
            "stream",
            "unknown input \"images-sight\" (did you mean \"images-site\"?)"
        ),
        "{errors:?}"
    );
    assert_eq!(errors[0].node(), Some("call-site"));
}

#[test]
fn cycles_are_reported_with_their_path() {
    let spec = format!("{BASE}  loop-a: {{type: stream-operation, inputs: [loop-b, metadata], function: custom/identity}}\n  loop-b: {{type: stream-operation, inputs: [loop-a], function: custom/identity}}\n")
        .replace("function: custom/identity}\n  loop-b", "function: custom/identity}\n  loop-b");
    let errors = errors_of(&spec);
    assert!(
        errors.iter().any(|e| e.location == "graph.loop-a"
            && e.field == "inputs"
            && e.message.contains("is on a cycle")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.location == "graph.loop-b"
            && e.message.contains("loop-a -> loop-b")
            || e.message.contains("loop-b -> loop-a")),
        "{errors:?}"
    );
}

#[test]
fn unknown_schema_task_function_and_topic() {
    let spec = BASE
        .replace(
            "out: {value-schema: site_level}",
            "out: {value-schema: site_levle}",
        )
        .replace("task-name: call}", "task-name: cal}")
        .replace(
            "function: aggregations/images-site-grouping",
            "function: aggregations/images-site-groupin",
        )
        .replace("topic-name: meta}", "topic-name: metaa}");
    let errors = errors_of(&spec);
    assert!(
        has(
            &errors,
            "topics.out",
            "value-schema",
            "unknown schema \"site_levle\" (did you mean \"site_level\"?)"
        ),
        "{errors:?}"
    );
    assert!(
        has(
            &errors,
            "graph.call-site",
            "task-name",
            "unknown task \"cal\" (did you mean \"call\"?)"
        ),
        "{errors:?}"
    );
    assert!(
        has(&errors, "graph.images-site", "function", "unknown function"),
        "{errors:?}"
    );
    assert!(
        has(&errors, "graph.metadata", "topic-name", "not declared"),
        "{errors:?}"
    );
    assert!(errors.len() >= 4, "every error at once: {errors:?}");
}

#[test]
fn schema_mismatch_between_connected_nodes() {
    // The task expects well records but is fed site records.
    let errors = errors_of(&BASE.replace("input-schema: site_level", "input-schema: well_level"));
    assert!(
        has(
            &errors,
            "graph.call-site",
            "stream",
            "schema mismatch: \"images-site\" emits site_level but task call expects well_level"
        ),
        "{errors:?}"
    );
    // Publishing site records to a topic of channel records.
    let errors = errors_of(&BASE.replace(
        "out: {value-schema: site_level}",
        "out: {value-schema: channel_level}",
    ));
    assert!(
        has(&errors, "graph.publish-site", "stream", "schema mismatch"),
        "{errors:?}"
    );
    // Feeding a grouping the wrong level.
    let errors = errors_of(&BASE.replace(
        "aggregations/images-site-grouping",
        "aggregations/wells-plate-grouping",
    ));
    assert!(
        has(
            &errors,
            "graph.images-site",
            "inputs",
            "emits channel_level but function aggregations/wells-plate-grouping expects well_level"
        ),
        "{errors:?}"
    );
}

#[test]
fn structural_errors_name_their_field() {
    let spec = BASE
        .replace(
            "{type: topic-stream, topic-name: images}",
            "{type: topic-stream, topic_name: images}",
        )
        .replace("url: \"${svc}/x\"", "url: \"${svcs}/x\", max-inflight: 0");
    let errors = errors_of(&spec);
    assert!(
        has(
            &errors,
            "graph.images-channel",
            "topic_name",
            "unknown field (did you mean \"topic-name\"?)"
        ),
        "{errors:?}"
    );
    assert!(
        has(&errors, "graph.images-channel", "topic-name", "is required"),
        "{errors:?}"
    );
    assert!(
        has(&errors, "tasks.call", "max-inflight", "from 1 to 100000"),
        "{errors:?}"
    );
    // The broken node is not reported again as an unknown input.
    assert!(
        !errors
            .iter()
            .any(|e| e.message.contains("unknown input \"images-channel\"")),
        "{errors:?}"
    );
}

#[test]
fn template_fields_and_variables_are_checked() {
    let errors = errors_of(&BASE.replace(
        "url: \"${svc}/x\"",
        "url: \"${svcc}/x/{wel}\", body: {a: \"$.input.sitee\", b: \"$.nope\"}",
    ));
    assert!(
        has(
            &errors,
            "tasks.call",
            "url",
            "variable ${svcc} is not declared under variables (did you mean \"svc\"?)"
        ),
        "{errors:?}"
    );
    assert!(
        has(
            &errors,
            "tasks.call",
            "url",
            "site_level has no field \"wel\" (did you mean \"well\"?)"
        ),
        "{errors:?}"
    );
    assert!(
        has(&errors, "tasks.call", "body", "has no field \"sitee\""),
        "{errors:?}"
    );
    assert!(
        has(&errors, "tasks.call", "body", "\"nope\" is not one of"),
        "{errors:?}"
    );
}

#[test]
fn tables_and_publish_nodes_are_used_correctly() {
    let spec = format!(
        "{BASE}  bad-task: {{type: external-task, stream: metadata, task-name: call}}\n  bad-read: {{type: external-task, stream: publish-site, task-name: call}}\n"
    );
    let errors = errors_of(&spec);
    assert!(
        has(&errors, "graph.bad-task", "stream", "is a topic-table"),
        "{errors:?}"
    );
    assert!(
        has(&errors, "graph.bad-read", "stream", "is a publish node"),
        "{errors:?}"
    );
    let errors = errors_of(&BASE.replace(
        "inputs: [images-channel, metadata]",
        "inputs: [images-channel]",
    ));
    assert!(
        has(
            &errors,
            "graph.images-site",
            "inputs",
            "needs a topic-table input"
        ),
        "{errors:?}"
    );
}

#[test]
fn malformed_documents_are_errors_not_panics() {
    for (text, format) in [
        ("{", SpecFormat::Json),
        ("a: [", SpecFormat::Yaml),
        ("[1, 2]", SpecFormat::Json),
        ("", SpecFormat::Yaml),
        ("name: x", SpecFormat::Yaml),
    ] {
        let err = Dag::load(text, format, &Catalog).unwrap_err();
        assert!(!err.0.is_empty(), "{text:?}");
    }
}

#[test]
fn renders_mermaid_and_dot() {
    let dag = load_yaml(REFERENCE).unwrap();
    let mermaid = to_mermaid(&dag);
    assert!(mermaid.contains("flowchart LR"));
    assert_eq!(
        mermaid.matches("-->").count() + mermaid.matches("-.->").count(),
        20
    );
    let dot = to_dot(&dag);
    assert!(dot.starts_with("digraph \"microscopy-reference\""));
    assert!(dot.contains("\"images-site\" -> \"site-features\";"));
    assert!(dot.contains("\"experiment-metadata\" -> \"images-site\" [style=dashed];"));
}

#[test]
fn variables_can_be_overridden_but_not_invented() {
    let mut dag = load_yaml(BASE).unwrap();
    dag.set_variables(&BTreeMap::from([(
        "svc".into(),
        "http://127.0.0.1:2".into(),
    )]))
    .unwrap();
    assert_eq!(dag.variables["svc"], "http://127.0.0.1:2");
    assert!(
        dag.set_variables(&BTreeMap::from([("nope".into(), "x".into())]))
            .is_err()
    );
}

#[test]
fn the_json_and_yaml_examples_are_the_same_dag() {
    let yaml = load_yaml(REFERENCE).unwrap();
    let json = Dag::load(
        include_str!("../../../examples/reference-dag.json"),
        SpecFormat::Json,
        &Catalog,
    )
    .unwrap();
    assert_eq!(to_dot(&yaml), to_dot(&json));
    assert_eq!(yaml.tasks, json.tasks);
    assert_eq!(yaml.topics, json.topics);
}

#[test]
fn the_version_is_a_whole_number_from_one_and_defaults_to_one() {
    assert_eq!(load_yaml(BASE).unwrap().version, DEFAULT_DAG_VERSION);
    let versioned = BASE.replacen("name: t\n", "name: t\nversion: 7\n", 1);
    let dag = load_yaml(&versioned).unwrap();
    assert_eq!(dag.version, 7);
    assert!(to_mermaid(&dag).contains("title: t version 7"));
    assert!(to_dot(&dag).contains("label=\"t version 7\""));
    assert_eq!(
        dag.source.text, versioned,
        "the spec keeps the text it came from"
    );
    for bad in ["0", "\"2\"", "1.5", "-1"] {
        let errors =
            errors_of(&BASE.replacen("name: t\n", &format!("name: t\nversion: {bad}\n"), 1));
        assert!(
            errors
                .iter()
                .any(|e| e.location.is_empty() && e.field == "version"),
            "version {bad}: {errors:?}"
        );
    }
}
