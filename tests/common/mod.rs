//! Shared test harness: a node running one DAG on the embedded log, and a scriptable
//! HTTP server on loopback.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use wellspring_actors::http::{HttpTransport, ReqwestTransport, SharedRng};
use wellspring_actors::metrics::Metrics;
use wellspring_actors::supervision::{Health, RestartPolicy};
use wellspring_actors::{FunctionRegistry, Node, NodeEnv, RuntimeConfig};
use wellspring_log::{EmbeddedLog, Log, LogRecord, ProducerRecord, SystemClock, TopicPartition};
use wellspring_protocol::{ChannelImage, Dag, ExperimentLayout, SpecFormat};

/// Channel images grouped into sites, each site sent to a features service (`svc`) and
/// its answer published: the smallest DAG with a grouping and an HTTP task.
pub const SITE_FEATURES_DAG: &str = r#"
name: lab
settings: {partitions: 2}
variables: {svc: "http://127.0.0.1:1"}
topics:
  images: {value-schema: channel_level, partitions: 2}
  metadata: {value-schema: experiment_metadata, partitions: 1}
  features: {value-schema: json}
tasks:
  site-features:
    url: "${svc}/v1/sites/{experiment_id}/{plate_number}/{well}/{site}/features"
    input-schema: site_level
    retries: 1
    backoff: {initial: 10ms, max: 10ms, jitter: false}
graph:
  images: {type: topic-stream, topic-name: images}
  metadata: {type: topic-table, topic-name: metadata}
  site: {type: stream-operation, inputs: [images, metadata], function: aggregations/images-site-grouping}
  features: {type: external-task, stream: site, task-name: site-features}
  out: {type: publish, stream: features, topic-name: features}
"#;

/// Runs `future` to its end on a runtime of its own.
pub fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

/// Every record of every partition of `topic`.
pub fn read_all(log: &EmbeddedLog, topic: &str) -> Vec<LogRecord> {
    let mut out = Vec::new();
    for p in 0.. {
        match log.read(&TopicPartition::new(topic, p), 0, usize::MAX) {
            Ok(records) => out.extend(records),
            Err(_) => break,
        }
    }
    out
}

