//! Calls to the API server: JSON requests with the stored bearer token, the
//! API's error bodies turned into one-line messages, and server-sent event
//! streams.

use std::fmt::Write as _;
use std::time::Duration;

use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

use super::sse;
use super::{Failure, config, failed};
use crate::EXIT_BAD_INPUT;

/// Every object the client sends carries this `apiVersion`.
pub const API_VERSION: &str = "brigade.sh/v2";

/// How long a connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a plain (not streaming) request may take in all.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// An error body is read for its message; more than this is not a message.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// A client of one API server.
#[derive(Clone)]
pub struct Api {
    address: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Api {
    /// A client of the server at `address`; `token` is sent as a bearer
    /// token when given.
    pub fn new(address: &str, token: Option<String>, insecure: bool) -> Result<Self, Failure> {
        let address = normalize_address(address).map_err(|error| Failure {
            code: EXIT_BAD_INPUT,
            error,
        })?;
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("mizzen/", env!("CARGO_PKG_VERSION")))
            .tls_danger_accept_invalid_certs(insecure)
            .build()
            .map_err(|e| failed(anyhow::Error::new(e).context("cannot set up the HTTP client")))?;
        Ok(Self {
            address,
            token,
            http,
        })
    }

    /// A client for the server and token of `MIZZEN_SERVER` and
    /// `MIZZEN_TOKEN` (for CI jobs), else of the login stored in the config
    /// file. The stored token goes only to the stored server: with
    /// `MIZZEN_SERVER` naming another, it is not sent.
    pub fn from_config() -> Result<Self, Failure> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let (server, token) = (env("MIZZEN_SERVER"), env("MIZZEN_TOKEN"));
        let path = config::path()?;
        let stored = match (&server, &token) {
            // Both from the environment: the file is not needed.
            (Some(_), Some(_)) => None,
            _ => config::load(&path)?,
        };
        let Some(address) = server
            .clone()
            .or_else(|| stored.as_ref().map(|c| c.api_address.clone()))
        else {
            return Err(Failure {
                code: EXIT_BAD_INPUT,
                error: anyhow::anyhow!(
                    "not logged in ({} does not exist); run `mizzen login --server URL` first, or set MIZZEN_SERVER and MIZZEN_TOKEN",
                    path.display()
                ),
            });
        };
        let same_server = |c: &config::Config| {
            server.as_deref().is_none_or(|s| {
                normalize_address(s).ok().as_deref() == Some(c.api_address.as_str())
            })
        };
        let stored = stored.filter(same_server);
        let insecure = stored.as_ref().is_some_and(|c| c.ignore_cert_errors);
        let token = token.or(stored.map(|c| c.api_token));
        Self::new(&address, token, insecure)
    }

    /// The server's address, as stored (no trailing slash).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// A request to `path`, a list of path segments under the address
    /// (each one percent-encoded as needed).
    pub fn request<'a>(&'a self, method: Method, path: &[&str]) -> Call<'a> {
        Call {
            api: self,
            method,
            path: path.iter().map(|s| s.to_string()).collect(),
            query: Vec::new(),
            body: None,
            basic: None,
            last_event_id: None,
        }
    }

    /// A GET request.
    pub fn get<'a>(&'a self, path: &[&str]) -> Call<'a> {
        self.request(Method::GET, path)
    }

    fn url(&self, path: &[String], query: &[(String, String)]) -> Result<Url, Failure> {
        let mut url = Url::parse(&self.address).map_err(|e| Failure {
            code: EXIT_BAD_INPUT,
            error: anyhow::anyhow!("the server address {:?} is not a URL: {e}", self.address),
        })?;
        {
            let mut segments = url.path_segments_mut().map_err(|()| Failure {
                code: EXIT_BAD_INPUT,
                error: anyhow::anyhow!(
                    "the server address {:?} cannot have paths under it",
                    self.address
                ),
            })?;
            segments.pop_if_empty();
            for segment in path {
                segments.push(segment);
            }
        }
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (key, value) in query {
                pairs.append_pair(key, value);
            }
        }
        Ok(url)
    }

    /// Why a request got no response, naming the server.
    fn unreachable(&self, error: &reqwest::Error) -> Failure {
        let cause = root_cause(error);
        let message = if error.is_timeout() {
            format!("the server at {} did not answer in time", self.address)
        } else if error.is_connect() {
            format!("cannot connect to the server at {}: {cause}", self.address)
        } else {
            format!(
                "the request to the server at {} failed: {cause}",
                self.address
            )
        };
        failed(anyhow::anyhow!(message))
    }
}

