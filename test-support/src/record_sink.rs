//! A stand-in for a node's record ingest on a free loopback port: `POST
//! /api/topics/{topic}/records` with `{"records":[{"key", "value", "headers"}]}`,
//! answered 200 once every record of the batch is kept, or 422 with
//! `{"error", "records":[{"index", "errors":[...]}]}` and nothing kept (the node's
//! contract, `nodes/src/api/ingest.rs`). It checks
//! what any topic needs (a string key, an object value) and a bearer token when given
//! one, and can refuse records whose key contains a given text, to test the errors.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::{Value, json};

/// One record the sink kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub topic: String,
    pub key: String,
    pub value: Value,
}

#[derive(Default)]
struct Shared {
    records: Mutex<Vec<Received>>,
    token: Option<String>,
    refuse_keys_containing: Mutex<Option<String>>,
    batches: Mutex<usize>,
}

/// The server, stopped when dropped.
pub struct RecordSink {
    url: String,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RecordSink {
    /// Starts the sink; with `token`, it answers 401 to a call without it.
    pub fn start(token: Option<&str>) -> Self {
        let shared = Arc::new(Shared {
            token: token.map(str::to_owned),
            ..Shared::default()
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let url = format!("http://{}", listener.local_addr().expect("its address"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = Router::new()
            .route("/api/topics/{topic}/records", post(records))
            .with_state(shared.clone());
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the record sink");
            runtime.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        Self {
            url,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Every record kept so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.shared.records.lock().expect("records").clone()
    }

    /// Batches answered 200.
    pub fn batches(&self) -> usize {
        *self.shared.batches.lock().expect("batches")
    }

    /// From now on, refuses (400) every batch with a record whose key contains `text`.
    pub fn refuse_keys_containing(&self, text: Option<&str>) {
        *self.shared.refuse_keys_containing.lock().expect("refusals") = text.map(str::to_owned);
    }

    /// Waits until `done` holds of the records kept, up to `timeout`; whether it did.
    pub fn wait_for(&self, timeout: Duration, done: impl Fn(&[Received]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.received()) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RecordSink {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn records(
    State(shared): State<Arc<Shared>>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, axum::Json<Value>) {
    if let Some(token) = &shared.token {
        let given = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(token.as_str()) {
            return (
                StatusCode::UNAUTHORIZED,
                axum::Json(json!({"error": "this API needs Authorization: Bearer TOKEN"})),
            );
        }
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "the body is not JSON"})),
        );
    };
    let Some(list) = body.get("records").and_then(Value::as_array) else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "the body has no records array"})),
        );
    };
    let refuse = shared
        .refuse_keys_containing
        .lock()
        .expect("refusals")
        .clone();
    let mut kept = Vec::new();
    let mut errors = Vec::new();
    for (index, record) in list.iter().enumerate() {
        let key = record.get("key").and_then(Value::as_str);
        let value = record.get("value").filter(|v| v.is_object());
        match (key, value) {
            (Some(key), Some(_)) if refuse.as_deref().is_some_and(|r| key.contains(r)) => {
                errors.push(json!({"index": index, "errors": [format!("key {key} refused")]}));
            }
            (Some(key), Some(value)) => kept.push(Received {
                topic: topic.clone(),
                key: key.to_owned(),
                value: value.clone(),
            }),
            (None, _) => errors.push(json!({"index": index, "errors": ["key is missing"]})),
            (_, None) => errors.push(json!({"index": index, "errors": ["value is not an object"]})),
        }
    }
    if !errors.is_empty() {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(json!({"error": "the batch was refused", "records": errors})),
        );
    }
    shared.records.lock().expect("records").extend(kept);
    *shared.batches.lock().expect("batches") += 1;
    (StatusCode::OK, axum::Json(json!({"accepted": list.len()})))
}
