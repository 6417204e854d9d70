//! A fluentd (or Fluent Bit) Forward endpoint: the Forward protocol v1
//! (<https://github.com/fluent/fluentd/wiki/Forward-Protocol-Specification-v1>).
//!
//! Each batch goes as one PackedForward message per tag, each with a `chunk`
//! id the collector must acknowledge before the batch counts as delivered.
//! With a shared key, the connection starts with the HELO/PING/PONG
//! handshake, and the collector's PONG is checked too (it proves the
//! collector knows the key). TLS is optional.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use rmpv::Value;
use sha2::{Digest as _, Sha512};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::{ForwardedLine, Sink, SinkError};

/// How long connecting, the handshake and each acknowledgement may take: a
/// collector slower than this is treated as down (the batch is retried).
const TIMEOUT: Duration = Duration::from_secs(30);

/// The most a collector's answer may hold while it is being read: acks and
/// the handshake are a few hundred bytes.
const MAX_ANSWER: usize = 64 * 1024;

/// The longest tag a template may produce (fluentd has no limit; this keeps
/// a label-free template's output sane).
const MAX_TAG: usize = 512;

/// Where and how to reach a Forward endpoint.
#[derive(Debug, Clone)]
pub struct FluentdConfig {
    /// `HOST:PORT`.
    pub address: String,
    /// TLS, when the endpoint serves it.
    pub tls: Option<FluentdTls>,
    /// The shared key of the handshake, when the endpoint asks for one.
    pub shared_key: Option<String>,
    /// This side's hostname in the handshake (fluentd refuses its own).
    pub hostname: String,
    /// How each line's tag is made.
    pub tag: TagTemplate,
}

/// TLS to a Forward endpoint.
#[derive(Debug, Clone, Default)]
pub struct FluentdTls {
    /// PEM certificates to trust instead of the system's.
    pub ca_file: Option<PathBuf>,
}

/// A tag template: text with `{project}`, `{event}`, `{job}`, `{container}`,
/// `{source}` and `{type}`. Empty parts are dropped (`{job}` is empty for
/// the worker's own lines), so `mizzen.{project}.{event}.{job}.{container}`
/// tags a worker's line `mizzen.hello.<event>.worker`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagTemplate(Vec<TagPart>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum TagPart {
    Text(String),
    Project,
    Event,
    Job,
    Container,
    Source,
    Type,
}

/// A tag template that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("tag template {template:?}: {problem}")]
pub struct TagTemplateError {
    template: String,
    problem: String,
}

impl TagTemplate {
    /// The default: the seed's `log.<service>` generalised.
    pub const DEFAULT: &str = "mizzen.{project}.{event}.{job}.{container}";

