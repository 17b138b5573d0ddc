//! The fake's HTTP API, request by request: what a client's reads and conditional
//! writes get back.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

const MODIFIED: &str = "the object has been modified; please apply your changes to the latest \
                        version and try again";

async fn listed(client: &Client, query: &str) -> Vec<String> {
    let answer = client.get(&format!("{PODS}?{query}")).await;
    assert_eq!(answer.status, 200, "{query}: {:?}", answer.body);
    names(&answer.body)
}

#[tokio::test]
async fn create_sets_the_identity_and_lists_select_by_labels_and_fields() {
    let kube = start();
    let client = Client::new(&kube);

    let created = client
        .post(PODS, &pod("b", json!({"app": "web", "tier": "front"})))
        .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let meta = &created.body["metadata"];
    assert_eq!(meta["namespace"], "lab");
    assert_eq!(meta["generation"], 1);
    assert_eq!(meta["resourceVersion"], "1");
    let uid = meta["uid"].as_str().expect("a uid");
    assert!(uuid_shaped(uid), "{uid}");
    let created_at = meta["creationTimestamp"].as_str().expect("a timestamp");
    assert!(rfc3339_seconds(created_at), "{created_at}");
    assert_eq!(created.body["spec"], pod("b", json!({}))["spec"]);

    client.post(PODS, &pod("a", json!({"app": "db"}))).await;
    client.post(PODS, &pod("c", json!({"app": "web"}))).await;
    kube.apply(
        "/api/v1/namespaces/other/pods",
        pod("d", json!({"app": "web"})),
    );

    let got = client.get(&format!("{PODS}/b")).await;
    assert_eq!((got.status, &got.body), (200, &created.body));

    let missing = client.get(&format!("{PODS}/nope")).await;
    assert_eq!(missing.status, 404);
    assert_eq!(
        missing.body,
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "pods \"nope\" not found", "reason": "NotFound",
            "details": {"name": "nope", "group": "", "kind": "pods"}, "code": 404,
        })
    );

    let list = client.get(PODS).await;
    assert_eq!(list.body["kind"], "PodList");
    assert_eq!(list.body["apiVersion"], "v1");
    assert_eq!(list.body["metadata"]["resourceVersion"], "4");
    assert_eq!(names(&list.body), ["a", "b", "c"], "sorted, one namespace");

    let select = |selector: &str| format!("labelSelector={}", encode(selector));
    assert_eq!(listed(&client, &select("app=web")).await, ["b", "c"]);
    assert_eq!(listed(&client, &select("app==web,tier=front")).await, ["b"]);
    assert_eq!(listed(&client, &select("app!=web")).await, ["a"]);
    assert_eq!(listed(&client, &select("tier")).await, ["b"]);
    assert_eq!(listed(&client, &select("!tier")).await, ["a", "c"]);
    assert_eq!(
        listed(&client, &select("app in (db,web),!tier")).await,
        ["a", "c"]
    );
    assert_eq!(listed(&client, &select("app notin (web)")).await, ["a"]);
    let field = |selector: &str| format!("fieldSelector={}", encode(selector));
    assert_eq!(listed(&client, &field("metadata.name=b")).await, ["b"]);
    assert_eq!(
        listed(&client, &field("metadata.name!=b,metadata.namespace=lab")).await,
        ["a", "c"]
    );
    assert!(
        listed(&client, &field("metadata.namespace=other"))
            .await
            .is_empty()
    );
    // Pagination is accepted and ignored: everything, and no continue token.
    let paged = client.get(&format!("{PODS}?limit=1&continue=")).await;
    assert_eq!(names(&paged.body), ["a", "b", "c"]);
    assert_eq!(paged.body["metadata"].get("continue"), None);

    let bad = client
        .get(&format!("{PODS}?{}", select("app in web")))
        .await;
    assert_eq!((bad.status, bad.reason()), (400, "BadRequest"));

    let everywhere = client.get("/api/v1/pods").await;
    assert_eq!(names(&everywhere.body), ["a", "b", "c", "d"]);
    assert_eq!(
        everywhere.body["items"][3]["metadata"]["namespace"],
        "other"
    );

    client.post(LEASES, &lease("leader", "node-1")).await;
    let leases = client.get(LEASES).await;
    assert_eq!(leases.body["kind"], "LeaseList");
    assert_eq!(leases.body["apiVersion"], "coordination.k8s.io/v1");
    assert_eq!(names(&leases.body), ["leader"]);
    assert_eq!(leases.body["items"][0]["kind"], "Lease");
}

