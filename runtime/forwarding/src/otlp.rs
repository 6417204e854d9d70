//! OTLP logs and traces endpoints over HTTP with protobuf
//! (<https://opentelemetry.io/docs/specs/otlp/#otlphttp>), the messages from
//! the official definitions (the `opentelemetry-proto` crate).
//!
//! A batch is one `ExportLogsServiceRequest` (or `ExportTraceServiceRequest`). As the specification says:
//! 429, 502, 503 and 504 (and a connection that fails) are retried, after
//! the `Retry-After` the collector asked for if it did; any other 4xx means
//! the request itself is refused, so retrying cannot help (the lines are
//! dropped and counted); a partial success drops the lines it rejected.

use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span};
use prost::Message as _;

use crate::{ForwardedLine, Sink, SinkError};

/// How long one request may take before it is retried.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The longest `Retry-After` honoured: a collector asking for more is
/// retried sooner (each retry is one request).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// How much of a refusal's body goes into the warning.
const MAX_REASON: usize = 512;

/// Where to send OTLP logs.
#[derive(Debug, Clone)]
pub struct OtlpLogsConfig {
    /// The full URL, e.g. `http://collector:4318/v1/logs`.
    pub endpoint: String,
    /// Extra request headers (an API key).
    pub headers: Vec<(String, String)>,
}

/// Where to send OTLP traces.
#[derive(Debug, Clone)]
pub struct OtlpTracesConfig {
    /// The full URL, e.g. `http://collector:4318/v1/traces`.
    pub endpoint: String,
    /// Extra request headers (an API key).
    pub headers: Vec<(String, String)>,
}

/// One span of an event's trace, as Mizzen records it: ids in hex, times
/// in nanoseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TraceSpan {
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits, or empty for a root span.
    pub parent_span_id: String,
    /// What it covers: `event`, `queued`, `worker`, `job`.
    pub name: String,
    /// When it started.
    pub start_nanos: i64,
    /// When it ended.
    pub end_nanos: i64,
    /// Its attributes.
    pub attributes: std::collections::BTreeMap<String, String>,
    /// Whether what it covers failed.
    pub failed: bool,
}

/// An OTLP/HTTP endpoint and how to reach it.
struct Endpoint {
    url: String,
    headers: Vec<(String, String)>,
    client: reqwest::Client,
    /// Set by a `Retry-After`; waited before the next request.
    retry_after: Option<Duration>,
}

impl Endpoint {
    fn new(what: &str, url: &str, headers: &[(String, String)]) -> Result<Self, SinkError> {
        reqwest::Url::parse(url)
            .map_err(|e| SinkError::Config(format!("OTLP {what} endpoint {url}: {e}")))?;
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .map_err(|e| SinkError::Config(format!("an HTTP client for OTLP: {e}")))?;
        Ok(Self {
            url: url.to_string(),
            headers: headers.to_vec(),
            client,
            retry_after: None,
        })
    }

    /// Posts one encoded request; the body of a 2xx answer.
    async fn post(&mut self, body: Vec<u8>) -> Result<Vec<u8>, SinkError> {
        if let Some(wait) = self.retry_after.take() {
            tokio::time::sleep(wait).await;
        }
        let url = &self.url;
        let mut request = self
            .client
            .post(url)
            .header("content-type", "application/x-protobuf")
            .body(body);
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        let response = request
            .send()
            .await
            .map_err(|e| SinkError::Retry(format!("POST {url}: {e}")))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response
                .bytes()
                .await
                .map(|b| b.to_vec())
                .unwrap_or_default());
        }
        self.retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER));
        let mut reason = response.text().await.unwrap_or_default();
        reason.truncate(reason.floor_char_boundary(MAX_REASON));
        let why = format!("POST {url}: {status} {reason}");
        if matches!(status.as_u16(), 429 | 502 | 503 | 504) || status.is_server_error() {
            Err(SinkError::Retry(why))
        } else {
            Err(SinkError::Rejected(why))
        }
    }
}

pub(crate) struct OtlpLogsSink(Endpoint);

impl OtlpLogsSink {
    pub fn new(config: OtlpLogsConfig) -> Result<Self, SinkError> {
        Endpoint::new("logs", &config.endpoint, &config.headers).map(Self)
    }
}

