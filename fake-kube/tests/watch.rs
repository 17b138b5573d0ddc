//! Watches over HTTP: initial events, replay from a resourceVersion, live events,
//! expiry, bookmarks, selectors and the ends of a stream.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

fn name(object: &serde_json::Value) -> &str {
    object["metadata"]["name"].as_str().expect("a name")
}

#[tokio::test]
async fn a_watch_from_zero_sends_the_current_objects_then_live_events() {
    let kube = start();
    let client = Client::new(&kube);
    let a = kube.apply(PODS, pod("a", json!({})));
    kube.apply(PODS, pod("b", json!({})));
    kube.apply(LEASES, lease("leader", "node-1"));

    for query in [
        "watch=true&resourceVersion=0",
        "watch=1",
        "watch=true&resourceVersion=",
    ] {
        let mut watch = client.watch(&format!("{PODS}?{query}")).await;
        assert_eq!(watch.expect("ADDED").await, a, "{query}");
        assert_eq!(name(&watch.expect("ADDED").await), "b", "{query}");
    }

    let mut watch = client.watch(&format!("{PODS}?watch=true")).await;
    watch.expect("ADDED").await;
    watch.expect("ADDED").await;

    let created = client.post(PODS, &pod("c", json!({}))).await.body;
    assert_eq!(watch.expect("ADDED").await, created);

    let mut changed = created.clone();
    changed["metadata"]["labels"] = json!({"x": "y"});
    let replaced = client.put(&format!("{PODS}/c"), &changed).await;
    let modified = watch.expect("MODIFIED").await;
    assert_eq!(modified, replaced.body);
    assert_eq!(resource_version(&modified), resource_version(&created) + 1);

    // Writes elsewhere (another resource, another namespace) are not this watch's.
    kube.apply(LEASES, lease("leader", "node-2"));
    kube.apply("/api/v1/namespaces/other/pods", pod("c", json!({})));

    let deleted = client.delete(&format!("{PODS}/c"), None).await;
    let gone = watch.expect("DELETED").await;
    assert_eq!(name(&gone), "c");
    assert_eq!(gone, deleted.body);
    assert_eq!(
        resource_version(&gone),
        resource_version(&modified) + 3,
        "the deletion has the resourceVersion after the two writes elsewhere"
    );
    assert_eq!(kube.resource_version(), resource_version(&gone).to_string());
}

#[tokio::test]
async fn a_watch_from_a_resource_version_replays_what_came_after_it() {
    let kube = start();
    let client = Client::new(&kube);
    let a = kube.apply(PODS, pod("a", json!({})));
    let since = resource_version(&a);
    let mut relabelled = a.clone();
    relabelled["metadata"]["labels"] = json!({"v": "2"});
    let a2 = kube.apply(PODS, relabelled);
    kube.apply(LEASES, lease("leader", "node-1"));
    let b = kube.apply(PODS, pod("b", json!({})));
    let a_gone = kube.remove(PODS, "a").expect("removed");

    let mut watch = client
        .watch(&format!("{PODS}?watch=true&resourceVersion={since}"))
        .await;
    assert_eq!(watch.expect("MODIFIED").await, a2);
    assert_eq!(watch.expect("ADDED").await, b);
    assert_eq!(watch.expect("DELETED").await, a_gone);

    let c = kube.apply(PODS, pod("c", json!({})));
    assert_eq!(watch.expect("ADDED").await, c, "then live events");

    // From the current version: nothing to replay, only what follows.
    let mut watch = client
        .watch(&format!(
            "{PODS}?watch=true&resourceVersion={}",
            kube.resource_version()
        ))
        .await;
    let d = kube.apply(PODS, pod("d", json!({})));
    assert_eq!(watch.expect("ADDED").await, d);
}

#[tokio::test]
async fn a_resource_version_older_than_the_history_expires_the_watch() {
    let kube = start();
    let client = Client::new(&kube);
    kube.set_history_limit(3);
    for name in ["a", "b", "c", "d", "e", "f"] {
        kube.apply(PODS, pod(name, json!({})));
    }

    let mut watch = client
        .watch(&format!("{PODS}?watch=true&resourceVersion=1"))
        .await;
    let error = watch.expect("ERROR").await;
    assert_eq!(
        error,
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "too old resource version: 1 (3)", "reason": "Expired", "code": 410,
        })
    );
    assert_eq!(watch.next().await, None, "the stream ends after the error");

    // The oldest version the history still covers resumes.
    let mut watch = client
        .watch(&format!("{PODS}?watch=true&resourceVersion=3"))
        .await;
    for expected in ["d", "e", "f"] {
        assert_eq!(name(&watch.expect("ADDED").await), expected);
    }
}