#[tokio::test]
async fn create_refuses_duplicates_preset_versions_and_nameless_objects() {
    let kube = start();
    let client = Client::new(&kube);
    assert_eq!(client.post(PODS, &pod("a", json!({}))).await.status, 201);

    let duplicate = client.post(PODS, &pod("a", json!({"new": "x"}))).await;
    assert_eq!(duplicate.status, 409);
    assert_eq!(duplicate.reason(), "AlreadyExists");
    assert_eq!(duplicate.body["message"], "pods \"a\" already exists");
    assert_eq!(duplicate.body["details"]["name"], "a");
    assert_eq!(kube.resource_version(), "1", "a refused write is no write");
    assert_eq!(
        kube.get(PODS, "a").expect("stored")["metadata"].get("labels"),
        Some(&json!({}))
    );

    let mut versioned = pod("b", json!({}));
    versioned["metadata"]["resourceVersion"] = json!("1");
    let refused = client.post(PODS, &versioned).await;
    assert_eq!((refused.status, refused.reason()), (422, "Invalid"));
    assert!(kube.get(PODS, "b").is_none());

    let nameless = client
        .post(PODS, &json!({"metadata": {"labels": {"a": "b"}}}))
        .await;
    assert_eq!((nameless.status, nameless.reason()), (422, "Invalid"));

    let elsewhere = client
        .post(
            PODS,
            &json!({"metadata": {"name": "x", "namespace": "other"}}),
        )
        .await;
    assert_eq!((elsewhere.status, elsewhere.reason()), (400, "BadRequest"));

    let generated = json!({"metadata": {"generateName": "worker-"}, "spec": {}});
    let first = client.post(PODS, &generated).await;
    let second = client.post(PODS, &generated).await;
    assert_eq!((first.status, second.status), (201, 201));
    let name = |a: &Answer| {
        a.body["metadata"]["name"]
            .as_str()
            .expect("a name")
            .to_owned()
    };
    for generated_name in [name(&first), name(&second)] {
        let suffix = generated_name
            .strip_prefix("worker-")
            .expect("the generateName prefix");
        assert_eq!(suffix.len(), 5, "{generated_name}");
        assert!(
            suffix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
        assert!(kube.get(PODS, &generated_name).is_some());
    }
    assert_ne!(name(&first), name(&second));
}

#[tokio::test]
async fn replace_is_conditional_on_the_resource_version() {
    let kube = start();
    let client = Client::new(&kube);
    let path = format!("{LEASES}/leader");
    let created = client.post(LEASES, &lease("leader", "node-1")).await.body;

    let mut renewed = created.clone();
    renewed["spec"]["holderIdentity"] = json!("node-2");
    let replaced = client.put(&path, &renewed).await;
    assert_eq!(replaced.status, 200, "{:?}", replaced.body);
    assert!(replaced.rv() > resource_version(&created));
    assert_eq!(replaced.body["spec"]["holderIdentity"], "node-2");
    assert_eq!(replaced.body["metadata"]["uid"], created["metadata"]["uid"]);
    assert_eq!(
        replaced.body["metadata"]["creationTimestamp"],
        created["metadata"]["creationTimestamp"]
    );
    assert_eq!(
        replaced.body["metadata"]["generation"], 2,
        "the spec changed"
    );

    // Another writer still holding the first version loses.
    let mut stale = created.clone();
    stale["spec"]["holderIdentity"] = json!("node-3");
    let conflict = client.put(&path, &stale).await;
    assert_eq!(conflict.status, 409);
    assert_eq!(
        conflict.body,
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!(
                "Operation cannot be fulfilled on leases.coordination.k8s.io \"leader\": {MODIFIED}"
            ),
            "reason": "Conflict",
            "details": {"name": "leader", "group": "coordination.k8s.io", "kind": "leases"},
            "code": 409,
        })
    );
    assert_eq!(
        kube.get(LEASES, "leader").expect("stored")["spec"]["holderIdentity"],
        "node-2"
    );

    // A change outside the spec leaves the generation; an identical write is no write.
    let mut labelled = replaced.body.clone();
    labelled["metadata"]["labels"] = json!({"role": "leader"});
    let relabelled = client.put(&path, &labelled).await;
    assert_eq!(relabelled.status, 200);
    assert_eq!(relabelled.body["metadata"]["generation"], 2);
    let again = client.put(&path, &relabelled.body).await;
    assert_eq!((again.status, again.rv()), (200, relabelled.rv()));

    // Without a resourceVersion the replace is unconditional.
    let unconditional = client.put(&path, &lease("leader", "node-4")).await;
    assert_eq!(unconditional.status, 200);
    assert!(unconditional.rv() > relabelled.rv());
    assert_eq!(unconditional.body["spec"]["holderIdentity"], "node-4");
    assert_eq!(
        unconditional.body["metadata"]["uid"],
        created["metadata"]["uid"]
    );

    let renamed = client.put(&path, &lease("follower", "node-4")).await;
    assert_eq!((renamed.status, renamed.reason()), (400, "BadRequest"));
    let missing = client
        .put(&format!("{LEASES}/absent"), &lease("absent", "x"))
        .await;
    assert_eq!((missing.status, missing.reason()), (404, "NotFound"));
}

