//! A small, real Kubernetes API server on loopback, for tests.
//!
//! [`FakeKube::start`] serves the Kubernetes REST API over plain HTTP on `127.0.0.1`, on
//! its own thread and tokio runtime, so a test of any kind (plain `#[test]`, tokio,
//! actix) can point a real client at it: `kube::Config::new(kube.url().parse()?)`. The
//! test itself reads and writes the same objects synchronously ([`FakeKube::apply`],
//! [`FakeKube::get`], ...), and injects faults ([`FakeKube::set_unavailable`],
//! [`FakeKube::fail_next`]).
//!
//! # What it models
//!
//! What a client's optimistic concurrency and watches depend on, as the real server does
//! it:
//!
//! - Any namespaced resource, stored as JSON, under `/api/v1/namespaces/{ns}/{plural}`
//!   and `/apis/{group}/{version}/namespaces/{ns}/{plural}`; lists and watches also over
//!   all namespaces (`/api/v1/{plural}`).
//! - One global resourceVersion, bumped by every write (an update that changes nothing
//!   is no write: no bump, no event). Objects carry uid, creationTimestamp, generation
//!   (bumped when `spec` changes) and resourceVersion; `generateName` works.
//! - Create (409 AlreadyExists; 422 when a resourceVersion is set or no name is given),
//!   get, list with label selectors (`=`, `==`, `!=`, exists, `!`, `in`, `notin`) and
//!   field selectors (`=`, `==`, `!=` on any dotted path), replace and patch with the
//!   resourceVersion (and uid) in the body as a precondition (409 Conflict with the real
//!   message), delete with `preconditions` (409), delete of a collection.
//! - Patches: JSON merge patch, JSON patch (RFC 6902; a failed `test` is 422), and
//!   strategic merge patch applied as a merge patch.
//! - The `scale` subresource of Deployments, StatefulSets and ReplicaSets
//!   (`autoscaling/v1` `Scale`), and the `status` subresource of anything.
//! - Watches: initial ADDED events from resourceVersion "0" or with
//!   `sendInitialEvents=true` (closed by the `k8s.io/initial-events-end` bookmark),
//!   replay after a given resourceVersion from a bounded history, 410 Expired (an ERROR
//!   event) when that version is older than the history, or when the watch falls behind;
//!   selectors applied to both sides of a change (an object leaving a selection is a
//!   DELETED event), bookmarks, `timeoutSeconds`.
//! - Every error is a `metav1.Status` with the real reason and code.
//!
//! # What it does not
//!
//! No authentication or authorization, no admission or validation of the objects
//! themselves (any JSON object is stored as sent, without defaulting; `status` is
//! writable through the main resource too), no server-side apply (415), no strategic
//! merge semantics for lists, no pagination (`limit` and `continue` are accepted and
//! everything is answered at once), no `resourceVersionMatch` semantics on lists, no
//! dry run (400), no YAML or protobuf, no cluster-scoped resources, no discovery beyond
//! `/version`. Deletion is immediate: finalizers, grace periods and `propagationPolicy`
//! are ignored, and nothing garbage-collects owned objects. The history that watches
//! replay is one for all resources, so writes to any resource age every watch's
//! resourceVersion.

mod http;
mod patch;
mod resource;
mod scale;
mod selector;
mod status;
mod store;
mod watch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::Value;

use crate::resource::{Collection, parse_collection, parse_path};
use crate::status::ApiError;
use crate::store::{Preconditions, Store};

/// How many events the watch history keeps unless a test says otherwise.
const DEFAULT_HISTORY_LIMIT: usize = 1000;
/// How far a watch may fall behind the writes before it is expired.
const CHANNEL_CAPACITY: usize = 4096;
const DEFAULT_BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);

/// One request the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The URL path, without the query.
    pub path: String,
    /// The raw query string, without `?` ("" when none).
    pub query: String,
    pub content_type: Option<String>,
    /// The request body, as text ("" when none).
    pub body: String,
    /// The HTTP status answered.
    pub status: u16,
}

/// A failure injected with [`FakeKube::fail_next`].
struct Fault {
    method: String,
    path_prefix: String,
    status: u16,
    remaining: usize,
}

/// What the server and the test-side API share.
pub(crate) struct Shared {
    pub(crate) store: Mutex<Store>,
    /// While `true`, the API is to look unreachable.
    unavailable: AtomicBool,
    /// How many outages have begun. Open watches end when it moves, even if the outage
    /// is already over when they notice (a flag could have flipped back by then).
    pub(crate) outages: tokio::sync::watch::Sender<u64>,
    pub(crate) bookmark_interval: Mutex<Duration>,
    faults: Mutex<Vec<Fault>>,
    requests: Mutex<Vec<Request>>,
}

impl Shared {
    pub(crate) fn new(history_limit: usize, channel_capacity: usize) -> Self {
        Self {
            store: Mutex::new(Store::new(history_limit, channel_capacity)),
            unavailable: AtomicBool::new(false),
            outages: tokio::sync::watch::Sender::new(0),
            bookmark_interval: Mutex::new(DEFAULT_BOOKMARK_INTERVAL),
            faults: Mutex::new(Vec::new()),
            requests: Mutex::new(Vec::new()),
        }
    }

    /// The failure this request is to get instead of its answer, if any (consuming one of
    /// a `fail_next`'s).
    pub(crate) fn injected_failure(&self, method: &str, path: &str) -> Option<ApiError> {
        if self.unavailable.load(Ordering::SeqCst) {
            return Some(ApiError::unavailable());
        }
        let mut faults = self.faults.lock();
        let index = faults.iter().position(|fault| {
            (fault.method == "*" || fault.method.eq_ignore_ascii_case(method))
                && path.starts_with(&fault.path_prefix)
        })?;
        let fault = &mut faults[index];
        let status = fault.status;
        fault.remaining -= 1;
        if fault.remaining == 0 {
            faults.remove(index);
        }
        Some(ApiError::injected(status, parse_path(path).as_ref()))
    }

