//! A plain HTTP client for the tests: they speak to the fake as any client would.

#![allow(dead_code)] // each test file uses part of it

use std::time::Duration;

use serde_json::{Value, json};
use wellspring_fake_kube::FakeKube;

pub const PODS: &str = "/api/v1/namespaces/lab/pods";
pub const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/lab/leases";
pub const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/lab/deployments";

pub const MERGE: &str = "application/merge-patch+json";
pub const STRATEGIC: &str = "application/strategic-merge-patch+json";
pub const JSON_PATCH: &str = "application/json-patch+json";

/// How long a test waits for an answer or an event before failing.
const PATIENCE: Duration = Duration::from_secs(10);

pub fn start() -> FakeKube {
    FakeKube::start().expect("the fake API server starts")
}

/// A status and a JSON body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Answer {
    pub fn rv(&self) -> u64 {
        resource_version(&self.body)
    }

    /// The `reason` of an error answer's Status.
    pub fn reason(&self) -> &str {
        self.body["reason"].as_str().unwrap_or_default()
    }
}

pub fn resource_version(object: &Value) -> u64 {
    object["metadata"]["resourceVersion"]
        .as_str()
        .expect("a resourceVersion")
        .parse()
        .expect("a decimal resourceVersion")
}

pub fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .expect("a list has items")
        .iter()
        .map(|item| {
            item["metadata"]["name"]
                .as_str()
                .expect("a name")
                .to_owned()
        })
        .collect()
}

pub fn pod(name: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "main", "image": "wellspring:test"}]},
    })
}

pub fn lease(name: &str, holder: &str) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15},
    })
}

/// Percent-encodes a query parameter's value.
pub fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(byte).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

pub struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    pub fn new(kube: &FakeKube) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: kube.url(),
        }
    }

    pub async fn send(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Option<&Value>,
    ) -> Answer {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a method");
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .timeout(PATIENCE);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        if let Some(body) = body {
            request = request.body(body.to_string());
        }
        let response = request.send().await.expect("the server answers");
        let status = response.status().as_u16();
        let bytes = response.bytes().await.expect("the body arrives");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("the body is JSON")
        };
        Answer { status, body }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send("GET", path, None, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Answer {
        self.send("POST", path, Some("application/json"), Some(body))
            .await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Answer {
        self.send("PUT", path, Some("application/json"), Some(body))
            .await
    }

    pub async fn patch(&self, path: &str, content_type: &str, body: &Value) -> Answer {
        self.send("PATCH", path, Some(content_type), Some(body))
            .await
    }

    pub async fn delete(&self, path: &str, options: Option<&Value>) -> Answer {
        let content_type = options.map(|_| "application/json");
        self.send("DELETE", path, content_type, options).await
    }

    /// Opens a watch; `path_and_query` includes `?watch=true...`.
    pub async fn watch(&self, path_and_query: &str) -> Watch {
        let response = self
            .http
            .get(format!("{}{path_and_query}", self.base))
            .send()
            .await
            .expect("the server answers the watch");
        assert_eq!(response.status().as_u16(), 200, "a watch answers 200");
        assert_eq!(
            response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/json")
        );
        Watch {
            response,
            buffer: Vec::new(),
        }
    }
}

/// An open watch, read event by event.
pub struct Watch {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl Watch {
    /// The next event, or `None` when the stream has ended; fails the test if nothing
    /// comes in time.
    pub async fn next(&mut self) -> Option<Value> {
        self.next_within(PATIENCE)
            .await
            .expect("an event or the end of the watch, in time")
    }

    /// `Err` if nothing came within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Result<Option<Value>, ()> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(newline) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=newline).collect();
                let event = serde_json::from_slice(&line).expect("each line is a JSON event");
                return Ok(Some(event));
            }
            match tokio::time::timeout_at(deadline, self.response.chunk()).await {
                Err(_) => return Err(()),
                Ok(Ok(Some(chunk))) => self.buffer.extend_from_slice(&chunk),
                Ok(Ok(None)) => {
                    assert!(self.buffer.is_empty(), "the stream ended mid-line");
                    return Ok(None);
                }
                Ok(Err(error)) => panic!("the watch stream broke: {error}"),
            }
        }
    }

    /// The next event, asserting its type; returns its object.
    pub async fn expect(&mut self, kind: &str) -> Value {
        let event = self
            .next()
            .await
            .expect("an event, not the end of the watch");
        assert_eq!(event["type"], kind, "unexpected event: {event}");
        event["object"].clone()
    }

    /// The next event that is not a bookmark.
    pub async fn next_change(&mut self) -> Option<Value> {
        loop {
            let event = self.next().await?;
            if event["type"] != "BOOKMARK" {
                return Some(event);
            }
        }
    }

    pub async fn into_response(self) -> reqwest::Response {
        self.response
    }
}
