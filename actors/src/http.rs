//! HTTP tasks: calling a microservice for one record, with the task's in-flight limit,
//! timeout, success predicate, retries with exponential back-off and jitter.
//!
//! The network sits behind [`HttpTransport`] (the determinism seam): production uses
//! [`ReqwestTransport`]; the simulation harness plugs in simulated services.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::sync::Semaphore;
use wellspring_protocol::spec::{HttpTask, Method};
use wellspring_protocol::{SchemaSet, TaskOutcome, TaskRequest, TaskResult, TraceContext, Value};

mod tls;

pub use tls::{ClientIdentity, HttpClientError, TlsSettings};

use crate::metrics::{Counter, Gauge, Histogram};
use crate::telemetry;
use opentelemetry::trace::SpanKind;

#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub method: Method,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Bytes>,
}

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("could not connect: {0}")]
    Connect(String),
    #[error("{0}")]
    Other(String),
}

/// Sends one HTTP request.
#[async_trait]
pub trait HttpTransport: Send + Sync + 'static {
    async fn send(
        &self,
        request: HttpRequest,
        timeout: Duration,
    ) -> Result<HttpResponse, TransportError>;
}

/// HTTP and HTTPS over the network with reqwest (no proxy; pooled keep-alive
/// connections; TLS by rustls with the system's roots and [`TlsSettings`]).
#[derive(Clone)]
pub struct ReqwestTransport {
    client: reqwest::Client,
}

impl ReqwestTransport {
    /// Trusting the system's roots only.
    pub fn new() -> Result<Self, String> {
        Self::with_tls(&TlsSettings::default()).map_err(|e| e.to_string())
    }

    /// With a private CA and a client certificate, as `settings` says.
    pub fn with_tls(settings: &TlsSettings) -> Result<Self, HttpClientError> {
        let client = tls::client_builder(settings)?
            .build()
            .map_err(|e| HttpClientError::Build(e.to_string()))?;
        Ok(Self { client })
    }
}

#[async_trait]
impl HttpTransport for ReqwestTransport {
    async fn send(
        &self,
        request: HttpRequest,
        timeout: Duration,
    ) -> Result<HttpResponse, TransportError> {
        let method = match request.method {
            Method::Get => reqwest::Method::GET,
            Method::Post => reqwest::Method::POST,
            Method::Put => reqwest::Method::PUT,
            Method::Patch => reqwest::Method::PATCH,
            Method::Delete => reqwest::Method::DELETE,
        };
        let mut builder = self.client.request(method, &request.url);
        for (name, value) in &request.headers {
            builder = builder.header(name, value);
        }
        if let Some(body) = request.body {
            builder = builder.body(body);
        }
        let call = async {
            let response = builder.send().await.map_err(|e| {
                if e.is_connect() {
                    TransportError::Connect(with_causes(&e))
                } else {
                    TransportError::Other(with_causes(&e))
                }
            })?;
            let status = response.status().as_u16();
            let headers = response
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let body = response
                .bytes()
                .await
                .map_err(|e| TransportError::Other(format!("reading the response body: {e}")))?;
            Ok(HttpResponse {
                status,
                headers,
                body,
            })
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(TransportError::Timeout(timeout)),
        }
    }
}

/// An error with what caused it ("error sending request: ...: invalid peer certificate:
/// UnknownIssuer"): reqwest's own message hides the cause a TLS failure needs.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let text = e.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        cause = e.source();
    }
    message
}

/// A seeded random source shared by a node's actors (the randomness seam).
#[derive(Clone)]
pub struct SharedRng(Arc<Mutex<StdRng>>);

impl SharedRng {
    pub fn seeded(seed: u64) -> Self {
        Self(Arc::new(Mutex::new(StdRng::seed_from_u64(seed))))
    }

    /// A uniform fraction in [0, 1).
    pub fn fraction(&self) -> f64 {
        self.0.lock().random::<f64>()
    }

    /// A random (version 4) UUID from this source: replayable in simulations.
    pub fn uuid_v4(&self) -> uuid::Uuid {
        let bytes: [u8; 16] = self.0.lock().random();
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }
}

