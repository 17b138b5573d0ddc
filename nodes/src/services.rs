//! Simulated microservices, as real HTTP servers on loopback: image metrics, site
//! features, well thumbnails and plate features, as the reference DAG calls them.
//!
//! They run on their own thread and tokio runtime (like the separate processes they
//! stand for), answer after a configurable latency, and fail at a configurable rate:
//! `503`s, `200`s flagged with `X-Function-Error: Unhandled` (the reference system's
//! function-error header) and stalls that never answer in time. The answers themselves
//! are `wellspring_lab::services`' (computed from the request alone), which the
//! simulation harness serves in process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};
use wellspring_lab::services as answers;

/// How the simulated services behave.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Typical time to answer.
    pub latency: Duration,
    /// Fraction of requests answered `503 Service Unavailable`.
    pub error_rate: f64,
    /// Fraction answered `200` with `X-Function-Error: Unhandled`.
    pub function_error_rate: f64,
    /// Fraction that stall for `stall` before answering (past a task's timeout).
    pub stall_rate: f64,
    pub stall: Duration,
    pub seed: u64,
}

impl ServiceConfig {
    /// Services that answer every request, in about a millisecond: the steady backdrop of
    /// tests and benchmarks of the engine itself.
    pub fn quick() -> Self {
        Self {
            latency: Duration::from_millis(1),
            ..Self::default()
        }
    }
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            latency: Duration::from_millis(2),
            error_rate: 0.0,
            function_error_rate: 0.0,
            stall_rate: 0.0,
            stall: Duration::from_secs(60),
            seed: 7,
        }
    }
}

/// What a service saw.
#[derive(Debug, Default)]
pub struct ServiceStats {
    pub requests: AtomicU64,
    pub failures_injected: AtomicU64,
    pub inflight: AtomicI64,
    pub max_inflight: AtomicI64,
    /// The `traceparent` header of the last request, for tracing tests.
    pub last_traceparent: Mutex<Option<String>>,
}

impl ServiceStats {
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn max_inflight(&self) -> i64 {
        self.max_inflight.load(Ordering::Relaxed)
    }
}

struct Shared {
    config: ServiceConfig,
    rng: Mutex<StdRng>,
    stats: Arc<ServiceStats>,
}

/// The four services, running.
pub struct Services {
    pub addr: SocketAddr,
    pub stats: ServiceStatsSet,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Stats per service.
#[derive(Clone, Default)]
pub struct ServiceStatsSet {
    pub image_metrics: Arc<ServiceStats>,
    pub site_features: Arc<ServiceStats>,
    pub well_thumbnails: Arc<ServiceStats>,
    pub plate_features: Arc<ServiceStats>,
}

impl Services {
    /// Starts the services on `127.0.0.1` on a free port.
    pub fn start(config: ServiceConfig) -> std::io::Result<Services> {
        Self::start_at(SocketAddr::from(([127, 0, 0, 1], 0)), config)
    }