pub(crate) struct OtlpTracesSink(Endpoint);

impl OtlpTracesSink {
    pub fn new(config: OtlpTracesConfig) -> Result<Self, SinkError> {
        Endpoint::new("traces", &config.endpoint, &config.headers).map(Self)
    }
}

/// The request for a batch: one resource (Mizzen), one scope, a record a
/// line with the line's attributes.
pub fn logs_request(lines: &[ForwardedLine]) -> ExportLogsServiceRequest {
    let records = lines
        .iter()
        .map(|line| LogRecord {
            time_unix_nano: line.time_nanos.max(0) as u64,
            observed_time_unix_nano: line.time_nanos.max(0) as u64,
            severity_number: SeverityNumber::Info as i32,
            severity_text: "INFO".into(),
            body: Some(string_value(&line.message)),
            attributes: line
                .attributes()
                .into_iter()
                .map(|(key, value)| KeyValue {
                    key: key.to_string(),
                    value: Some(string_value(value)),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .collect();
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource()),
            scope_logs: vec![ScopeLogs {
                scope: Some(scope()),
                log_records: records,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

fn string_value(text: &str) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::StringValue(text.to_string())),
    }
}

fn resource() -> Resource {
    Resource {
        attributes: vec![KeyValue {
            key: "service.name".into(),
            value: Some(string_value("mizzen")),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "mizzen".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    }
}

/// The request for a batch of spans.
pub fn traces_request(spans: &[TraceSpan]) -> ExportTraceServiceRequest {
    let spans = spans
        .iter()
        .map(|s| Span {
            trace_id: hex::decode(&s.trace_id).unwrap_or_default(),
            span_id: hex::decode(&s.span_id).unwrap_or_default(),
            parent_span_id: hex::decode(&s.parent_span_id).unwrap_or_default(),
            name: s.name.clone(),
            kind: span::SpanKind::Internal as i32,
            start_time_unix_nano: s.start_nanos.max(0) as u64,
            end_time_unix_nano: s.end_nanos.max(s.start_nanos).max(0) as u64,
            attributes: s
                .attributes
                .iter()
                .map(|(key, value)| KeyValue {
                    key: key.clone(),
                    value: Some(string_value(value)),
                    ..Default::default()
                })
                .collect(),
            status: Some(Status {
                code: if s.failed {
                    opentelemetry_proto::tonic::trace::v1::status::StatusCode::Error as i32
                } else {
                    opentelemetry_proto::tonic::trace::v1::status::StatusCode::Ok as i32
                },
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource()),
            scope_spans: vec![ScopeSpans {
                scope: Some(scope()),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

#[async_trait::async_trait]
impl Sink<ForwardedLine> for OtlpLogsSink {
    fn name(&self) -> &'static str {
        "otlp"
    }

    async fn send(&mut self, lines: &[ForwardedLine]) -> Result<u64, SinkError> {
        let body = self.0.post(logs_request(lines).encode_to_vec()).await?;
        let refused = ExportLogsServiceResponse::decode(body.as_ref())
            .ok()
            .and_then(|r| r.partial_success)
            .map_or(0, |p| {
                if p.rejected_log_records > 0 {
                    tracing::warn!(endpoint = %self.0.url, rejected = p.rejected_log_records, reason = %p.error_message, "the OTLP collector rejected some log lines");
                }
                p.rejected_log_records.max(0) as u64
            });
        Ok(refused)
    }
}

#[async_trait::async_trait]
impl Sink<TraceSpan> for OtlpTracesSink {
    fn name(&self) -> &'static str {
        "otlp-traces"
    }

    async fn send(&mut self, spans: &[TraceSpan]) -> Result<u64, SinkError> {
        let body = self.0.post(traces_request(spans).encode_to_vec()).await?;
        let refused = ExportTraceServiceResponse::decode(body.as_ref())
            .ok()
            .and_then(|r| r.partial_success)
            .map_or(0, |p| {
                if p.rejected_spans > 0 {
                    tracing::warn!(endpoint = %self.0.url, rejected = p.rejected_spans, reason = %p.error_message, "the OTLP collector rejected some spans");
                }
                p.rejected_spans.max(0) as u64
            });
        Ok(refused)
    }
}
