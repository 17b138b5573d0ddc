//! OTLP export as an operator sets it up: `wellspring demo --otlp-endpoint` against a
//! collector on loopback that decodes what it receives, over HTTP (protobuf) and gRPC.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use parking_lot::Mutex;
use prost::Message;

/// What the collector received.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

impl Received {
    fn spans(&self) -> Vec<Span> {
        self.0
            .lock()
            .iter()
            .flat_map(|r| &r.resource_spans)
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| ss.spans.clone())
            .collect()
    }

    fn service_names(&self) -> Vec<String> {
        self.0
            .lock()
            .iter()
            .flat_map(|r| &r.resource_spans)
            .filter_map(|rs| rs.resource.as_ref())
            .flat_map(|r| &r.attributes)
            .filter(|kv| kv.key == "service.name")
            .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
                AnyValue::StringValue(s) => Some(s.clone()),
                _ => None,
            })
            .collect()
    }
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A collector on its own thread; answers OTLP/HTTP on `/v1/traces` or OTLP/gRPC.
fn collector(grpc: bool) -> (SocketAddr, Received) {
    let received = Received::default();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let state = received.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            if grpc {
                let incoming = tokio_stream_of(listener);
                tonic::transport::Server::builder()
                    .add_service(TraceServiceServer::new(state))
                    .serve_with_incoming(incoming)
                    .await
                    .unwrap();
            } else {
                let app = axum::Router::new().route(
                    "/v1/traces",
                    axum::routing::post(move |body: axum::body::Bytes| {
                        let state = state.clone();
                        async move {
                            let request = ExportTraceServiceRequest::decode(body).unwrap();
                            state.0.lock().push(request);
                            ExportTraceServiceResponse::default().encode_to_vec()
                        }
                    }),
                );
                axum::serve(listener, app).await.unwrap();
            }
        });
    });
    (addr, received)
}

/// The listener's connections as the stream tonic serves.
fn tokio_stream_of(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |listener| async move {
        let next = listener.accept().await.map(|(stream, _)| stream);
        Some((next, listener))
    })
}

fn demo_exporting_to(addr: SocketAddr, protocol: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_wellspring"))
        .args([
            "demo",
            "--plates",
            "1",
            "--wells",
            "2",
            "--sites",
            "2",
            "--no-progress",
            "--otlp-endpoint",
            &format!("http://{addr}"),
            "--otlp-protocol",
            protocol,
        ])
        .env("RUST_LOG", "error")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_SERVICE_NAME")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn check(received: &Received) {
    let spans = received.spans();
    let count = |name: &str| spans.iter().filter(|s| s.name == name).count();
    // 1 plate × 2 wells × 2 sites × 6 channels.
    assert_eq!(count("wellspring.source"), 24, "one span per channel image");
    assert!(count("wellspring.http") >= 24, "the calls to the services");
    // Sites, wells, the plate and the experiment.
    assert_eq!(count("wellspring.aggregate"), 4 + 2 + 1 + 1);
    let site = spans
        .iter()
        .find(|s| s.name == "wellspring.aggregate" && s.links.len() == 6)
        .expect("a site linked to its six channel images");
    let grouped: Vec<&Span> = spans
        .iter()
        .filter(|s| {
            s.name == "wellspring.group" && site.links.iter().any(|l| l.span_id == s.span_id)
        })
        .collect();
    assert_eq!(
        grouped.len(),
        6,
        "every link names a span that was exported"
    );
    assert!(received.service_names().iter().all(|n| n == "wellspring"));
}

#[test]
fn the_demo_exports_its_traces_over_otlp_http() {
    let (addr, received) = collector(false);
    demo_exporting_to(addr, "http/protobuf");
    check(&received);
}

#[test]
fn the_demo_exports_its_traces_over_otlp_grpc() {
    let (addr, received) = collector(true);
    demo_exporting_to(addr, "grpc");
    check(&received);
}