#[tokio::test]
async fn patches_merge_apply_json_patches_and_honour_preconditions() {
    let kube = start();
    let client = Client::new(&kube);
    let path = format!("{PODS}/a");
    let created = client
        .post(PODS, &pod("a", json!({"app": "web", "old": "x"})))
        .await
        .body;
    let version = created["metadata"]["resourceVersion"].clone();

    let merged = client
        .patch(
            &path,
            MERGE,
            &json!({"metadata": {"resourceVersion": version, "labels": {"old": null, "new": "y"}}}),
        )
        .await;
    assert_eq!(merged.status, 200, "{:?}", merged.body);
    assert_eq!(
        merged.body["metadata"]["labels"],
        json!({"app": "web", "new": "y"})
    );
    assert_eq!(merged.rv(), resource_version(&created) + 1);

    let stale = client
        .patch(
            &path,
            MERGE,
            &json!({"metadata": {"resourceVersion": version, "labels": {"app": "db"}}}),
        )
        .await;
    assert_eq!((stale.status, stale.reason()), (409, "Conflict"));
    assert_eq!(
        stale.body["message"],
        format!("Operation cannot be fulfilled on pods \"a\": {MODIFIED}")
    );
    assert_eq!(
        kube.get(PODS, "a").expect("stored")["metadata"]["labels"]["app"],
        "web"
    );

    let strategic = client
        .patch(
            &path,
            STRATEGIC,
            &json!({"metadata": {"annotations": {"k": "v"}}}),
        )
        .await;
    assert_eq!(strategic.status, 200);
    assert_eq!(strategic.body["metadata"]["annotations"], json!({"k": "v"}));

    let before = kube.get(PODS, "a").expect("stored");
    let failed = client
        .patch(
            &path,
            JSON_PATCH,
            &json!([
                {"op": "replace", "path": "/metadata/labels/app", "value": "db"},
                {"op": "test", "path": "/metadata/labels/new", "value": "not-y"},
            ]),
        )
        .await;
    assert_eq!((failed.status, failed.reason()), (422, "Invalid"));
    assert_eq!(
        kube.get(PODS, "a"),
        Some(before),
        "a failed patch changes nothing"
    );

    let patched = client
        .patch(
            &path,
            JSON_PATCH,
            &json!([
                {"op": "test", "path": "/metadata/labels/new", "value": "y"},
                {"op": "replace", "path": "/metadata/labels/app", "value": "db"},
                {"op": "add", "path": "/spec/containers/-", "value": {"name": "sidecar"}},
            ]),
        )
        .await;
    assert_eq!(patched.status, 200, "{:?}", patched.body);
    assert_eq!(patched.body["metadata"]["labels"]["app"], "db");
    assert_eq!(patched.body["spec"]["containers"][1]["name"], "sidecar");
    assert_eq!(patched.body["metadata"]["generation"], 2);

    let stale_json_patch = client
        .patch(
            &path,
            JSON_PATCH,
            &json!([{"op": "replace", "path": "/metadata/resourceVersion", "value": "1"}]),
        )
        .await;
    assert_eq!(stale_json_patch.status, 409);

    let apply = client
        .send(
            "PATCH",
            &path,
            Some("application/apply-patch+yaml"),
            Some(&json!({})),
        )
        .await;
    assert_eq!(
        (apply.status, apply.reason()),
        (415, "UnsupportedMediaType")
    );
    assert!(
        apply.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("server-side apply")),
        "{:?}",
        apply.body
    );
    let unknown = client.patch(&path, "application/json", &json!({})).await;
    assert_eq!(unknown.status, 415);
    let malformed = client.patch(&path, MERGE, &json!([1])).await;
    assert_eq!((malformed.status, malformed.reason()), (400, "BadRequest"));
    let missing = client
        .patch(&format!("{PODS}/absent"), MERGE, &json!({}))
        .await;
    assert_eq!(missing.status, 404);
}