#[tokio::test]
async fn bookmarks_come_while_idle_and_only_when_asked_for() {
    let kube = start();
    let client = Client::new(&kube);
    kube.set_bookmark_interval(Duration::from_millis(100));
    kube.apply(PODS, pod("a", json!({})));
    let now = kube.resource_version();

    let mut watch = client
        .watch(&format!(
            "{PODS}?watch=true&allowWatchBookmarks=true&resourceVersion={now}"
        ))
        .await;
    let bookmark = watch.expect("BOOKMARK").await;
    assert_eq!(
        bookmark,
        json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": now}})
    );
    // A write elsewhere moves the bookmark's version past it: nothing older is pending.
    kube.apply(LEASES, lease("leader", "node-1"));
    let moved = loop {
        let bookmark = watch.expect("BOOKMARK").await;
        if bookmark["metadata"]["resourceVersion"] != now {
            break bookmark;
        }
    };
    assert_eq!(
        moved["metadata"]["resourceVersion"],
        kube.resource_version()
    );

    let mut quiet = client
        .watch(&format!(
            "{PODS}?watch=true&timeoutSeconds=1&resourceVersion={}",
            kube.resource_version()
        ))
        .await;
    let started = Instant::now();
    assert_eq!(
        quiet.next().await,
        None,
        "no bookmark unless asked for, and the stream ends at timeoutSeconds"
    );
    let lasted = started.elapsed();
    assert!(
        lasted >= Duration::from_millis(800) && lasted < Duration::from_secs(5),
        "{lasted:?}"
    );
}