    pub(crate) fn record(&self, request: Request) {
        self.requests.lock().push(request);
    }
}

/// A running fake API server. Dropping it stops the server and ends its open watches.
pub struct FakeKube {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FakeKube {
    /// Starts a server on `127.0.0.1`, on a free port.
    pub fn start() -> std::io::Result<FakeKube> {
        let shared = Arc::new(Shared::new(DEFAULT_HISTORY_LIMIT, CHANNEL_CAPACITY));
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let listener = {
            let _context = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let router = http::router(shared.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("fake-kube".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let server =
                        std::future::IntoFuture::into_future(axum::serve(listener, router));
                    tokio::select! {
                        // Serving only ends on an accept error, and then there is nobody
                        // to tell but the clients, which see their connections refused.
                        _ = server => {}
                        _ = stopped => {}
                    }
                });
                // Dropping the runtime here drops every connection still open, watches
                // among them.
                drop(runtime);
            })?;
        Ok(FakeKube {
            shared,
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes as the API would (create, or replace unconditionally: a resourceVersion or
    /// uid in `object` is ignored), bumping the resourceVersion and emitting the watch
    /// event, and returns the stored object. `path_collection` is the collection's URL
    /// path, e.g. `/api/v1/namespaces/lab/pods`.
    ///
    /// # Panics
    ///
    /// If `path_collection` names no namespaced collection, or the object cannot be
    /// stored (not a JSON object, no name nor generateName): a mistake in the test.
    pub fn apply(&self, path_collection: &str, object: Value) -> Value {
        let collection = collection(path_collection);
        match self.shared.store.lock().apply(&collection, object) {
            Ok(stored) => stored,
            Err(error) => panic!("fake-kube: cannot apply to {path_collection}: {error}"),
        }
    }

    /// # Panics
    ///
    /// If `path_collection` names no namespaced collection.
    pub fn get(&self, path_collection: &str, name: &str) -> Option<Value> {
        let collection = collection(path_collection);
        self.shared.store.lock().get(&collection, name).cloned()
    }

    /// The collection's objects, by name.
    ///
    /// # Panics
    ///
    /// If `path_collection` names no namespaced collection.
    pub fn list(&self, path_collection: &str) -> Vec<Value> {
        let collection = collection(path_collection);
        let scope = resource::Scope::Namespace(collection.namespace.clone());
        self.shared.store.lock().list(&collection.resource, &scope)
    }

    /// Deletes as the API would (a new resourceVersion, a DELETED event), returning the
    /// deleted object, or `None` if there was none.
    ///
    /// # Panics
    ///
    /// If `path_collection` names no namespaced collection.
    pub fn remove(&self, path_collection: &str, name: &str) -> Option<Value> {
        let collection = collection(path_collection);
        self.shared
            .store
            .lock()
            .delete(&collection, name, &Preconditions::default())
            .ok()
    }

    /// The current global resourceVersion (what a list would answer).
    pub fn resource_version(&self) -> String {
        self.shared.store.lock().resource_version().to_string()
    }

    /// While set, every request is answered 503 ServiceUnavailable (the API
    /// unreachable), and setting it ends the open watches.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.shared.unavailable.store(unavailable, Ordering::SeqCst);
        if unavailable {
            self.shared.outages.send_modify(|outages| *outages += 1);
        }
    }

    /// Answers the next `n` requests whose method is `method` (any case; `"*"` for any)
    /// and whose path starts with `path_prefix` with `status` (a `metav1.Status` with the
    /// real server's reason for that code; a 409 reads as a stale-resourceVersion
    /// conflict), then behaves normally. Faults are matched in the order they were set.
    pub fn fail_next(&self, method: &str, path_prefix: &str, status: u16, n: usize) {
        if n == 0 {
            return;
        }
        self.shared.faults.lock().push(Fault {
            method: method.to_owned(),
            path_prefix: path_prefix.to_owned(),
            status,
            remaining: n,
        });
    }

    /// Every request so far, in the order they were answered (a watch when its stream
    /// started).
    pub fn requests(&self) -> Vec<Request> {
        self.shared.requests.lock().clone()
    }

    /// Forgets the requests so far.
    pub fn clear_requests(&self) {
        self.shared.requests.lock().clear();
    }

    /// How many events watches can replay (1000 unless set); a watch from an older
    /// resourceVersion gets 410 Expired. Applies at once to the history kept so far.
    pub fn set_history_limit(&self, events: usize) {
        self.shared.store.lock().set_history_limit(events);
    }

    /// How long a watch that asked for bookmarks stays idle before it gets one (1 s
    /// unless set).
    pub fn set_bookmark_interval(&self, every: Duration) {
        *self.shared.bookmark_interval.lock() = every;
    }

    /// Polls `condition` until it holds (`true`) or `timeout` passes (`false`).
    pub fn wait_until(&self, timeout: Duration, condition: impl Fn(&FakeKube) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if condition(self) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            std::thread::sleep((deadline - now).min(Duration::from_millis(10)));
        }
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn collection(path_collection: &str) -> Collection {
    match parse_collection(path_collection) {
        Some(collection) => collection,
        None => panic!(
            "fake-kube: {path_collection:?} is not a namespaced collection path \
             (like /api/v1/namespaces/lab/pods)"
        ),
    }
}