/// One request being built.
pub struct Call<'a> {
    api: &'a Api,
    method: Method,
    path: Vec<String>,
    query: Vec<(String, String)>,
    body: Option<Value>,
    basic: Option<(String, String)>,
    last_event_id: Option<String>,
}

impl Call<'_> {
    /// Adds a query parameter.
    pub fn query(mut self, key: &str, value: impl Into<String>) -> Self {
        self.query.push((key.to_string(), value.into()));
        self
    }

    /// Adds a query parameter when there is a value.
    pub fn query_opt(self, key: &str, value: Option<&str>) -> Self {
        match value {
            Some(value) => self.query(key, value),
            None => self,
        }
    }

    /// Sends `body` as JSON.
    pub fn json(mut self, body: Value) -> Self {
        self.body = Some(body);
        self
    }

    /// Authenticates with HTTP Basic instead of the bearer token.
    pub fn basic_auth(mut self, user: &str, password: &str) -> Self {
        self.basic = Some((user.to_string(), password.to_string()));
        self
    }

    /// Resumes a log stream after the event with this id.
    pub fn last_event_id(mut self, id: Option<&str>) -> Self {
        self.last_event_id = id.map(String::from);
        self
    }

    fn build(
        &self,
        accept: &'static str,
        timeout: Option<Duration>,
    ) -> Result<reqwest::RequestBuilder, Failure> {
        let url = self.api.url(&self.path, &self.query)?;
        let mut request = self
            .api
            .http
            .request(self.method.clone(), url)
            .header(ACCEPT, HeaderValue::from_static(accept));
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        request = match (&self.basic, &self.api.token) {
            (Some((user, password)), _) => request.basic_auth(user, Some(password)),
            (None, Some(token)) => request.bearer_auth(token),
            (None, None) => request,
        };
        if let Some(body) = &self.body {
            request = request.json(body);
        } else if self.method == Method::POST || self.method == Method::PUT {
            request = request.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        if let Some(id) = &self.last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        Ok(request)
    }

    /// Sends the request; the response's JSON (`Null` for an empty body)
    /// when the status is a success (the API answers 201 to creations, 200
    /// to the rest), else the API's error.
    pub async fn send(self) -> Result<Value, Failure> {
        let request = self.build("application/json", Some(REQUEST_TIMEOUT))?;
        let response = request.send().await.map_err(|e| self.api.unreachable(&e))?;
        if !response.status().is_success() {
            return Err(self.refused(response).await);
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.api.unreachable(&e))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            failed(anyhow::anyhow!(
                "the server at {} answered {} {} with a body that is not JSON: {e}",
                self.api.address,
                self.method,
                self.path.join("/")
            ))
        })
    }

    /// Sends the request and hands over the response, whose body is read by
    /// the caller as it arrives (a download), when the status is a success.
    pub async fn download(self) -> Result<reqwest::Response, Failure> {
        let request = self.build("application/octet-stream", None)?;
        let response = request.send().await.map_err(|e| self.api.unreachable(&e))?;
        if !response.status().is_success() {
            return Err(self.refused(response).await);
        }
        Ok(response)
    }

    /// Opens a server-sent event stream.
    pub async fn stream(self) -> Result<Stream, Failure> {
        let request = self.build("text/event-stream", None)?;
        let response = request.send().await.map_err(|e| self.api.unreachable(&e))?;
        if !response.status().is_success() {
            return Err(self.refused(response).await);
        }
        Ok(Stream {
            response,
            parser: sse::Parser::new(),
            ready: std::collections::VecDeque::new(),
            ended: false,
            address: self.api.address.clone(),
        })
    }

    async fn refused(&self, mut response: reqwest::Response) -> Failure {
        let status = response.status();
        let mut body = Vec::new();
        while body.len() < MAX_ERROR_BODY_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) | Err(_) => break,
            }
        }
        let mut message = api_error_message(status, &body);
        if status == StatusCode::UNAUTHORIZED && self.basic.is_none() {
            message.push_str(" (run `mizzen login` again)");
        }
        failed(anyhow::anyhow!(message))
    }
}