    /// Parses a template.
    pub fn parse(template: &str) -> Result<Self, TagTemplateError> {
        let problem = |problem: String| TagTemplateError {
            template: template.to_string(),
            problem,
        };
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(TagPart::Text(rest[..open].to_string()));
            }
            let close = rest[open..].find('}').ok_or_else(|| {
                problem(format!(
                    "`{{` at byte {} is never closed",
                    template.len() - rest.len() + open
                ))
            })?;
            let name = &rest[open + 1..open + close];
            parts.push(match name {
                "project" => TagPart::Project,
                "event" => TagPart::Event,
                "job" => TagPart::Job,
                "container" => TagPart::Container,
                "source" => TagPart::Source,
                "type" => TagPart::Type,
                other => {
                    return Err(problem(format!(
                        "unknown placeholder {{{other}}} (known: {{project}}, {{event}}, {{job}}, {{container}}, {{source}}, {{type}})"
                    )));
                }
            });
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(TagPart::Text(rest.to_string()));
        }
        if parts.is_empty() {
            return Err(problem("a tag cannot be empty".into()));
        }
        Ok(Self(parts))
    }

    /// The tag of one line. Dots are the separators collectors match on, so
    /// empty parts are squeezed out; characters other than letters, digits
    /// and `._-/` in a value become `_`.
    pub fn render(&self, line: &ForwardedLine) -> String {
        let mut tag = String::new();
        for part in &self.0 {
            let value = match part {
                TagPart::Text(text) => {
                    tag.push_str(text);
                    continue;
                }
                TagPart::Project => &line.project,
                TagPart::Event => &line.event,
                TagPart::Job => &line.job,
                TagPart::Container => &line.container,
                TagPart::Source => &line.source,
                TagPart::Type => &line.event_type,
            };
            tag.extend(value.chars().map(|c| {
                if c.is_ascii_alphanumeric() || "._-/".contains(c) {
                    c
                } else {
                    '_'
                }
            }));
        }
        let mut squeezed = String::with_capacity(tag.len());
        for piece in tag.split('.').filter(|p| !p.is_empty()) {
            if !squeezed.is_empty() {
                squeezed.push('.');
            }
            squeezed.push_str(piece);
        }
        squeezed.truncate(MAX_TAG);
        squeezed
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Io for T {}

/// A connection to the collector, kept between batches.
struct Connection {
    io: Box<dyn Io>,
    read: Vec<u8>,
}

/// The Forward sink.
pub(crate) struct FluentdSink {
    config: FluentdConfig,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
    connection: Option<Connection>,
}

impl FluentdSink {
    pub fn new(config: FluentdConfig) -> Result<Self, SinkError> {
        let tls = match &config.tls {
            None => None,
            Some(tls) => Some(tls_connector(&config.address, tls)?),
        };
        Ok(Self {
            config,
            tls,
            connection: None,
        })
    }

    async fn connect(&self) -> Result<Connection, SinkError> {
        let address = &self.config.address;
        let tcp = tokio::time::timeout(TIMEOUT, TcpStream::connect(address))
            .await
            .map_err(|_| SinkError::Retry(format!("connecting to {address}: timed out")))?
            .map_err(|e| SinkError::Retry(format!("connecting to {address}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = match &self.tls {
            None => Box::new(tcp),
            Some((connector, name)) => Box::new(
                tokio::time::timeout(TIMEOUT, connector.connect(name.clone(), tcp))
                    .await
                    .map_err(|_| SinkError::Retry(format!("TLS with {address}: timed out")))?
                    .map_err(|e| SinkError::Retry(format!("TLS with {address}: {e}")))?,
            ),
        };
        let mut connection = Connection {
            io,
            read: Vec::new(),
        };
        if let Some(key) = &self.config.shared_key {
            handshake(&mut connection, key, &self.config.hostname, address).await?;
        }
        Ok(connection)
    }
}

#[async_trait::async_trait]
impl Sink<ForwardedLine> for FluentdSink {
    fn name(&self) -> &'static str {
        "fluentd"
    }

    async fn send(&mut self, lines: &[ForwardedLine]) -> Result<u64, SinkError> {
        let mut connection = match self.connection.take() {
            Some(connection) => connection,
            None => self.connect().await?,
        };
        // Lines grouped by tag, each group in the order the lines came.
        let mut by_tag: BTreeMap<String, Vec<&ForwardedLine>> = BTreeMap::new();
        for line in lines {
            by_tag
                .entry(self.config.tag.render(line))
                .or_default()
                .push(line);
        }
        let mut chunks = Vec::with_capacity(by_tag.len());
        let mut message = Vec::new();
        for (tag, group) in &by_tag {
            let chunk = chunk_id();
            packed_forward(&mut message, tag, group, &chunk);
            chunks.push(chunk);
        }
        let address = &self.config.address;
        tokio::time::timeout(TIMEOUT, connection.io.write_all(&message))
            .await
            .map_err(|_| SinkError::Retry(format!("sending to {address}: timed out")))?
            .map_err(|e| SinkError::Retry(format!("sending to {address}: {e}")))?;
        let _ = connection.io.flush().await;
        for chunk in &chunks {
            let answer = read_value(&mut connection, address).await?;
            let acked = map_get(&answer, "ack").and_then(Value::as_str);
            if acked != Some(chunk.as_str()) {
                return Err(SinkError::Retry(format!(
                    "{address} answered {answer} where the ack of chunk {chunk} was due{}",
                    if is_message(&answer, "HELO") {
                        " (it asks for the shared-key handshake: set the shared key)"
                    } else {
                        ""
                    }
                )));
            }
        }
        self.connection = Some(connection);
        Ok(0)
    }
}

/// A random chunk id, as the spec suggests (base64 of 128 random bits).
fn chunk_id() -> String {
    let mut bytes = [0u8; 16];
    // The OS's random source failing is not worth failing a batch over:
    // the id must only differ from the last few.
    let _ = getrandom::fill(&mut bytes);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `[tag, entries, {size, chunk}]`, the entries a MessagePack stream of
/// `[EventTime, record]`.
fn packed_forward(out: &mut Vec<u8>, tag: &str, lines: &[&ForwardedLine], chunk: &str) {
    let mut entries = Vec::new();
    for line in lines {
        // Writing into a Vec cannot fail.
        let _ = rmp::encode::write_array_len(&mut entries, 2);
        let _ = rmp::encode::write_ext_meta(&mut entries, 8, 0);
        let seconds = line.time_nanos.div_euclid(1_000_000_000) as u32;
        let nanos = line.time_nanos.rem_euclid(1_000_000_000) as u32;
        entries.extend_from_slice(&seconds.to_be_bytes());
        entries.extend_from_slice(&nanos.to_be_bytes());
        let attributes = line.attributes();
        let _ = rmp::encode::write_map_len(&mut entries, attributes.len() as u32 + 1);
        let _ = rmp::encode::write_str(&mut entries, "message");
        let _ = rmp::encode::write_str(&mut entries, &line.message);
        for (key, value) in attributes {
            let _ = rmp::encode::write_str(&mut entries, key);
            let _ = rmp::encode::write_str(&mut entries, value);
        }
    }
    let _ = rmp::encode::write_array_len(out, 3);
    let _ = rmp::encode::write_str(out, tag);
    let _ = rmp::encode::write_bin(out, &entries);
    let _ = rmp::encode::write_map_len(out, 2);
    let _ = rmp::encode::write_str(out, "size");
    let _ = rmp::encode::write_uint(out, lines.len() as u64);
    let _ = rmp::encode::write_str(out, "chunk");
    let _ = rmp::encode::write_str(out, chunk);
}

/// The shared-key handshake: HELO from the collector, our PING, its PONG.
async fn handshake(
    connection: &mut Connection,
    key: &str,
    hostname: &str,
    address: &str,
) -> Result<(), SinkError> {
    let helo = read_value(connection, address).await?;
    let options = match &helo {
        Value::Array(items) if is_message(&helo, "HELO") && items.len() >= 2 => &items[1],
        _ => {
            return Err(SinkError::Retry(format!(
                "{address} did not start the shared-key handshake (HELO) but sent {helo}"
            )));
        }
    };
    let nonce = map_get(options, "nonce")
        .and_then(bytes_of)
        .unwrap_or_default();
    let auth = map_get(options, "auth")
        .and_then(bytes_of)
        .unwrap_or_default();
    if !auth.is_empty() {
        return Err(SinkError::Config(format!(
            "{address} asks for a username and password, which Mizzen does not send (only the shared key)"
        )));
    }
    let mut salt = [0u8; 16];
    let _ = getrandom::fill(&mut salt);
    let salt = hex::encode(salt);
    let digest = |host: &str| {
        let mut hash = Sha512::new();
        hash.update(salt.as_bytes());
        hash.update(host.as_bytes());
        hash.update(&nonce);
        hash.update(key.as_bytes());
        hex::encode(hash.finalize())
    };
    let mut ping = Vec::new();
    let _ = rmp::encode::write_array_len(&mut ping, 6);
    for field in ["PING", hostname, &salt, &digest(hostname), "", ""] {
        let _ = rmp::encode::write_str(&mut ping, field);
    }
    tokio::time::timeout(TIMEOUT, connection.io.write_all(&ping))
        .await
        .map_err(|_| SinkError::Retry(format!("handshake with {address}: timed out")))?
        .map_err(|e| SinkError::Retry(format!("handshake with {address}: {e}")))?;
    let pong = read_value(connection, address).await?;
    let Value::Array(items) = &pong else {
        return Err(SinkError::Retry(format!(
            "{address} answered the PING with {pong}"
        )));
    };
    if !is_message(&pong, "PONG") || items.len() < 5 {
        return Err(SinkError::Retry(format!(
            "{address} answered the PING with {pong}"
        )));
    }
    if items[1].as_bool() != Some(true) {
        let reason = items[2].as_str().unwrap_or("no reason given");
        return Err(SinkError::Retry(format!(
            "{address} refused the shared key: {reason}"
        )));
    }
    let server = items[3].as_str().unwrap_or_default();
    if items[4].as_str() != Some(digest(server).as_str()) {
        return Err(SinkError::Retry(format!(
            "{address} answered the handshake without proving it knows the shared key"
        )));
    }
    Ok(())
}

fn is_message(value: &Value, kind: &str) -> bool {
    matches!(value, Value::Array(items) if items.first().and_then(Value::as_str) == Some(kind))
}

fn map_get<'v>(value: &'v Value, key: &str) -> Option<&'v Value> {
    value
        .as_map()?
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

fn bytes_of(value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::Binary(bytes) => Some(bytes.clone()),
        Value::String(s) => Some(s.as_bytes().to_vec()),
        _ => None,
    }
}

/// Reads one MessagePack value the collector sent.
async fn read_value(connection: &mut Connection, address: &str) -> Result<Value, SinkError> {
    loop {
        if !connection.read.is_empty() {
            let mut cursor = connection.read.as_slice();
            match rmpv::decode::read_value(&mut cursor) {
                Ok(value) => {
                    let used = connection.read.len() - cursor.len();
                    connection.read.drain(..used);
                    return Ok(value);
                }
                Err(
                    rmpv::decode::Error::InvalidMarkerRead(e)
                    | rmpv::decode::Error::InvalidDataRead(e),
                ) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
                Err(e) => {
                    return Err(SinkError::Retry(format!(
                        "{address} sent what is not MessagePack: {e}"
                    )));
                }
            }
        }
        if connection.read.len() > MAX_ANSWER {
            return Err(SinkError::Retry(format!(
                "{address} sent more than {MAX_ANSWER} bytes without a complete answer"
            )));
        }
        let n = tokio::time::timeout(TIMEOUT, connection.io.read_buf(&mut connection.read))
            .await
            .map_err(|_| SinkError::Retry(format!("{address} did not answer within {TIMEOUT:?}")))?
            .map_err(|e| SinkError::Retry(format!("reading from {address}: {e}")))?;
        if n == 0 {
            return Err(SinkError::Retry(format!("{address} closed the connection")));
        }
    }
}

fn tls_connector(
    address: &str,
    tls: &FluentdTls,
) -> Result<
    (
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    ),
    SinkError,
> {
    use rustls::pki_types::pem::PemObject as _;
    let host = address
        .rsplit_once(':')
        .map_or(address, |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| SinkError::Config(format!("fluentd address {address}: {e}")))?;
    let config = match &tls.ca_file {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            let certificates =
                rustls::pki_types::CertificateDer::pem_file_iter(path).map_err(|e| {
                    SinkError::Config(format!("fluentd CA file {}: {e}", path.display()))
                })?;
            for certificate in certificates {
                let certificate = certificate.map_err(|e| {
                    SinkError::Config(format!("fluentd CA file {}: {e}", path.display()))
                })?;
                roots.add(certificate).map_err(|e| {
                    SinkError::Config(format!("fluentd CA file {}: {e}", path.display()))
                })?;
            }
            if roots.is_empty() {
                return Err(SinkError::Config(format!(
                    "fluentd CA file {}: no certificate in it",
                    path.display()
                )));
            }
            rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth()
        }
        None => {
            use rustls_platform_verifier::ConfigVerifierExt as _;
            rustls::ClientConfig::with_platform_verifier()
                .map_err(|e| SinkError::Config(format!("the system's TLS roots: {e}")))?
        }
    };
    Ok((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(job: &str, container: &str) -> ForwardedLine {
        ForwardedLine {
            time_nanos: 1_700_000_000_123_456_789,
            project: "hello".into(),
            event: "e1".into(),
            source: "brigade.sh/cli".into(),
            event_type: "exec".into(),
            job: job.into(),
            container: container.into(),
            message: "hi".into(),
            labels: BTreeMap::new(),
        }
    }

    #[test]
    fn the_default_tag_names_project_event_job_and_container() {
        let template = TagTemplate::parse(TagTemplate::DEFAULT).unwrap();
        assert_eq!(
            template.render(&line("build", "build")),
            "mizzen.hello.e1.build.build"
        );
        assert_eq!(
            template.render(&line("", "worker")),
            "mizzen.hello.e1.worker"
        );
        let odd = TagTemplate::parse("x.{source}.{type}").unwrap();
        let mut l = line("", "worker");
        l.event_type = "a b*c".into();
        assert_eq!(odd.render(&l), "x.brigade.sh/cli.a_b_c");
    }

    #[test]
    fn a_bad_template_is_named() {
        let e = TagTemplate::parse("log.{service}").unwrap_err().to_string();
        assert!(e.contains("unknown placeholder {service}"), "{e}");
        let e = TagTemplate::parse("log.{project").unwrap_err().to_string();
        assert!(e.contains("never closed"), "{e}");
    }
}