#[tokio::test]
async fn send_initial_events_ends_the_snapshot_with_a_bookmark() {
    let kube = start();
    let client = Client::new(&kube);
    kube.apply(PODS, pod("a", json!({})));
    kube.apply(PODS, pod("b", json!({})));
    let mut watch = client
        .watch(&format!(
            "{PODS}?watch=true&allowWatchBookmarks=true&sendInitialEvents=true\
             &resourceVersionMatch=NotOlderThan&resourceVersion="
        ))
        .await;
    assert_eq!(name(&watch.expect("ADDED").await), "a");
    assert_eq!(name(&watch.expect("ADDED").await), "b");
    let end = watch.expect("BOOKMARK").await;
    assert_eq!(
        end["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    assert_eq!(end["metadata"]["resourceVersion"], "2");
    let c = kube.apply(PODS, pod("c", json!({})));
    assert_eq!(watch.expect("ADDED").await, c);
}

#[tokio::test]
async fn selectors_filter_events_and_objects_leaving_them_are_deleted() {
    let kube = start();
    let client = Client::new(&kube);
    kube.apply(PODS, pod("web-1", json!({"app": "web"})));
    kube.apply(PODS, pod("db-1", json!({"app": "db"})));
    let mut watch = client
        .watch(&format!(
            "{PODS}?watch=true&labelSelector={}",
            encode("app=web")
        ))
        .await;
    assert_eq!(name(&watch.expect("ADDED").await), "web-1");

    kube.apply(PODS, pod("db-2", json!({"app": "db"})));
    kube.apply(PODS, pod("web-2", json!({"app": "web"})));
    assert_eq!(
        name(&watch.expect("ADDED").await),
        "web-2",
        "db-2 is filtered"
    );

    let left = kube.apply(PODS, pod("web-1", json!({"app": "db"})));
    assert_eq!(
        watch.expect("DELETED").await,
        left,
        "an object leaving the selection is deleted from the watch's view"
    );
    let joined = kube.apply(PODS, pod("db-1", json!({"app": "web"})));
    assert_eq!(watch.expect("ADDED").await, joined);
    let mut still = joined.clone();
    still["metadata"]["annotations"] = json!({"k": "v"});
    let still = kube.apply(PODS, still);
    assert_eq!(watch.expect("MODIFIED").await, still);

    let mut by_name = client
        .watch(&format!(
            "{PODS}?watch=true&fieldSelector={}",
            encode("metadata.name=db-2")
        ))
        .await;
    assert_eq!(name(&by_name.expect("ADDED").await), "db-2");
    kube.remove(PODS, "web-2");
    kube.remove(PODS, "db-2");
    assert_eq!(name(&by_name.expect("DELETED").await), "db-2");
}

#[tokio::test]
async fn a_watch_over_all_namespaces_sees_every_namespace() {
    let kube = start();
    let client = Client::new(&kube);
    let mut watch = client.watch("/api/v1/pods?watch=true").await;
    kube.apply(PODS, pod("a", json!({})));
    kube.apply("/api/v1/namespaces/other/pods", pod("b", json!({})));
    let first = watch.expect("ADDED").await;
    let second = watch.expect("ADDED").await;
    assert_eq!(
        [
            &first["metadata"]["namespace"],
            &second["metadata"]["namespace"]
        ],
        [&json!("lab"), &json!("other")]
    );
}

#[tokio::test]
async fn scaling_a_deployment_is_a_modified_event_of_the_deployment() {
    let kube = start();
    let client = Client::new(&kube);
    kube.apply(
        DEPLOYMENTS,
        json!({"metadata": {"name": "workers"}, "spec": {"replicas": 1}}),
    );
    let mut watch = client
        .watch(&format!(
            "{DEPLOYMENTS}?watch=true&resourceVersion={}",
            kube.resource_version()
        ))
        .await;
    let scaled = client
        .patch(
            &format!("{DEPLOYMENTS}/workers/scale"),
            MERGE,
            &json!({"spec": {"replicas": 4}}),
        )
        .await;
    let modified = watch.expect("MODIFIED").await;
    assert_eq!(modified["spec"]["replicas"], 4);
    assert_eq!(modified["kind"], "Deployment");
    assert_eq!(resource_version(&modified), scaled.rv());
}

#[tokio::test]
async fn an_unavailable_api_ends_open_watches_and_refuses_new_ones() {
    let kube = start();
    let client = Client::new(&kube);
    // Even an outage over before the watch notices cuts it, as it would a connection.
    let mut blip = client.watch(&format!("{PODS}?watch=true")).await;
    kube.set_unavailable(true);
    kube.set_unavailable(false);
    assert_eq!(blip.next().await, None);

    let mut watch = client.watch(&format!("{PODS}?watch=true")).await;
    kube.set_unavailable(true);
    assert_eq!(watch.next().await, None);
    let refused = client.get(&format!("{PODS}?watch=true")).await;
    assert_eq!(
        (refused.status, refused.reason()),
        (503, "ServiceUnavailable")
    );
    kube.set_unavailable(false);
    let mut watch = client.watch(&format!("{PODS}?watch=true")).await;
    let a = kube.apply(PODS, pod("a", json!({})));
    assert_eq!(watch.expect("ADDED").await, a);
}

#[tokio::test]
async fn fail_next_applies_to_watches_too() {
    let kube = start();
    let client = Client::new(&kube);
    kube.fail_next("GET", PODS, 410, 1);
    let failed = client.get(&format!("{PODS}?watch=true")).await;
    assert_eq!((failed.status, failed.reason()), (410, "Expired"));
    let requests = kube.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].query, "watch=true");
    assert_eq!(requests[0].status, 410);
    let mut watch = client.watch(&format!("{PODS}?watch=true")).await;
    let a = kube.apply(PODS, pod("a", json!({})));
    assert_eq!(watch.expect("ADDED").await, a);
}

#[tokio::test]
async fn dropping_the_server_ends_its_watches_at_once() {
    let kube = start();
    let client = Client::new(&kube);
    let watch = client.watch(&format!("{PODS}?watch=true")).await;
    let started = Instant::now();
    drop(kube);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the drop returns"
    );
    let mut response = watch.into_response().await;
    let ended = tokio::time::timeout(Duration::from_secs(5), response.chunk())
        .await
        .expect("the stream ends in time");
    assert!(
        matches!(ended, Ok(None) | Err(_)),
        "no more events: {ended:?}"
    );
}