/// Runs one task for one record: an HTTP call, or a submission to the task store.
#[async_trait(?Send)]
pub trait TaskRunner {
    fn task_name(&self) -> &str;
    /// How many records a shard may have admitted and not finished.
    fn max_pending(&self) -> usize;
    async fn call(&self, task: TaskRequest) -> TaskResult;
}

/// Everything needed to call one HTTP task, shared by the task's shards on a node.
pub struct HttpTaskRunner {
    pub task_name: String,
    /// The DAG and DAG node calling it (names its spans).
    pub dag: Arc<str>,
    pub node: Arc<str>,
    pub spec: HttpTask,
    pub variables: BTreeMap<String, String>,
    pub schemas: SchemaSet,
    pub transport: Arc<dyn HttpTransport>,
    /// The task's in-flight limit on this node.
    pub limiter: Arc<Semaphore>,
    pub rng: SharedRng,
    pub inflight: Gauge,
    pub requests: Counter,
    pub retries: Counter,
    /// How long each call took (every attempt).
    pub latency: Histogram,
}

impl HttpTaskRunner {
    /// The call for `task`, sending `trace` as its W3C trace context.
    fn request(
        &self,
        task: &TaskRequest,
        attempt: u32,
        trace: Option<&TraceContext>,
    ) -> Result<HttpRequest, String> {
        let input = &task.input;
        let url = self
            .spec
            .url
            .render(&self.variables, input, true)
            .map_err(|e| format!("building the URL: {e}"))?;
        // The body as JSON: a template's value, or the input itself (written as it is,
        // not copied first).
        let body = match (&self.spec.body, self.spec.method) {
            (_, Method::Get | Method::Delete) => None,
            (Some(template), _) => {
                let context = Value::record([
                    ("input", input.clone()),
                    ("key", Value::from(task.key.as_str())),
                    ("id", Value::from(task.id.to_string())),
                    ("attempt", Value::from(attempt)),
                ]);
                let body = template
                    .evaluate(&context, &self.variables)
                    .map_err(|e| format!("building the body: {e}"))?;
                Some(body.to_json_string())
            }
            (None, _) => Some(input.to_json_string()),
        };
        let mut headers = Vec::with_capacity(self.spec.headers.len() + 4);
        for (name, value) in &self.spec.headers {
            let value = value
                .render(&self.variables, input, false)
                .map_err(|e| format!("building header {name}: {e}"))?;
            headers.push((name.clone(), value));
        }
        if body.is_some()
            && !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            headers.push(("content-type".into(), "application/json".into()));
        }
        // The deterministic id lets a service drop a repeated call.
        headers.push(("idempotency-key".into(), task.id.to_string()));
        if let Some(trace) = trace {
            telemetry::inject(trace, &mut telemetry::HttpHeaders(&mut headers));
        }
        Ok(HttpRequest {
            method: self.spec.method,
            url,
            headers,
            body: body.map(Bytes::from),
        })
    }

    /// The task's output for a successful response.
    fn output(
        &self,
        task: &TaskRequest,
        response: &HttpResponse,
        attempt: u32,
    ) -> Result<Value, String> {
        let body = Value::from_json_slice(&response.body).unwrap_or_else(|_| {
            Value::String(String::from_utf8_lossy(&response.body).into_owned())
        });
        let output = match &self.spec.output {
            None => body,
            Some(template) => {
                let context = Value::record([
                    ("input", task.input.clone()),
                    ("key", Value::from(task.key.as_str())),
                    ("id", Value::from(task.id.to_string())),
                    ("attempt", Value::from(attempt)),
                    ("response", body),
                    ("status", Value::from(response.status)),
                ]);
                template
                    .evaluate(&context, &self.variables)
                    .map_err(|e| format!("mapping the response: {e}"))?
            }
        };
        match &self.spec.output_schema {
            Some(schema) => self
                .schemas
                .validate_value(schema, &output)
                .map_err(|e| format!("the response {e}")),
            None => Ok(output),
        }
    }

    fn backoff(&self, retry: u32) -> Duration {
        let delay = self.spec.backoff.delay(retry);
        if self.spec.backoff.jitter {
            delay.mul_f64(self.rng.fraction())
        } else {
            delay
        }
    }

    /// Calls the task until it succeeds, fails for good, or runs out of retries. Holds an
    /// in-flight permit only while a request is out.
    async fn attempts(&self, task: &TaskRequest) -> (u32, TaskOutcome) {
        let failed = |error: String| TaskOutcome::Failed { error };
        let attempts_allowed = self.spec.retries + 1;
        let mut last_error = String::new();
        for attempt in 1..=attempts_allowed {
            // The call's client span; the service receives it as the request's parent.
            let mut span = telemetry::enabled().then(|| {
                telemetry::start(
                    "wellspring.http",
                    SpanKind::Client,
                    telemetry::About {
                        actor: "task shard",
                        dag: &self.dag,
                        node: &self.node,
                        key: &task.key,
                        attempt,
                    },
                    task.trace.as_ref(),
                    Vec::new(),
                )
            });
            let parent = span
                .as_ref()
                .and_then(telemetry::Span::trace)
                .or_else(|| task.trace.clone());
            let request = match self.request(task, attempt, parent.as_ref()) {
                Ok(r) => r,
                // The record cannot make a request: retrying will not help.
                Err(error) => return (attempt, failed(error)),
            };
            if let Some(span) = span.as_mut() {
                span.set("http.request.method", request.method.as_str());
                span.set("url.full", request.url.clone());
            }
            let result = {
                let Ok(_permit) = self.limiter.acquire().await else {
                    return (attempt, failed("the task is shutting down".into()));
                };
                self.inflight.add(1);
                self.requests.inc();
                let sent = tokio::time::Instant::now();
                let result = self.transport.send(request, self.spec.timeout).await;
                self.latency.observe(sent.elapsed());
                self.inflight.add(-1);
                result
            };
            if let Some(span) = span.as_mut() {
                match &result {
                    Ok(response) => {
                        span.set("http.response.status_code", i64::from(response.status))
                    }
                    Err(e) => span.error(e.to_string()),
                }
            }
            drop(span);
            let permanent = match result {
                Ok(response) => match self
                    .spec
                    .success
                    .failure(response.status, |h| response.header(h).map(str::to_owned))
                {
                    None => {
                        return match self.output(task, &response, attempt) {
                            Ok(output) => (attempt, TaskOutcome::Succeeded { output }),
                            Err(error) => (attempt, failed(error)),
                        };
                    }
                    Some(why) => {
                        let body =
                            String::from_utf8_lossy(&response.body[..response.body.len().min(200)])
                                .into_owned();
                        last_error = if body.is_empty() {
                            why
                        } else {
                            format!("{why}: {body}")
                        };
                        self.spec
                            .permanent_statuses
                            .iter()
                            .any(|s| s.matches(response.status))
                    }
                },
                Err(e) => {
                    last_error = e.to_string();
                    false
                }
            };
            if permanent {
                return (
                    attempt,
                    failed(format!(
                        "{last_error} (not retried: the request itself was refused)"
                    )),
                );
            }
            if attempt < attempts_allowed {
                self.retries.inc();
                tokio::time::sleep(self.backoff(attempt)).await;
            }
        }
        (
            attempts_allowed,
            failed(format!(
                "gave up after {attempts_allowed} attempts; last error: {last_error}"
            )),
        )
    }
}

#[async_trait(?Send)]
impl TaskRunner for HttpTaskRunner {
    fn task_name(&self) -> &str {
        &self.task_name
    }

    fn max_pending(&self) -> usize {
        (self.spec.max_inflight as usize * 2).max(64)
    }

    async fn call(&self, task: TaskRequest) -> TaskResult {
        let (attempts, outcome) = self.attempts(&task).await;
        TaskResult {
            request: task,
            attempts,
            outcome,
        }
    }
}
