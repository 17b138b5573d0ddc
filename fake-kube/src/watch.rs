//! Watch streams: newline-delimited JSON events over a streamed response body.
//!
//! A watch subscribes to the store's event channel under the store's lock, at the time of
//! the request, so that every write after its snapshot or replay reaches it exactly once.
//! Events are filtered by the watch's namespace and selectors. A selector is applied to
//! both sides of a modification, as the real server does: an object that starts matching
//! arrives as ADDED, one that stops matching leaves as DELETED (carrying its new state).
//!
//! A watch that falls behind the channel's capacity is not let to skip events: it gets a
//! 410 Expired ERROR event and ends, and the client lists again (kube's watcher does).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use serde_json::{Value, json};
use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::time::Instant;

use crate::Shared;
use crate::resource::{Resource, Scope};
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::store::{Event, EventType, Since};

/// The annotation of the bookmark that closes a watch's initial events
/// (`sendInitialEvents=true`, the streaming-list protocol kube's watcher may use).
const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

/// What a watch request asked for.
#[derive(Debug, Clone)]
pub(crate) struct WatchRequest {
    pub(crate) resource: Resource,
    pub(crate) scope: Scope,
    pub(crate) since: Since,
    pub(crate) labels: LabelSelector,
    pub(crate) fields: FieldSelector,
    pub(crate) timeout: Duration,
    /// `allowWatchBookmarks=true`.
    pub(crate) bookmarks: bool,
    /// `sendInitialEvents=true`: end the snapshot with a bookmark saying so.
    pub(crate) send_initial_events: bool,
}

/// One open watch.
pub(crate) struct Watch {
    shared: Arc<Shared>,
    request: WatchRequest,
    /// Lines ready to send.
    pending: VecDeque<Bytes>,
    /// `None` once the watch has nothing more to say beyond `pending`.
    events: Option<Receiver<Arc<Event>>>,
    /// The newest resourceVersion this watch has accounted for, sent or filtered out;
    /// older events reaching it again are duplicates.
    seen: u64,
    deadline: Instant,
    last_sent: Instant,
    outages: tokio::sync::watch::Receiver<u64>,
}

enum Wake {
    Received(Result<Arc<Event>, RecvError>),
    Bookmark,
    Timeout,
    Unavailable,
}

impl Watch {
    pub(crate) fn start(shared: Arc<Shared>, request: WatchRequest) -> Self {
        let subscription =
            shared
                .store
                .lock()
                .subscribe(&request.resource, &request.scope, request.since);
        let now = Instant::now();
        let outages = shared.outages.subscribe();
        let mut watch = Self {
            shared,
            deadline: now + request.timeout,
            request,
            pending: VecDeque::new(),
            events: None,
            seen: 0,
            last_sent: now,
            outages,
        };
        let subscription = match subscription {
            Ok(subscription) => subscription,
            Err(expired) => {
                watch.push_error(&expired);
                return watch;
            }
        };
        for object in &subscription.snapshot {
            if watch.selects(object) {
                watch.push("ADDED", object);
            }
        }
        if watch.request.send_initial_events {
            watch.push_bookmark(subscription.resource_version, true);
        }
        if let Since::After(version) = watch.request.since {
            watch.seen = version;
        }
        for event in &subscription.replay {
            watch.offer(event);
        }
        watch.seen = watch.seen.max(subscription.resource_version);
        watch.events = Some(subscription.events);
        watch
    }

    pub(crate) fn into_body(self) -> Body {
        Body::from_stream(futures::stream::unfold(self, |mut watch| async move {
            let line = watch.next_line().await?;
            Some((Ok::<_, Infallible>(line), watch))
        }))
    }

    async fn next_line(&mut self) -> Option<Bytes> {
        loop {
            if let Some(line) = self.pending.pop_front() {
                return Some(line);
            }
            let bookmarks = self.request.bookmarks;
            let bookmark_at = self.last_sent + *self.shared.bookmark_interval.lock();
            let deadline = self.deadline;
            let events = self.events.as_mut()?;
            let outages = &mut self.outages;
            let wake = tokio::select! {
                received = events.recv() => Wake::Received(received),
                () = tokio::time::sleep_until(bookmark_at), if bookmarks => Wake::Bookmark,
                () = tokio::time::sleep_until(deadline) => Wake::Timeout,
                _ = outages.changed() => Wake::Unavailable,
            };
            match wake {
                Wake::Received(Ok(event)) => self.offer(&event),
                Wake::Received(Err(RecvError::Lagged(_))) => self.fall_behind(),
                Wake::Bookmark => self.bookmark(),
                // The API going away cuts its connections: the client sees the stream end.
                Wake::Received(Err(RecvError::Closed)) | Wake::Timeout | Wake::Unavailable => {
                    return None;
                }
            }
        }
    }