/// Waits until `done`, for 90 s at most.
pub fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The real `wellspring ARGS`, to its end, with `env` (and no token or URL from the
/// test's own environment).
pub fn wellspring_with(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_wellspring"));
    command
        .args(args)
        .env("RUST_LOG", "error")
        .env_remove("WELLSPRING_API_TOKEN")
        .env_remove("WELLSPRING_URL");
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().unwrap()
}

pub fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Publishes `layout` on `metadata`, then `images` on `images`.
pub fn publish_plates(
    log: &EmbeddedLog,
    metadata: &str,
    layout: &ExperimentLayout,
    images_topic: &str,
    images: &[ChannelImage],
) {
    block_on(async {
        let producer = log.producer().unwrap();
        producer
            .send(vec![layout_record(metadata, layout)])
            .await
            .unwrap();
        producer
            .send(image_records(images_topic, images))
            .await
            .unwrap();
    });
}

/// One record per channel image, keyed by the image's key, for `topic`.
pub fn image_records(topic: &str, images: &[ChannelImage]) -> Vec<ProducerRecord> {
    images
        .iter()
        .map(|i| {
            ProducerRecord::new(
                topic,
                Some(Bytes::from(i.key.to_string())),
                Some(Bytes::from(i.to_value().to_json_string())),
            )
        })
        .collect()
}

/// The experiment's layout as the metadata table reads it, for `topic`.
pub fn layout_record(topic: &str, layout: &ExperimentLayout) -> ProducerRecord {
    ProducerRecord::new(
        topic,
        Some(Bytes::from(layout.experiment.as_str().to_owned())),
        Some(Bytes::from(layout.to_value().to_json_string())),
    )
}

pub struct Harness {
    pub log: EmbeddedLog,
    pub metrics: Metrics,
    pub health: Health,
    pub dag: Dag,
    node: Option<Node>,
}

/// Settings that make tests quick: short waits, quick restarts.
pub fn test_config() -> RuntimeConfig {
    RuntimeConfig {
        node_id: "test-node".into(),
        max_wait: Duration::from_millis(20),
        shard_restart: RestartPolicy {
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(200),
            ..RestartPolicy::default()
        },
        ..RuntimeConfig::default()
    }
}

pub fn load(yaml: &str, registry: &FunctionRegistry, variables: &[(&str, String)]) -> Dag {
    let mut dag = Dag::load(yaml, SpecFormat::Yaml, registry).unwrap_or_else(|e| panic!("{e}"));
    let vars: BTreeMap<String, String> = variables
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    dag.set_variables(&vars).unwrap();
    dag
}

impl Harness {
    pub async fn start(yaml: &str, variables: &[(&str, String)]) -> Harness {
        Self::start_with(
            yaml,
            variables,
            FunctionRegistry::with_builtins(),
            test_config(),
        )
        .await
    }

    pub async fn start_with(
        yaml: &str,
        variables: &[(&str, String)],
        registry: FunctionRegistry,
        config: RuntimeConfig,
    ) -> Harness {
        Self::start_on(EmbeddedLog::new(), yaml, variables, registry, config).await
    }

    /// On a log that already holds records (state a node left, say).
    pub async fn start_on(
        log: EmbeddedLog,
        yaml: &str,
        variables: &[(&str, String)],
        registry: FunctionRegistry,
        config: RuntimeConfig,
    ) -> Harness {
        let transport: Arc<dyn HttpTransport> = Arc::new(ReqwestTransport::new().unwrap());
        let dag = load(yaml, &registry, variables);
        let metrics = Metrics::default();
        let health = Health::default();
        let env = NodeEnv {
            log: Arc::new(log.clone()),
            clock: Arc::new(SystemClock),
            transport,
            registry: Arc::new(registry),
            metrics: metrics.clone(),
            health: health.clone(),
            rng: SharedRng::seeded(3),
            task_store: None,
            config,
        };
        let node = Node::start(env, vec![dag.clone()]).await.unwrap();
        Harness {
            log,
            metrics,
            health,
            dag,
            node: Some(node),
        }
    }

    pub async fn publish(&self, records: Vec<ProducerRecord>) {
        self.log.producer().unwrap().send(records).await.unwrap();
    }

    pub async fn publish_json(&self, topic: &str, key: &str, json: &str) {
        self.publish(vec![ProducerRecord::new(
            topic,
            Some(Bytes::from(key.to_owned())),
            Some(Bytes::from(json.to_owned())),
        )])
        .await;
    }

    pub async fn publish_images(&self, topic: &str, images: &[ChannelImage]) {
        self.publish(image_records(topic, images)).await;
    }

    pub async fn publish_layout(&self, topic: &str, layout: &ExperimentLayout) {
        self.publish(vec![layout_record(topic, layout)]).await;
    }

    /// Every record of a topic, all partitions.
    pub fn read(&self, topic: &str) -> Vec<LogRecord> {
        let mut out = Vec::new();
        for p in 0.. {
            match self.log.read(&TopicPartition::new(topic, p), 0, usize::MAX) {
                Ok(records) => out.extend(records),
                Err(_) => break,
            }
        }
        out
    }

    pub fn read_json(&self, topic: &str) -> Vec<serde_json::Value> {
        self.read(topic)
            .iter()
            .filter_map(|r| {
                r.value
                    .as_deref()
                    .and_then(|v| serde_json::from_slice(v).ok())
            })
            .collect()
    }

    pub fn count(&self, topic: &str) -> usize {
        self.read(topic).len()
    }

    /// Waits (up to a generous bound) until `condition` holds.
    pub async fn wait_until(&self, what: &str, condition: impl Fn(&Harness) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !condition(self) {
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; health: {:?}",
                    self.health.snapshot()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(mut self) {
        if let Some(node) = self.node.take() {
            node.shutdown().await;
        }
    }
}

/// How the scripted server answers one request.
#[derive(Clone, Debug)]
pub enum Answer {
    Json {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
        delay: Duration,
    },
    /// Never answers in time.
    Stall(Duration),
}

impl Answer {
    pub fn ok(body: &str) -> Answer {
        Answer::Json {
            status: 200,
            headers: vec![],
            body: body.to_owned(),
            delay: Duration::ZERO,
        }
    }

    pub fn status(status: u16) -> Answer {
        Answer::Json {
            status,
            headers: vec![],
            body: "{}".into(),
            delay: Duration::ZERO,
        }
    }
}

/// A request the scripted server saw.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub body: String,
    pub idempotency_key: String,
    pub at: tokio::time::Instant,
    /// 1 for the first request with this idempotency key.
    pub attempt: u32,
    /// The W3C `traceparent` header, if the request had one.
    pub traceparent: Option<String>,
}

type Script = dyn Fn(&Seen) -> Answer + Send + Sync;

/// An HTTP server on loopback whose answers a test scripts.
pub struct ScriptedServer {
    pub url: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub inflight: Arc<AtomicI64>,
    pub max_inflight: Arc<AtomicI64>,
    pub requests: Arc<AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ScriptedServer {
    pub fn start(script: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> ScriptedServer {
        use axum::extract::State;
        use axum::http::{HeaderMap, StatusCode, Uri};
        use axum::response::IntoResponse;

        struct Shared {
            script: Box<Script>,
            seen: Arc<Mutex<Vec<Seen>>>,
            inflight: Arc<AtomicI64>,
            max_inflight: Arc<AtomicI64>,
            requests: Arc<AtomicU64>,
        }
        async fn handle(
            State(shared): State<Arc<Shared>>,
            uri: Uri,
            headers: HeaderMap,
            body: axum::body::Bytes,
        ) -> axum::response::Response {
            shared.requests.fetch_add(1, Ordering::SeqCst);
            let now = shared.inflight.fetch_add(1, Ordering::SeqCst) + 1;
            shared.max_inflight.fetch_max(now, Ordering::SeqCst);
            let key = headers
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let seen = {
                let mut log = shared.seen.lock();
                let attempt = log.iter().filter(|s| s.idempotency_key == key).count() as u32 + 1;
                let seen = Seen {
                    path: uri.path().to_owned(),
                    body: String::from_utf8_lossy(&body).into_owned(),
                    idempotency_key: key,
                    at: tokio::time::Instant::now(),
                    attempt,
                    traceparent: headers
                        .get("traceparent")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned),
                };
                log.push(seen.clone());
                seen
            };
            let answer = (shared.script)(&seen);
            let response = match answer {
                Answer::Stall(d) => {
                    tokio::time::sleep(d).await;
                    (StatusCode::GATEWAY_TIMEOUT, "stalled").into_response()
                }
                Answer::Json {
                    status,
                    headers,
                    body,
                    delay,
                } => {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    let mut response =
                        (StatusCode::from_u16(status).unwrap(), body).into_response();
                    for (k, v) in headers {
                        response.headers_mut().insert(
                            axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                            axum::http::HeaderValue::from_str(&v).unwrap(),
                        );
                    }
                    response
                }
            };
            shared.inflight.fetch_sub(1, Ordering::SeqCst);
            response
        }

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let inflight = Arc::new(AtomicI64::new(0));
        let max_inflight = Arc::new(AtomicI64::new(0));
        let requests = Arc::new(AtomicU64::new(0));
        let shared = Arc::new(Shared {
            script: Box::new(script),
            seen: seen.clone(),
            inflight: inflight.clone(),
            max_inflight: max_inflight.clone(),
            requests: requests.clone(),
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let app = axum::Router::new().fallback(handle).with_state(shared);
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
        });
        ScriptedServer {
            url,
            seen,
            inflight,
            max_inflight,
            requests,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
