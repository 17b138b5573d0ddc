//! The status view: where every experiment, plate and well of the node's DAGs stands,
//! cluster-wide, for the status API (`crate::api::status`) and `wellspring status`.
//!
//! A thread of its own reads every partition of the DAGs' topics (images,
//! layouts, every publish topic, dead letters, incomplete reports) from the start,
//! outside the consumer groups, into a [`model::Model`] behind a mutex; the API's threads
//! read the model and turn it into the bodies of `wellspring_protocol::status`. Changes
//! are coalesced into Server-Sent Events every 250 ms.
//!
//! - `shape.rs`: what each topic of a DAG means (its level, task output or aggregate);
//! - `model.rs`: the state, as bits per well, bounded;
//! - `queries.rs`: the API's answers from the model;
//! - `reader.rs`: the topics read into the model;
//! - `dags.rs`: each DAG's graph with its counters;
//! - `serve.rs`: the view and its API on a thread of their own (`demo --serve`).

mod dags;
pub mod model;
mod queries;
pub(crate) mod reader;
pub mod serve;
pub mod shape;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use tokio::sync::broadcast;
use wellspring_actors::metrics::Metrics;
use wellspring_log::Log;
use wellspring_protocol::Dag;
use wellspring_protocol::status::StatusEvent;

pub use model::Limits;

struct Shared {
    model: Mutex<model::Model>,
    events: broadcast::Sender<StatusEvent>,
    /// Records per second per topic, over the last second.
    rates: Mutex<HashMap<String, f64>>,
    node_id: String,
    metrics: Metrics,
    stopped: AtomicBool,
    error: Mutex<Option<String>>,
    /// The reader's thread, when [`StatusView::start`] made one.
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// A handle on the view; cheap to clone, shared by the reader and the API.
#[derive(Clone)]
pub struct StatusView {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for StatusView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusView").finish_non_exhaustive()
    }
}

impl StatusView {
    /// A view of `dags` that nothing feeds yet (see [`StatusView::start`]).
    pub fn new(dags: &[Dag], node_id: &str, metrics: Metrics, limits: Limits) -> StatusView {
        let shapes = dags.iter().map(shape::DagShape::of).collect();
        let (events, _) = broadcast::channel(1024);
        StatusView {
            shared: Arc::new(Shared {
                model: Mutex::new(model::Model::new(shapes, limits)),
                events,
                rates: Mutex::default(),
                node_id: node_id.to_owned(),
                metrics,
                stopped: AtomicBool::new(false),
                error: Mutex::default(),
                thread: Mutex::default(),
            }),
        }
    }

    /// Starts reading `log` on a thread of its own (so that the view takes no time from
    /// the node's actors); reads until [`StatusView::stop`].
    pub fn start(dags: &[Dag], node_id: &str, metrics: Metrics, log: Arc<dyn Log>) -> StatusView {
        let view = StatusView::new(dags, node_id, metrics, Limits::default());
        let reader = view.clone();
        let client_id = format!("wellspring-status-{node_id}");
        let spawned = std::thread::Builder::new()
            .name("status-view".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        reader.set_error(format!("cannot start the view's runtime: {e}"));
                        return;
                    }
                };
                // The log's consumers are not Send: the reader stays on this thread.
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, reader::run(reader, log, client_id));
            });
        match spawned {
            Ok(thread) => *view.shared.thread.lock() = Some(thread),
            Err(e) => view.set_error(format!("cannot start the view's thread: {e}")),
        }
        view
    }

    /// Stops reading and waits until the reader's thread has ended (and let go of the
    /// log).
    pub fn stop_and_wait(&self) {
        self.stop();
        let thread = self.shared.thread.lock().take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }

    pub fn stop(&self) {
        self.shared.stopped.store(true, Ordering::Relaxed);
    }

    fn stopped(&self) -> bool {
        self.shared.stopped.load(Ordering::Relaxed)
    }

    fn set_error(&self, error: String) {
        *self.shared.error.lock() = Some(error);
    }

    /// Why the view stopped reading, if it did.
    pub fn error(&self) -> Option<String> {
        self.shared.error.lock().clone()
    }

    /// Reads the model.
    pub fn with<T>(&self, read: impl FnOnce(&model::Model) -> T) -> T {
        read(&self.shared.model.lock())
    }

    pub fn subscribe(&self) -> broadcast::Receiver<StatusEvent> {
        self.shared.events.subscribe()
    }
}
