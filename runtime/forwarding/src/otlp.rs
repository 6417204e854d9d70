//! An OTLP logs endpoint over HTTP with protobuf
//! (<https://opentelemetry.io/docs/specs/otlp/#otlphttp>), the messages from
//! the official definitions (the `opentelemetry-proto` crate).
//!
//! A batch is one `ExportLogsServiceRequest`. As the specification says:
//! 429, 502, 503 and 504 (and a connection that fails) are retried, after
//! the `Retry-After` the collector asked for if it did; any other 4xx means
//! the request itself is refused, so retrying cannot help (the lines are
//! dropped and counted); a partial success drops the lines it rejected.

use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::resource::v1::Resource;
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

pub(crate) struct OtlpLogsSink {
    config: OtlpLogsConfig,
    client: reqwest::Client,
    /// Set by a `Retry-After`; waited before the next request.
    retry_after: Option<Duration>,
}

impl OtlpLogsSink {
    pub fn new(config: OtlpLogsConfig) -> Result<Self, SinkError> {
        reqwest::Url::parse(&config.endpoint).map_err(|e| {
            SinkError::Config(format!("OTLP logs endpoint {}: {e}", config.endpoint))
        })?;
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .map_err(|e| SinkError::Config(format!("an HTTP client for OTLP: {e}")))?;
        Ok(Self {
            config,
            client,
            retry_after: None,
        })
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
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(string_value("mizzen")),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: "mizzen".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
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

#[async_trait::async_trait]
impl Sink for OtlpLogsSink {
    fn name(&self) -> &'static str {
        "otlp"
    }

    async fn send(&mut self, lines: &[ForwardedLine]) -> Result<u64, SinkError> {
        if let Some(wait) = self.retry_after.take() {
            tokio::time::sleep(wait).await;
        }
        let endpoint = &self.config.endpoint;
        let mut request = self
            .client
            .post(endpoint)
            .header("content-type", "application/x-protobuf")
            .body(logs_request(lines).encode_to_vec());
        for (name, value) in &self.config.headers {
            request = request.header(name, value);
        }
        let response = request
            .send()
            .await
            .map_err(|e| SinkError::Retry(format!("POST {endpoint}: {e}")))?;
        let status = response.status();
        if status.is_success() {
            let body = response.bytes().await.unwrap_or_default();
            let refused = ExportLogsServiceResponse::decode(body.as_ref())
                .ok()
                .and_then(|r| r.partial_success)
                .map_or(0, |p| {
                    if p.rejected_log_records > 0 {
                        tracing::warn!(endpoint, rejected = p.rejected_log_records, reason = %p.error_message, "the OTLP collector rejected some log lines");
                    }
                    p.rejected_log_records.max(0) as u64
                });
            return Ok(refused);
        }
        self.retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER));
        let mut reason = response.text().await.unwrap_or_default();
        reason.truncate(reason.floor_char_boundary(MAX_REASON));
        let why = format!("POST {endpoint}: {status} {reason}");
        if matches!(status.as_u16(), 429 | 502 | 503 | 504) || status.is_server_error() {
            Err(SinkError::Retry(why))
        } else {
            Err(SinkError::Rejected(why))
        }
    }
}