#[tokio::test]
async fn delete_honours_preconditions_and_answers_the_deleted_object() {
    let kube = start();
    let client = Client::new(&kube);
    let path = format!("{PODS}/a");
    let created = client.post(PODS, &pod("a", json!({}))).await.body;
    let uid = created["metadata"]["uid"].clone();
    client.post(PODS, &pod("b", json!({}))).await;

    let wrong_version = client
        .delete(
            &path,
            Some(&json!({"preconditions": {"resourceVersion": "999"}})),
        )
        .await;
    assert_eq!(
        (wrong_version.status, wrong_version.reason()),
        (409, "Conflict")
    );
    let wrong_uid = client
        .delete(
            &path,
            Some(&json!({"preconditions": {"uid": "someone-else"}})),
        )
        .await;
    assert_eq!((wrong_uid.status, wrong_uid.reason()), (409, "Conflict"));
    assert!(kube.get(PODS, "a").is_some());
    assert_eq!(kube.resource_version(), "2");

    let deleted = client
        .delete(
            &path,
            Some(&json!({
                "kind": "DeleteOptions", "apiVersion": "v1",
                "propagationPolicy": "Foreground",
                "preconditions": {"resourceVersion": created["metadata"]["resourceVersion"], "uid": uid},
            })),
        )
        .await;
    assert_eq!(deleted.status, 200, "{:?}", deleted.body);
    assert_eq!(deleted.body["metadata"]["name"], "a");
    assert_eq!(deleted.body["metadata"]["uid"], uid);
    assert_eq!(deleted.rv(), 3, "the deletion is a write of its own");
    assert_eq!(kube.resource_version(), "3");
    assert_eq!(client.get(&path).await.status, 404);
    assert_eq!(client.delete(&path, None).await.status, 404);

    assert_eq!(
        client.delete(&format!("{PODS}/b"), None).await.status,
        200,
        "options are optional"
    );
    assert!(kube.list(PODS).is_empty());
}

