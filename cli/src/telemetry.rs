//! Logging and trace export for the `sluice` binary: log lines on stderr as text or JSON
//! (`--log-format`), and, for the commands that serve, spans exported over OTLP/HTTP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set.
//!
//! When neither is set no OpenTelemetry layer is installed at all: nothing is exported and
//! nothing is paid for it (trace ids still flow; `sluice_core::trace` makes them).

use std::io::IsTerminal;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::{Level, Metadata};
use tracing_subscriber::filter::{EnvFilter, LevelFilter, filter_fn};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{Layer as _, fmt};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// For people: one line each, coloured on a terminal.
    #[default]
    Text,
    /// For machines: one JSON object a line, with the fields of the spans it was logged in
    /// (`call_id`, `trace_id`, `function`).
    Json,
}

/// The service name spans are exported under unless `OTEL_SERVICE_NAME` says otherwise.
const DEFAULT_SERVICE_NAME: &str = "sluice";

/// How long one export may take unless `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT` or
/// `OTEL_EXPORTER_OTLP_TIMEOUT` (milliseconds) says otherwise: the OTLP default.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest answer read from the OTLP receiver (a partial-success message, a few bytes).
const MAX_EXPORT_ANSWER: usize = 64 * 1024;

/// What [`init`] installed. Call [`Telemetry::shutdown`] before the process ends, so the spans
/// not yet exported are.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// Whether the environment asks for spans to be exported: an OTLP endpoint is set (for all
/// signals or for traces), and the SDK is not disabled.
pub fn export_asked(env: impl Fn(&str) -> Option<String>) -> bool {
    let set = |name: &str| env(name).is_some_and(|v| !v.trim().is_empty());
    let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// How long one export may take: the exporter leaves its HTTP client to enforce it, so the
/// client reads the standard settings (milliseconds; the traces' own first).
pub fn export_timeout(env: impl Fn(&str) -> Option<String>) -> Duration {
    [
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
    ]
    .into_iter()
    .find_map(|name| env(name)?.trim().parse::<u64>().ok())
    .map_or(EXPORT_TIMEOUT, Duration::from_millis)
}

/// Installs logging (`SLUICE_LOG` filters it, `info` by default) in `format`, and, when `serves`
/// and the environment asks for it, the OpenTelemetry layer and its OTLP/HTTP exporter. Must
/// be called within the Tokio runtime: exports are sent from it.
pub fn init(format: LogFormat, serves: bool) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = match format {
        LogFormat::Text => fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .boxed(),
    }
    .with_filter(filter);
    let provider = if serves && export_asked(|name| std::env::var(name).ok()) {
        Some(provider()?)
    } else {
        None
    };
    let export = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("sluice"))
            .with_threads(false)
            .with_location(false)
            .with_filter(filter_fn(exported).with_max_level_hint(LevelFilter::DEBUG))
    });
    tracing_subscriber::registry()
        .with(logs)
        .with(export)
        .init();
    if let Some(provider) = &provider {
        opentelemetry::global::set_tracer_provider(provider.clone());
        sluice_core::trace::set_exporting();
    }
    Ok(Telemetry { provider })
}

/// What the OpenTelemetry layer records: Sluice's own spans (the sync path's `invoke` span is at
/// debug level, so it costs nothing when only logs are written), and events at info and above
/// in them (as span events).
fn exported(metadata: &Metadata<'_>) -> bool {
    if metadata.is_span() {
        metadata.target().starts_with("sluice") && *metadata.level() <= Level::DEBUG
    } else {
        *metadata.level() <= Level::INFO
    }
}

/// The tracer provider: spans batched (`OTEL_BSP_*` honoured) and sent over OTLP/HTTP with
/// protobuf to the endpoint the environment names (`OTEL_EXPORTER_OTLP_*`), as
/// `OTEL_SERVICE_NAME` (`sluice` by default).
fn provider() -> anyhow::Result<SdkTracerProvider> {
    use anyhow::Context as _;
    use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
    let client = reqwest::Client::builder()
        .timeout(export_timeout(|name| std::env::var(name).ok()))
        .build()
        .context("making the OTLP exporter's HTTP client")?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_http_client(OnRuntime {
            client,
            runtime: tokio::runtime::Handle::current(),
        })
        .build()
        .context("the OTLP exporter (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_*)")?;
    let service = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

impl Telemetry {
    /// Exports the spans still batched (waiting up to the exporter's timeout), then stops.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        // The batch processor's thread sends the last batch through the runtime: this thread
        // must not be one of the runtime's while it waits.
        let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(error)) = done {
            tracing::warn!(%error, "spans not exported at shutdown");
        }
    }
}