/// A server-sent event stream being read.
pub struct Stream {
    response: reqwest::Response,
    parser: sse::Parser,
    ready: std::collections::VecDeque<sse::Frame>,
    ended: bool,
    address: String,
}

impl Stream {
    /// The next frame; `None` when the server closed the stream.
    pub async fn next(&mut self) -> Result<Option<sse::Frame>, Failure> {
        loop {
            if let Some(frame) = self.ready.pop_front() {
                return Ok(Some(frame));
            }
            if self.ended {
                return Ok(None);
            }
            match self.response.chunk().await {
                Ok(Some(chunk)) => {
                    let frames = self.parser.push(&chunk).map_err(|e| {
                        failed(anyhow::anyhow!("the server at {}: {e}", self.address))
                    })?;
                    self.ready.extend(frames);
                }
                Ok(None) => {
                    self.ended = true;
                    self.ready.extend(self.parser.finish());
                }
                Err(e) => {
                    self.ended = true;
                    return Err(failed(anyhow::anyhow!(
                        "the stream from the server at {} broke: {}",
                        self.address,
                        root_cause(&e)
                    )));
                }
            }
        }
    }
}

/// `http(s)://host[:port][/prefix]` without a trailing slash.
pub fn normalize_address(address: &str) -> anyhow::Result<String> {
    let trimmed = address.trim().trim_end_matches('/');
    let url = Url::parse(trimmed)
        .map_err(|e| anyhow::anyhow!("the server address {address:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        anyhow::bail!(
            "the server address {address:?} must be an http:// or https:// URL, such as https://mizzen.example.com"
        );
    }
    if url.query().is_some() || url.fragment().is_some() {
        anyhow::bail!("the server address {address:?} must not have a query or fragment");
    }
    Ok(trimmed.to_string())
}

/// The one-line message for a refused request: the status, the error's
/// kind, its reason and details, e.g. `the server refused the request (404
/// NotFoundError): Project "x" not found`.
pub fn api_error_message(status: StatusCode, body: &[u8]) -> String {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let text = |v: &Value, key: &str| {
        v.get(key)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
    };
    let default_kind = match status.as_u16() {
        400 => "BadRequestError",
        401 => "AuthenticationError",
        403 => "AuthorizationError",
        404 => "NotFoundError",
        409 => "ConflictError",
        500 => "InternalServerError",
        501 => "NotSupportedError",
        _ => "",
    };
    let (kind, mut reason, details) = match &parsed {
        Some(v @ Value::Object(_)) => {
            let kind = text(v, "kind").unwrap_or_else(|| default_kind.to_string());
            let reason = text(v, "reason").or_else(|| {
                // Brigade's NotFoundError: {type, id}.
                match (text(v, "type"), text(v, "id")) {
                    (Some(ty), Some(id)) => Some(format!("{ty} {id:?} not found")),
                    _ => None,
                }
            });
            let details = match v.get("details") {
                Some(Value::String(s)) if !s.trim().is_empty() => vec![s.trim().to_string()],
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|item| match item {
                        Value::String(s) => s.trim().to_string(),
                        other => other.to_string(),
                    })
                    .filter(|s| !s.is_empty())
                    .collect(),
                _ => Vec::new(),
            };
            (kind, reason, details)
        }
        _ => {
            let text = String::from_utf8_lossy(body);
            let text: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
            let text = truncate(&text, 200);
            (
                default_kind.to_string(),
                (!text.is_empty()).then_some(text),
                Vec::new(),
            )
        }
    };
    if reason.is_none() {
        reason = Some(
            match status.as_u16() {
                401 => "the token was not accepted",
                403 => "the request is not authorized",
                404 => "not found",
                _ => status.canonical_reason().unwrap_or("no reason given"),
            }
            .to_string(),
        );
    }
    let mut message = String::from("the server refused the request (");
    let _ = write!(message, "{}", status.as_u16());
    if !kind.is_empty() {
        let _ = write!(message, " {kind}");
    }
    message.push_str("): ");
    message.push_str(reason.as_deref().unwrap_or_default());
    let details: Vec<String> = details
        .into_iter()
        .filter(|d| Some(d) != reason.as_ref())
        .collect();
    if !details.is_empty() {
        let _ = write!(message, ": {}", details.join("; "));
    }
    message.replace(['\n', '\r'], " ")
}

fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_string(),
    }
}

/// The innermost error's message (reqwest's own is "error sending request
/// for url (...)", whose cause is the useful part).
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(status: u16, body: &str) -> String {
        api_error_message(StatusCode::from_u16(status).unwrap(), body.as_bytes())
    }

    #[test]
    fn error_bodies_become_one_line() {
        assert_eq!(
            message(
                404,
                r#"{"apiVersion":"brigade.sh/v2","kind":"NotFoundError","reason":"Project \"x\" not found"}"#
            ),
            r#"the server refused the request (404 NotFoundError): Project "x" not found"#
        );
        assert_eq!(
            message(404, r#"{"kind":"NotFoundError","type":"Project","id":"x"}"#),
            r#"the server refused the request (404 NotFoundError): Project "x" not found"#
        );
        assert_eq!(
            message(
                400,
                r#"{"kind":"BadRequestError","reason":"invalid project","details":["metadata.id: too short","spec:\nmissing"]}"#
            ),
            "the server refused the request (400 BadRequestError): invalid project: metadata.id: too short; spec: missing"
        );
        assert_eq!(
            message(403, "{}"),
            "the server refused the request (403 AuthorizationError): the request is not authorized"
        );
        assert_eq!(
            message(
                401,
                r#"{"kind":"AuthenticationError","reason":"session expired"}"#
            ),
            "the server refused the request (401 AuthenticationError): session expired"
        );
        assert_eq!(
            message(502, "<html>Bad   gateway</html>"),
            "the server refused the request (502): <html>Bad gateway</html>"
        );
        assert_eq!(
            message(500, ""),
            "the server refused the request (500 InternalServerError): Internal Server Error"
        );
    }

    #[test]
    fn addresses() {
        assert_eq!(
            normalize_address("http://localhost:7000/").unwrap(),
            "http://localhost:7000"
        );
        assert_eq!(
            normalize_address("https://example.com/mizzen").unwrap(),
            "https://example.com/mizzen"
        );
        assert!(normalize_address("localhost:7000").is_err());
        assert!(normalize_address("ftp://example.com").is_err());
    }

    #[test]
    fn paths_are_encoded_and_joined_under_a_prefix() {
        // As main() does before any client is made.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let api = Api::new("https://example.com/prefix/", None, false)
            .unwrap_or_else(|f| panic!("{:#}", f.error));
        let url = api
            .url(
                &["v2".into(), "projects".into(), "a/b c".into()],
                &[
                    ("workerPhases".into(), "PENDING,RUNNING".into()),
                    ("qualifiers".into(), "k=v,k2=v2".into()),
                ],
            )
            .unwrap_or_else(|f| panic!("{:#}", f.error));
        assert_eq!(
            url.as_str(),
            "https://example.com/prefix/v2/projects/a%2Fb%20c?workerPhases=PENDING%2CRUNNING&qualifiers=k%3Dv%2Ck2%3Dv2"
        );
    }
}