#[tokio::test]
async fn the_scale_subresource_reads_and_writes_the_deployments_replicas() {
    let kube = start();
    let client = Client::new(&kube);
    let created = client
        .post(
            DEPLOYMENTS,
            &json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "workers"},
                "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "worker"}}},
                "status": {"replicas": 1},
            }),
        )
        .await
        .body;
    let scale_path = format!("{DEPLOYMENTS}/workers/scale");

    let scale = client.get(&scale_path).await;
    assert_eq!(scale.status, 200);
    assert_eq!(scale.body["kind"], "Scale");
    assert_eq!(scale.body["apiVersion"], "autoscaling/v1");
    assert_eq!(scale.body["metadata"]["name"], "workers");
    assert_eq!(scale.body["metadata"]["namespace"], "lab");
    assert_eq!(scale.body["metadata"]["uid"], created["metadata"]["uid"]);
    assert_eq!(scale.rv(), resource_version(&created));
    assert_eq!(scale.body["spec"], json!({"replicas": 2}));
    assert_eq!(
        scale.body["status"],
        json!({"replicas": 1, "selector": "app=worker"})
    );

    let patched = client
        .patch(&scale_path, MERGE, &json!({"spec": {"replicas": 5}}))
        .await;
    assert_eq!(patched.status, 200, "{:?}", patched.body);
    assert_eq!(patched.body["spec"]["replicas"], 5);
    assert!(patched.rv() > scale.rv());
    let deployment = kube.get(DEPLOYMENTS, "workers").expect("stored");
    assert_eq!(deployment["spec"]["replicas"], 5);
    assert_eq!(deployment["metadata"]["generation"], 2);
    assert_eq!(resource_version(&deployment), patched.rv());

    // The Scale's resourceVersion is the deployment's: a stale one conflicts.
    let mut stale = scale.body.clone();
    stale["spec"]["replicas"] = json!(9);
    let conflict = client.put(&scale_path, &stale).await;
    assert_eq!(conflict.status, 409);
    assert_eq!(
        conflict.body["message"],
        format!("Operation cannot be fulfilled on deployments.apps \"workers\": {MODIFIED}")
    );
    assert_eq!(
        kube.get(DEPLOYMENTS, "workers").expect("stored")["spec"]["replicas"],
        5
    );

    let mut current = patched.body.clone();
    current["spec"]["replicas"] = json!(3);
    let replaced = client.put(&scale_path, &current).await;
    assert_eq!(replaced.status, 200, "{:?}", replaced.body);
    assert_eq!(replaced.body["spec"]["replicas"], 3);

    let json_patched = client
        .patch(
            &scale_path,
            JSON_PATCH,
            &json!([{"op": "replace", "path": "/spec/replicas", "value": 4}]),
        )
        .await;
    assert_eq!(json_patched.body["spec"]["replicas"], 4);
    let strategic = client
        .patch(&scale_path, STRATEGIC, &json!({"spec": {"replicas": 0}}))
        .await;
    assert_eq!(strategic.body["spec"]["replicas"], 0);
    assert_eq!(
        kube.get(DEPLOYMENTS, "workers").expect("stored")["spec"]["replicas"],
        0
    );

    let negative = client
        .patch(&scale_path, MERGE, &json!({"spec": {"replicas": -1}}))
        .await;
    assert_eq!(negative.status, 422);
    let absent = client.get(&format!("{DEPLOYMENTS}/absent/scale")).await;
    assert_eq!((absent.status, absent.reason()), (404, "NotFound"));
    client.post(PODS, &pod("p", json!({}))).await;
    assert_eq!(client.get(&format!("{PODS}/p/scale")).await.status, 404);
}

#[tokio::test]
async fn the_status_subresource_writes_only_the_status() {
    let kube = start();
    let client = Client::new(&kube);
    let created = client.post(PODS, &pod("a", json!({}))).await.body;
    let patched = client
        .patch(
            &format!("{PODS}/a/status"),
            MERGE,
            &json!({"status": {"phase": "Running"}, "spec": {"containers": []}}),
        )
        .await;
    assert_eq!(patched.status, 200, "{:?}", patched.body);
    assert_eq!(patched.body["status"]["phase"], "Running");
    assert_eq!(
        patched.body["spec"], created["spec"],
        "only the status moves"
    );
    let stale = client
        .put(
            &format!("{PODS}/a/status"),
            &json!({"metadata": {"name": "a", "resourceVersion": "1"}, "status": {}}),
        )
        .await;
    assert_eq!(stale.status, 409);
}

#[tokio::test]
async fn an_unavailable_api_answers_503_until_it_is_back() {
    let kube = start();
    let client = Client::new(&kube);
    kube.apply(PODS, pod("a", json!({})));
    kube.set_unavailable(true);
    for answer in [
        client.get(&format!("{PODS}/a")).await,
        client.post(PODS, &pod("b", json!({}))).await,
        client.get("/version").await,
    ] {
        assert_eq!(answer.status, 503);
        assert_eq!(answer.reason(), "ServiceUnavailable");
        assert_eq!(answer.body["code"], 503);
    }
    assert!(kube.get(PODS, "b").is_none(), "nothing was written");
    kube.set_unavailable(false);
    assert_eq!(client.get(&format!("{PODS}/a")).await.status, 200);
}

