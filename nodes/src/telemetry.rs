//! Trace export: OTLP over HTTP (protobuf) or gRPC, configured by the standard `OTEL_*`
//! environment variables and by flags, off unless an endpoint is given.
//!
//! | setting | flag | environment |
//! |---|---|---|
//! | collector | `--otlp-endpoint URL` | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_ENDPOINT` |
//! | protocol | `--otlp-protocol grpc\|http/protobuf` | `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, `OTEL_EXPORTER_OTLP_PROTOCOL` (default http/protobuf) |
//! | sampling | `--trace-sample-ratio R` (parent-based) | `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG` |
//! | service | | `OTEL_SERVICE_NAME` (default `wellspring`), `OTEL_RESOURCE_ATTRIBUTES` |
//! | off | | `OTEL_SDK_DISABLED=true`, `OTEL_TRACES_EXPORTER=none` |
//!
//! Headers (`OTEL_EXPORTER_OTLP_HEADERS`), timeouts and TLS settings of the exporter are
//! read by the exporter itself.

use std::time::Duration;

use clap::Args;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter};
use wellspring_actors::telemetry;

#[derive(Debug, Clone, Args, Default)]
pub struct TelemetryArgs {
    /// Export traces to this OTLP collector (Jaeger, Tempo, an OpenTelemetry Collector):
    /// http://HOST:4318 for http/protobuf, http://HOST:4317 for gRPC.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// The OTLP transport: grpc or http/protobuf.
    #[arg(long, value_name = "PROTOCOL")]
    pub otlp_protocol: Option<String>,
    /// The share of traces to keep (0 to 1), unless the trace's parent decided already.
    #[arg(long, value_name = "RATIO", value_parser = crate::commands::flags::fraction)]
    pub trace_sample_ratio: Option<f64>,
}

/// What the environment and the flags ask for.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSettings {
    /// `None`: the exporter reads it from the environment.
    pub endpoint: Option<String>,
    pub grpc: bool,
    pub sample_ratio: Option<f64>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl TelemetryArgs {
    /// The export asked for, or `None` when tracing stays off.
    pub fn settings(&self) -> Result<Option<ExportSettings>, String> {
        let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"));
        let from_env = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"))
            .is_some();
        if disabled || (self.otlp_endpoint.is_none() && !from_env) {
            return Ok(None);
        }
        let protocol = self
            .otlp_protocol
            .clone()
            .or_else(|| env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"))
            .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .unwrap_or_else(|| "http/protobuf".into());
        let grpc = match protocol.as_str() {
            "grpc" => true,
            "http/protobuf" => false,
            other => {
                return Err(format!(
                    "OTLP protocol {other:?} is not supported: use grpc or http/protobuf"
                ));
            }
        };
        if let Some(r) = self.trace_sample_ratio
            && !(0.0..=1.0).contains(&r)
        {
            return Err(format!(
                "--trace-sample-ratio must be between 0 and 1, not {r}"
            ));
        }
        // The OTLP/HTTP traces path goes after a bare collector address (as the exporter
        // does for OTEL_EXPORTER_OTLP_ENDPOINT).
        let endpoint = self.otlp_endpoint.as_ref().map(|e| {
            let bare = e.trim_end_matches('/');
            let has_path = bare
                .split_once("://")
                .is_some_and(|(_, rest)| rest.contains('/'));
            if grpc || has_path {
                bare.to_owned()
            } else {
                format!("{bare}/v1/traces")
            }
        });
        Ok(Some(ExportSettings {
            endpoint,
            grpc,
            sample_ratio: self.trace_sample_ratio,
        }))
    }
}

/// Exports from the batch processor's own thread, where no tokio runtime runs: the gRPC
/// exporter needs one, so this one owns a small runtime for it.
#[derive(Debug)]
struct OnItsOwnRuntime {
    inner: opentelemetry_otlp::SpanExporter,
    runtime: tokio::runtime::Runtime,
}

impl SpanExporter for OnItsOwnRuntime {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.runtime.block_on(self.inner.export(batch))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Tracing turned on; flushes and stops the export when dropped.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        telemetry::enable(false);
        let provider = self.provider.clone();
        // Not on a runtime's thread: the exporter may block on a runtime of its own.
        let _ = std::thread::spawn(move || provider.shutdown()).join();
    }
}

/// Installs the exporter and turns the engine's spans on.
pub fn start(settings: &ExportSettings, node_id: &str) -> Result<Telemetry, String> {
    let fail =
        |e: opentelemetry_otlp::ExporterBuildError| format!("cannot set up OTLP export: {e}");
    let mut resource = Resource::builder().with_attribute(opentelemetry::KeyValue::new(
        "service.instance.id",
        node_id.to_owned(),
    ));
    if env("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("wellspring");
    }
    let mut builder = SdkTracerProvider::builder().with_resource(resource.build());
    if let Some(ratio) = settings.sample_ratio {
        builder = builder.with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio,
        ))));
    }
    let builder = if settings.grpc {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the OTLP exporter's runtime: {e}"))?;
        let inner = {
            let _inside = runtime.enter();
            let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
            if let Some(endpoint) = &settings.endpoint {
                exporter = exporter.with_endpoint(endpoint.clone());
            }
            exporter.build().map_err(fail)?
        };
        builder.with_batch_exporter(OnItsOwnRuntime { inner, runtime })
    } else {
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary);
        if let Some(endpoint) = &settings.endpoint {
            exporter = exporter.with_endpoint(endpoint.clone());
        }
        builder.with_batch_exporter(exporter.build().map_err(fail)?)
    };
    let provider = builder.build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    telemetry::enable(true);
    Ok(Telemetry { provider })
}

/// Starts tracing if the flags or the environment ask for it, and says so.
pub fn from_args(args: &TelemetryArgs, node_id: &str) -> Result<Option<Telemetry>, String> {
    let Some(settings) = args.settings()? else {
        return Ok(None);
    };
    let telemetry = start(&settings, node_id)?;
    eprintln!(
        "tracing on: exporting spans over OTLP/{} to {}{}",
        if settings.grpc { "gRPC" } else { "HTTP" },
        settings
            .endpoint
            .as_deref()
            .unwrap_or("the endpoint in OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT"),
        settings.sample_ratio.map_or(String::new(), |r| format!(
            ", keeping {:.1} % of traces",
            r * 100.0
        ))
    );
    Ok(Some(telemetry))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_turns_tracing_on_and_a_bare_http_address_gets_the_traces_path() {
        let args = TelemetryArgs {
            otlp_endpoint: Some("http://collector:4318".into()),
            ..TelemetryArgs::default()
        };
        let s = args.settings().unwrap().unwrap();
        assert_eq!(
            s.endpoint.as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        assert!(!s.grpc);
        let grpc = TelemetryArgs {
            otlp_endpoint: Some("http://collector:4317".into()),
            otlp_protocol: Some("grpc".into()),
            trace_sample_ratio: Some(0.1),
        };
        let s = grpc.settings().unwrap().unwrap();
        assert_eq!(s.endpoint.as_deref(), Some("http://collector:4317"));
        assert!(s.grpc);
        let bad = TelemetryArgs {
            otlp_protocol: Some("http/json".into()),
            ..args.clone()
        };
        assert!(bad.settings().unwrap_err().contains("http/json"));
        let ratio = TelemetryArgs {
            trace_sample_ratio: Some(2.0),
            ..args
        };
        assert!(ratio.settings().is_err());
    }
}