    /// The services listening on `addr` (`wellspring services`: the reference DAG's
    /// usual ports).
    pub fn start_at(addr: SocketAddr, config: ServiceConfig) -> std::io::Result<Services> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stats = ServiceStatsSet::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let router = routes(&config, &stats);
        let thread = std::thread::Builder::new()
            .name("demo-services".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!("demo services could not start a runtime: {e}");
                        return;
                    }
                };
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!("demo services could not listen: {e}");
                            return;
                        }
                    };
                    let server = axum::serve(listener, router).with_graceful_shutdown(async {
                        let _ = stopped.await;
                    });
                    if let Err(e) = server.await {
                        tracing::error!("demo services stopped: {e}");
                    }
                });
            })?;
        Ok(Services {
            addr,
            stats,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The DAG variables pointing the reference DAG's tasks at these services.
    pub fn variables(&self) -> std::collections::BTreeMap<String, String> {
        [
            "image-metrics-url",
            "site-features-url",
            "well-thumbnails-url",
            "plate-features-url",
        ]
        .into_iter()
        .map(|name| (name.to_owned(), self.url()))
        .collect()
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn routes(config: &ServiceConfig, stats: &ServiceStatsSet) -> Router {
    let shared = |stats: &Arc<ServiceStats>, salt: u64| {
        Arc::new(Shared {
            config: config.clone(),
            rng: Mutex::new(StdRng::seed_from_u64(config.seed ^ salt)),
            stats: stats.clone(),
        })
    };
    Router::new()
        .route(
            "/v1/image-metrics",
            post(image_metrics).with_state(shared(&stats.image_metrics, 1)),
        )
        .route(
            "/v1/sites/{experiment}/{plate}/{well}/{site}/features",
            post(site_features).with_state(shared(&stats.site_features, 2)),
        )
        .route(
            "/v1/well-thumbnails",
            post(well_thumbnails).with_state(shared(&stats.well_thumbnails, 3)),
        )
        .route(
            "/v1/plate-features",
            post(plate_features).with_state(shared(&stats.plate_features, 4)),
        )
}

enum Fate {
    Answer,
    Fail(Response),
}

/// Waits the latency, counts the request, and decides whether to fail it.
async fn serve(shared: &Shared, headers: &HeaderMap) -> Fate {
    let stats = &shared.stats;
    stats.requests.fetch_add(1, Ordering::Relaxed);
    let now = stats.inflight.fetch_add(1, Ordering::Relaxed) + 1;
    stats.max_inflight.fetch_max(now, Ordering::Relaxed);
    if let Some(parent) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
        *stats.last_traceparent.lock() = Some(parent.to_owned());
    }
    let (draw, jitter) = {
        let mut rng = shared.rng.lock();
        (rng.random::<f64>(), rng.random::<f64>())
    };
    let config = &shared.config;
    let stall = draw < config.stall_rate;
    let delay = if stall {
        config.stall
    } else {
        config.latency.mul_f64(0.5 + jitter)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    stats.inflight.fetch_sub(1, Ordering::Relaxed);
    let error_at = config.stall_rate;
    let function_error_at = error_at + config.error_rate;
    if !stall && draw >= error_at && draw < function_error_at {
        stats.failures_injected.fetch_add(1, Ordering::Relaxed);
        return Fate::Fail((StatusCode::SERVICE_UNAVAILABLE, "simulated outage").into_response());
    }
    if draw >= function_error_at && draw < function_error_at + config.function_error_rate {
        stats.failures_injected.fetch_add(1, Ordering::Relaxed);
        return Fate::Fail(
            (
                StatusCode::OK,
                [("X-Function-Error", "Unhandled")],
                axum::Json(json!({"error": "simulated crash"})),
            )
                .into_response(),
        );
    }
    Fate::Answer
}

/// Serves the request's fate (latency, injected failure), then reads its JSON body.
async fn accept(
    shared: &Shared,
    headers: &HeaderMap,
    body: &[u8],
    expected: &str,
) -> Result<Value, Response> {
    if let Fate::Fail(response) = serve(shared, headers).await {
        return Err(response);
    }
    serde_json::from_slice::<Value>(body).map_err(|_| bad_request(expected))
}

fn bad_request(message: &str) -> Response {
    (StatusCode::BAD_REQUEST, message.to_owned()).into_response()
}

fn respond(answer: Result<Value, &'static str>) -> Response {
    match answer {
        Ok(json) => axum::Json(json).into_response(),
        Err(message) => bad_request(message),
    }
}

async fn image_metrics(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    match accept(&shared, &headers, &body, "expected a channel_level record").await {
        Ok(body) => respond(answers::image_metrics(&body)),
        Err(response) => response,
    }
}

async fn site_features(
    State(shared): State<Arc<Shared>>,
    Path((experiment, plate, well, site)): Path<(String, i64, String, i64)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    match accept(&shared, &headers, &body, "expected channels").await {
        Ok(body) => respond(answers::site_features(
            &experiment,
            plate,
            &well,
            site,
            &body,
        )),
        Err(response) => response,
    }
}

async fn well_thumbnails(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    match accept(&shared, &headers, &body, "expected a well_level record").await {
        Ok(body) => axum::Json(answers::well_thumbnails(&body)).into_response(),
        Err(response) => response,
    }
}

async fn plate_features(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    match accept(&shared, &headers, &body, "expected a plate_level record").await {
        Ok(body) => axum::Json(answers::plate_features(&body)).into_response(),
        Err(response) => response,
    }
}