#[tokio::test]
async fn fail_next_fails_the_matching_requests_then_lets_them_through() {
    let kube = start();
    let client = Client::new(&kube);
    let created = client.post(LEASES, &lease("leader", "node-1")).await.body;
    kube.fail_next("put", "/apis/coordination.k8s.io/", 409, 2);
    kube.fail_next("*", "/api/v1", 500, 1);

    let path = format!("{LEASES}/leader");
    for _ in 0..2 {
        let failed = client.put(&path, &created).await;
        assert_eq!((failed.status, failed.reason()), (409, "Conflict"));
        assert_eq!(
            failed.body["message"],
            format!(
                "Operation cannot be fulfilled on leases.coordination.k8s.io \"leader\": {MODIFIED}"
            )
        );
        assert_eq!(client.get(&path).await.status, 200, "GETs are not matched");
    }
    let mut renewed = created.clone();
    renewed["spec"]["holderIdentity"] = json!("node-2");
    assert_eq!(client.put(&path, &renewed).await.status, 200);

    let internal = client.get(PODS).await;
    assert_eq!((internal.status, internal.reason()), (500, "InternalError"));
    assert_eq!(client.get(PODS).await.status, 200);

    let seen: Vec<(String, u16)> = kube
        .requests()
        .into_iter()
        .map(|r| (r.method, r.status))
        .collect();
    let expected = [
        ("POST", 201),
        ("PUT", 409),
        ("GET", 200),
        ("PUT", 409),
        ("GET", 200),
        ("PUT", 200),
        ("GET", 500),
        ("GET", 200),
    ]
    .map(|(m, s)| (m.to_owned(), s));
    assert_eq!(seen, expected);

    client
        .patch(
            &format!("{PODS}/x?fieldManager=test"),
            MERGE,
            &json!({"a": 1}),
        )
        .await;
    let last = kube.requests().pop().expect("a request");
    assert_eq!(last.path, format!("{PODS}/x"));
    assert_eq!(last.query, "fieldManager=test");
    assert_eq!(last.content_type.as_deref(), Some(MERGE));
    assert_eq!(last.body, r#"{"a":1}"#);
    assert_eq!(last.status, 404);
}

#[test]
fn the_test_side_api_writes_as_the_api_does() {
    let kube = start();
    let first = kube.apply(LEASES, lease("leader", "node-1"));
    assert_eq!(first["metadata"]["resourceVersion"], "1");
    assert_eq!(first["metadata"]["namespace"], "lab");
    assert_eq!(first["kind"], "Lease");

    // A stale resourceVersion in the object does not stop a test's write.
    let mut second = first.clone();
    second["metadata"]["resourceVersion"] = json!("0");
    second["spec"]["holderIdentity"] = json!("node-2");
    let second = kube.apply(LEASES, second);
    assert_eq!(second["metadata"]["resourceVersion"], "2");
    assert_eq!(second["metadata"]["uid"], first["metadata"]["uid"]);
    assert_eq!(kube.get(LEASES, "leader"), Some(second.clone()));
    assert_eq!(kube.list(LEASES), vec![second.clone()]);
    assert!(kube.get(PODS, "leader").is_none());

    let removed = kube.remove(LEASES, "leader").expect("it was there");
    assert_eq!(removed["metadata"]["resourceVersion"], "3");
    assert!(kube.remove(LEASES, "leader").is_none());
    assert!(kube.list(LEASES).is_empty());

    let writer = std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(Duration::from_millis(100));
            kube.apply(PODS, pod("late", json!({})));
        });
        kube.wait_until(Duration::from_secs(10), |kube| kube.list(PODS).len() == 1)
    });
    assert!(writer, "the write was seen");
    assert!(!kube.wait_until(Duration::from_millis(50), |kube| kube.list(PODS).is_empty()));
}

#[test]
#[should_panic(expected = "not a namespaced collection path")]
fn the_test_side_api_refuses_a_path_that_is_no_collection() {
    let kube = start();
    kube.get("/api/v1/namespaces/lab/pods/a", "a");
}

fn uuid_shaped(text: &str) -> bool {
    let groups: Vec<usize> = text.split('-').map(str::len).collect();
    groups == [8, 4, 4, 4, 12] && text.chars().all(|c| c == '-' || c.is_ascii_hexdigit())
}

/// `2026-11-22T10:00:00Z`.
fn rfc3339_seconds(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 20
        && text.chars().enumerate().all(|(i, c)| match i {
            4 | 7 => c == '-',
            10 => c == 'T',
            13 | 16 => c == ':',
            19 => c == 'Z',
            _ => c.is_ascii_digit(),
        })
}