/// The exporter's HTTP client: the workspace's reqwest (the OTLP crate's own would bring
/// another reqwest), each request sent from the Tokio runtime. The SDK's batch processor exports
/// from a thread of its own that is not the runtime's, so the request is spawned onto it and
/// awaited from there.
#[derive(Debug)]
struct OnRuntime {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OnRuntime {
    async fn send_bytes(
        &self,
        request: opentelemetry_http::Request<opentelemetry_http::Bytes>,
    ) -> Result<
        opentelemetry_http::Response<opentelemetry_http::Bytes>,
        opentelemetry_http::HttpError,
    > {
        let request = reqwest::Request::try_from(request)?;
        let client = self.client.clone();
        self.runtime
            .spawn(async move {
                let mut response = client.execute(request).await?;
                let mut answer = opentelemetry_http::Response::builder().status(response.status());
                if let Some(headers) = answer.headers_mut() {
                    *headers = std::mem::take(response.headers_mut());
                }
                let mut body = Vec::new();
                while let Some(chunk) = response.chunk().await? {
                    if body.len() + chunk.len() > MAX_EXPORT_ANSWER {
                        return Err(format!(
                            "the OTLP receiver's answer is longer than {MAX_EXPORT_ANSWER} bytes"
                        )
                        .into());
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(answer.body(opentelemetry_http::Bytes::from(body))?)
            })
            .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn export_is_asked_by_an_endpoint_and_only_then() {
        assert!(!export_asked(env(&[])));
        assert!(!export_asked(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])));
        assert!(export_asked(env(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://127.0.0.1:4318"
        )])));
        assert!(export_asked(env(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://127.0.0.1:4318/v1/traces"
        )])));
        assert!(!export_asked(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
            ("OTEL_SDK_DISABLED", "TRUE"),
        ])));
    }

    #[test]
    fn the_export_timeout_follows_the_standard_settings() {
        assert_eq!(export_timeout(env(&[])), EXPORT_TIMEOUT);
        assert_eq!(
            export_timeout(env(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "2500")])),
            Duration::from_millis(2500)
        );
        assert_eq!(
            export_timeout(env(&[
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
                ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "700"),
            ])),
            Duration::from_millis(700)
        );
        assert_eq!(
            export_timeout(env(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "soon")])),
            EXPORT_TIMEOUT
        );
    }

    #[test]
    fn only_sluices_spans_and_events_from_info_up_are_exported() {
        use tracing::callsite::Identifier;
        use tracing::field::FieldSet;
        use tracing::metadata::Kind;
        struct Site;
        impl tracing::Callsite for Site {
            fn set_interest(&self, _: tracing::subscriber::Interest) {}
            fn metadata(&self) -> &Metadata<'_> {
                unreachable!("not registered")
            }
        }
        static SITE: Site = Site;
        let meta = |target: &'static str, level, kind| {
            Metadata::new(
                "m",
                target,
                level,
                None,
                None,
                None,
                FieldSet::new(&[], Identifier(&SITE)),
                kind,
            )
        };
        assert!(exported(&meta(
            "sluice_gateway::invoke",
            Level::DEBUG,
            Kind::SPAN
        )));
        assert!(exported(&meta(
            "sluice_queue_worker",
            Level::INFO,
            Kind::SPAN
        )));
        assert!(!exported(&meta("sluice_gateway", Level::TRACE, Kind::SPAN)));
        assert!(!exported(&meta(
            "tower_http::trace",
            Level::INFO,
            Kind::SPAN
        )));
        assert!(exported(&meta(
            "sluice_queue_worker",
            Level::WARN,
            Kind::EVENT
        )));
        assert!(!exported(&meta(
            "sluice_queue_worker",
            Level::DEBUG,
            Kind::EVENT
        )));
    }
}