    /// Sends what an event means to this watch, if anything.
    fn offer(&mut self, event: &Event) {
        if event.resource_version <= self.seen {
            return;
        }
        self.seen = event.resource_version;
        if event.collection.resource != self.request.resource
            || !self.request.scope.contains(&event.collection.namespace)
        {
            return;
        }
        let now = self.selects(&event.object);
        let before = event.previous.as_ref().is_some_and(|p| self.selects(p));
        let kind = match (event.kind, before, now) {
            (EventType::Added, _, true) => "ADDED",
            (EventType::Deleted, _, true) => "DELETED",
            (EventType::Modified, true, true) => "MODIFIED",
            (EventType::Modified, false, true) => "ADDED",
            (EventType::Modified, true, false) => "DELETED",
            _ => return,
        };
        self.push(kind, &event.object);
    }

    fn selects(&self, object: &Value) -> bool {
        self.request.labels.matches(object) && self.request.fields.matches(object)
    }

    /// A bookmark promises that every event up to its resourceVersion has been sent, so
    /// it may only name the current version once the channel holds nothing older: drain
    /// it under the store's lock (writers send under that lock too) and send what it held
    /// first.
    fn bookmark(&mut self) {
        let mut drained = Vec::new();
        let mut lagged = false;
        let current = {
            let store = self.shared.store.lock();
            if let Some(events) = self.events.as_mut() {
                loop {
                    match events.try_recv() {
                        Ok(event) => drained.push(event),
                        Err(TryRecvError::Lagged(_)) => {
                            lagged = true;
                            break;
                        }
                        Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                    }
                }
            }
            store.resource_version()
        };
        for event in &drained {
            self.offer(event);
        }
        if lagged {
            self.fall_behind();
            return;
        }
        self.seen = self.seen.max(current);
        self.push_bookmark(current, false);
    }

    fn fall_behind(&mut self) {
        let current = self.shared.store.lock().resource_version();
        self.push_error(&ApiError::expired(format!(
            "too old resource version: {} ({current}): the watch fell behind the writes",
            self.seen
        )));
    }

    fn push_bookmark(&mut self, resource_version: u64, initial_events_end: bool) {
        let mut metadata = json!({"resourceVersion": resource_version.to_string()});
        if let (true, Some(fields)) = (initial_events_end, metadata.as_object_mut()) {
            fields.insert(
                "annotations".into(),
                json!({ (INITIAL_EVENTS_END): "true" }),
            );
        }
        let object = json!({
            "kind": self.request.resource.kind(),
            "apiVersion": self.request.resource.api_version(),
            "metadata": metadata,
        });
        self.push("BOOKMARK", &object);
    }

    /// An ERROR event ends the watch.
    fn push_error(&mut self, error: &ApiError) {
        self.push("ERROR", &error.status());
        self.events = None;
    }

    fn push(&mut self, kind: &str, object: &Value) {
        let mut line = json!({"type": kind, "object": object}).to_string();
        line.push('\n');
        self.pending.push_back(Bytes::from(line));
        self.last_sent = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::resource::parse_collection;

    fn watch_pods(shared: &Arc<Shared>, since: Since) -> Watch {
        let pods = parse_collection("/api/v1/namespaces/lab/pods").expect("a collection");
        Watch::start(
            shared.clone(),
            WatchRequest {
                resource: pods.resource,
                scope: Scope::Namespace("lab".into()),
                since,
                labels: LabelSelector::default(),
                fields: FieldSelector::default(),
                timeout: Duration::from_secs(5),
                bookmarks: false,
                send_initial_events: false,
            },
        )
    }

    async fn next(watch: &mut Watch) -> Option<Value> {
        let line = tokio::time::timeout(Duration::from_secs(5), watch.next_line())
            .await
            .expect("the watch answers in time")?;
        Some(serde_json::from_slice(&line).expect("a line is JSON"))
    }

    #[tokio::test]
    async fn a_watch_that_falls_behind_is_expired_rather_than_skipping() {
        let shared = Arc::new(Shared::new(100, 4));
        let pods = parse_collection("/api/v1/namespaces/lab/pods").expect("a collection");
        let mut watch = watch_pods(&shared, Since::Now);
        for i in 0..10 {
            shared
                .store
                .lock()
                .create(&pods, json!({"metadata": {"name": format!("p{i}")}}))
                .expect("created");
        }
        let event = next(&mut watch).await.expect("an event");
        assert_eq!(event["type"], "ERROR", "{event}");
        assert_eq!(event["object"]["code"], 410);
        assert_eq!(event["object"]["reason"], "Expired");
        assert_eq!(
            next(&mut watch).await,
            None,
            "the watch ends after the error"
        );
    }

    #[tokio::test]
    async fn a_watch_sees_each_write_once_across_replay_and_live_events() {
        let shared = Arc::new(Shared::new(100, 64));
        let pods = parse_collection("/api/v1/namespaces/lab/pods").expect("a collection");
        let create = |name: &str| {
            shared
                .store
                .lock()
                .create(&pods, json!({"metadata": {"name": name}}))
                .expect("created")
        };
        create("a");
        create("b");
        let mut watch = watch_pods(&shared, Since::After(1));
        create("c");
        let names: Vec<Value> = [next(&mut watch).await, next(&mut watch).await]
            .into_iter()
            .map(|e| e.expect("an event")["object"]["metadata"]["name"].clone())
            .collect();
        assert_eq!(names, [json!("b"), json!("c")]);
    }
}
