//! The microservices, in process and in simulated time: each node incarnation calls them
//! through its own [`SimTransport`], which answers with [`wellspring_lab::services`], injects the
//! run's service faults, and counts the requests each task has in flight.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use wellspring_actors::http::{HttpRequest, HttpResponse, HttpTransport, TransportError};

use crate::config::FaultRates;
use crate::node_log::Life;
use wellspring_lab::services::Service;

/// Requests in flight for one service, now and at most.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InFlight {
    pub now: u32,
    pub max: u32,
}

/// One incarnation's calls to the services.
pub struct SimTransport {
    life: Arc<Life>,
    rates: FaultRates,
    rng: Mutex<StdRng>,
    inflight: Arc<Mutex<BTreeMap<Service, InFlight>>>,
}

/// Usual answer time: 1 to 10 ms.
const LATENCY_MS: (u64, u64) = (1, 10);
/// How much slower a slow answer is.
const SLOW_FACTOR: u32 = 50;

impl SimTransport {
    pub fn new(life: Arc<Life>, rates: &FaultRates, seed: u64) -> Self {
        Self {
            life,
            rates: rates.clone(),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            inflight: Arc::default(),
        }
    }

    /// The most requests each service had in flight at once from this incarnation.
    pub fn max_inflight(&self) -> BTreeMap<Service, u32> {
        self.inflight
            .lock()
            .iter()
            .map(|(s, f)| (*s, f.max))
            .collect()
    }
}

/// Counts a request in flight until it is dropped (answered, or abandoned by its caller).
struct InFlightGuard {
    service: Service,
    table: Arc<Mutex<BTreeMap<Service, InFlight>>>,
}

impl InFlightGuard {
    fn enter(service: Service, table: &Arc<Mutex<BTreeMap<Service, InFlight>>>) -> Self {
        let mut guard = table.lock();
        let entry = guard.entry(service).or_default();
        entry.now += 1;
        entry.max = entry.max.max(entry.now);
        Self {
            service,
            table: table.clone(),
        }
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if let Some(entry) = self.table.lock().get_mut(&self.service) {
            entry.now = entry.now.saturating_sub(1);
        }
    }
}

enum Fate {
    Answer,
    Unavailable,
    FunctionError,
    Stall,
}

fn status(status: u16, body: &str, headers: Vec<(String, String)>) -> HttpResponse {
    HttpResponse {
        status,
        headers,
        body: Bytes::from(body.to_owned()),
    }
}

#[async_trait]
impl HttpTransport for SimTransport {
    async fn send(
        &self,
        request: HttpRequest,
        timeout: Duration,
    ) -> Result<HttpResponse, TransportError> {
        self.life.check().await;
        let path = request
            .url
            .split_once("://")
            .and_then(|(_, rest)| rest.find('/').map(|i| rest[i..].to_owned()))
            .unwrap_or_default();
        let Some(service) = Service::for_path(&path) else {
            return Ok(status(404, "no such service", Vec::new()));
        };
        let _counted = InFlightGuard::enter(service, &self.inflight);
        let (fate, latency) = {
            let mut rng = self.rng.lock();
            let draw = rng.random::<f64>();
            let r = &self.rates;
            let mut latency = Duration::from_millis(rng.random_range(LATENCY_MS.0..=LATENCY_MS.1));
            let fate = if draw < r.service_timeout {
                Fate::Stall
            } else if draw < r.service_timeout + r.service_error {
                if rng.random::<bool>() {
                    Fate::Unavailable
                } else {
                    Fate::FunctionError
                }
            } else {
                if draw < r.service_timeout + r.service_error + r.service_slow {
                    latency *= SLOW_FACTOR;
                }
                Fate::Answer
            };
            (fate, latency)
        };
        if let Fate::Stall = fate {
            tokio::time::sleep(timeout).await;
            self.life.check().await;
            return Err(TransportError::Timeout(timeout));
        }
        if latency >= timeout {
            tokio::time::sleep(timeout).await;
            self.life.check().await;
            return Err(TransportError::Timeout(timeout));
        }
        tokio::time::sleep(latency).await;
        // A dead node never hears the answer.
        self.life.check().await;
        match fate {
            Fate::Unavailable => return Ok(status(503, "simulated outage", Vec::new())),
            Fate::FunctionError => {
                return Ok(status(
                    200,
                    r#"{"error": "simulated crash"}"#,
                    vec![("x-function-error".into(), "Unhandled".into())],
                ));
            }
            Fate::Answer | Fate::Stall => {}
        }
        let body = request
            .body
            .as_deref()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok());
        let Some(body) = body else {
            return Ok(status(400, "expected a JSON body", Vec::new()));
        };
        Ok(match service.answer(&path, &body) {
            Ok(answer) => status(
                200,
                &answer.to_string(),
                vec![("content-type".into(), "application/json".into())],
            ),
            Err(message) => status(400, message, Vec::new()),
        })
    }
}
