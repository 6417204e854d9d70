//! Inbound webhook gateways: turns deliveries from GitHub, Slack, Bitbucket,
//! Docker Hub, Azure Container Registry (ACR) and CloudEvents producers into
//! [`GatewayEvent`]s,
//! the Brigade v2 events that subscription fan-out later copies to projects.
//!
//! Each source has its own module (`github`, `slack`, `bitbucket`,
//! `dockerhub`, `acr`, `cloudevents`), which owns:
//! - authenticating the delivery where the source signs it (GitHub's
//!   `X-Hub-Signature-256` HMAC, Slack's `X-Slack-Signature` within its
//!   time window, both checked in constant time; Bitbucket's by the
//!   connection's address, [`Auth::Address`]); the sources that
//!   authenticate with a token (Docker Hub, ACR, CloudEvents) share the
//!   token helpers here ([`bearer_token`], [`token_matches`]);
//! - validating the body and mapping it onto Brigade v2's event fields
//!   (source, type, qualifiers, labels, titles, git details, payload) the way
//!   the official Brigade v2 gateways do;
//! - checking every qualifier and label value against Brigade's label pattern
//!   `^[\w:/\-\.\?=\*]*$` (at most 255 characters). Values that do not fit are
//!   rejected with [`GatewayError::BadRequest`], never rewritten.
//!
//! [`GATEWAYS`] is the one table the API serves them from: each gateway's
//! name and path, how its deliveries authenticate (which of the server's
//! [`GatewayConfig`] credentials, and how they are presented) and how a
//! delivery becomes an event.
//!
//! Every function here is pure: no I/O, no clock, no global state. HTTP
//! routing, replay protection (for example de-duplicating GitHub delivery
//! ids; note that GitHub signs only the body, not the headers), the
//! CloudEvents `OPTIONS` abuse-protection handshake and subscription fan-out
//! belong to the caller.

mod acr;
mod bitbucket;
mod cloudevents;
mod dockerhub;
mod github;
mod slack;

use std::borrow::Cow;
use std::collections::BTreeMap;

use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

pub use acr::{ACR_SOURCE, acr};
pub use bitbucket::BITBUCKET_SOURCE;
use bitbucket::bitbucket_delivery;
pub use cloudevents::{CLOUDEVENT_TYPE, CLOUDEVENTS_SOURCE, cloudevent};
pub use dockerhub::{DOCKERHUB_SOURCE, LEGACY_PUSH_TYPE, dockerhub};
pub use github::{GITHUB_SOURCE, GithubDelivery, github};
use github::{github_delivery, verify_github_signature};
pub use mizzen_runtime::project::MAX_LABEL_LEN;
use mizzen_runtime::project::is_label_char;
pub use slack::SLACK_SOURCE;
use slack::{slack_delivery, verify_slack_signature};

/// Longest `short_title` (in characters) the gateways produce; longer titles
/// are cut on a character boundary and end with `…`.
pub const MAX_SHORT_TITLE_CHARS: usize = 100;

/// Tokens and secrets the webhook gateways check; a gateway without one is
/// disabled (404).
#[derive(Debug, Clone, Default)]
pub struct GatewayConfig {
    /// GitHub's webhook secret (HMAC key).
    pub github_secret: Option<String>,
    /// Tokens Docker Hub may present (`?access_token=`).
    pub dockerhub_tokens: Vec<String>,
    /// Tokens ACR may present (`Authorization: Bearer`).
    pub acr_tokens: Vec<String>,
    /// Tokens CloudEvents producers may present.
    pub cloudevents_tokens: Vec<String>,
    /// Slack's signing secret (HMAC key of `X-Slack-Signature`).
    pub slack_signing_secret: Option<String>,
    /// The addresses Bitbucket's deliveries may come from.
    pub bitbucket_addresses: Vec<ipnet::IpNet>,
    /// Where Slack commands may be answered: response URLs under this
    /// prefix; `None` for Slack's own ([`crate::slack_replies`]).
    pub slack_response_urls: Option<String>,
}

/// A webhook gateway, as the API serves it.
pub struct Gateway {
    /// Its name in messages, e.g. `Docker Hub`.
    pub name: &'static str,
    /// Its path under `/gateways/`, which also names its deliveries in the
    /// store.
    pub path: &'static str,
    /// How a delivery shows that it comes from the source.
    pub auth: Auth,
    /// The delivery an authenticated request carries.
    pub parse: fn(&HeaderMap, &[u8]) -> Result<Delivery, GatewayError>,
    /// Whether it answers CloudEvents' `OPTIONS` abuse-protection handshake.
    pub handshake: bool,
    /// Whether its answers are Slack messages (`text`, shown only to the
    /// person who typed the command), which is what Slack shows.
    pub slack_reply: bool,
}

/// What a gateway sees of a request.
#[derive(Clone, Copy)]
pub struct Request<'a> {
    /// Its headers.
    pub headers: &'a HeaderMap,
    /// Its raw query string.
    pub query: Option<&'a str>,
    /// Its body.
    pub body: &'a [u8],
    /// The address it came from.
    pub peer: Option<std::net::IpAddr>,
}

/// How a gateway's deliveries authenticate, with which of the server's
/// credentials.
pub enum Auth {
    /// GitHub's `X-Hub-Signature-256`: an HMAC-SHA256 of the body keyed with
    /// this secret.
    GithubSignature(fn(&GatewayConfig) -> Option<&str>),
    /// One of these tokens, as a bearer token or `?access_token=`
    /// ([`bearer_token`]).
    Token(fn(&GatewayConfig) -> &[String]),
    /// Slack's `X-Slack-Signature`: an HMAC-SHA256 of the timestamp and the
    /// body keyed with this signing secret, within the time window.
    SlackSignature(fn(&GatewayConfig) -> Option<&str>),
    /// The connection's address, within one of these ranges (a source that
    /// signs nothing: Bitbucket).
    Address(fn(&GatewayConfig) -> &[ipnet::IpNet]),
}

/// What a gateway made of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The source's id for it, when the source gives one: a delivery seen
    /// before is acknowledged and dropped.
    pub id: Option<String>,
    /// The events to fan out: one, or with GitHub's a CI/CD event beside it.
    pub events: Vec<GatewayEvent>,
}

impl From<GatewayEvent> for Delivery {
    fn from(event: GatewayEvent) -> Self {
        Self {
            id: None,
            events: vec![event],
        }
    }
}

/// The webhook gateways.
pub static GATEWAYS: [Gateway; 6] = [
    Gateway {
        name: "GitHub",
        path: "github",
        auth: Auth::GithubSignature(|config| config.github_secret.as_deref()),
        parse: |headers, body| {
            github_delivery(headers, body).map(|delivery| Delivery {
                id: Some(delivery.delivery_id),
                events: std::iter::once(delivery.event)
                    .chain(delivery.synthetic)
                    .collect(),
            })
        },
        handshake: false,
        slack_reply: false,
    },
    Gateway {
        name: "Docker Hub",
        path: "dockerhub",
        auth: Auth::Token(|config| &config.dockerhub_tokens),
        parse: |_, body| dockerhub(body).map(Delivery::from),
        handshake: false,
        slack_reply: false,
    },
    Gateway {
        name: "ACR",
        path: "acr",
        auth: Auth::Token(|config| &config.acr_tokens),
        parse: |_, body| acr(body).map(Delivery::from),
        handshake: false,
        slack_reply: false,
    },
    Gateway {
        name: "CloudEvents",
        path: "cloudevents",
        auth: Auth::Token(|config| &config.cloudevents_tokens),
        parse: |headers, body| cloudevent(headers, body).map(Delivery::from),
        handshake: true,
        slack_reply: false,
    },
    Gateway {
        name: "Slack",
        path: "slack",
        auth: Auth::SlackSignature(|config| config.slack_signing_secret.as_deref()),
        parse: |headers, body| {
            slack_delivery(headers, body).map(|(id, event)| Delivery {
                id: Some(id),
                events: vec![event],
            })
        },
        handshake: false,
        slack_reply: true,
    },
    Gateway {
        name: "Bitbucket",
        path: "bitbucket",
        auth: Auth::Address(|config| &config.bitbucket_addresses),
        parse: |headers, body| {
            bitbucket_delivery(headers, body).map(|(id, event)| Delivery {
                id,
                events: vec![event],
            })
        },
        handshake: false,
        slack_reply: false,
    },
];

impl Gateway {
    /// Whether the server has its credentials: one without is disabled.
    pub fn enabled(&self, config: &GatewayConfig) -> bool {
        match self.auth {
            Auth::GithubSignature(secret) | Auth::SlackSignature(secret) => {
                secret(config).is_some()
            }
            Auth::Token(tokens) => !tokens(config).is_empty(),
            Auth::Address(ranges) => !ranges(config).is_empty(),
        }
    }

    /// Checks that a request comes from the source; `query` is its raw
    /// query string, `peer` the connection's address (unknown: refused by
    /// an address allow-list), `now` the server's clock in seconds since
    /// the epoch (for signatures that expire).
    pub fn authenticate(
        &self,
        config: &GatewayConfig,
        request: &Request<'_>,
        now: u64,
    ) -> Result<(), GatewayError> {
        let Request {
            headers,
            query,
            body,
            peer,
        } = *request;
        match self.auth {
            Auth::GithubSignature(secret) => verify_github_signature(
                headers,
                body,
                secret(config).unwrap_or_default().as_bytes(),
            ),
            Auth::SlackSignature(secret) => verify_slack_signature(
                headers,
                body,
                secret(config).unwrap_or_default().as_bytes(),
                now,
            ),
            Auth::Address(ranges) => match peer {
                Some(address) if ranges(config).iter().any(|r| r.contains(&address)) => Ok(()),
                Some(address) => Err(unauthorized(format!(
                    "{address} is not among the addresses the {} gateway accepts deliveries from",
                    self.name
                ))),
                None => Err(unauthorized(format!(
                    "the {} gateway accepts deliveries by address, and this connection's is unknown",
                    self.name
                ))),
            },
            Auth::Token(tokens) => {
                if bearer_token(headers, query)
                    .is_some_and(|token| token_matches(&token, tokens(config)))
                {
                    Ok(())
                } else {
                    Err(unauthorized(format!(
                        "the {} gateway needs a valid token (Authorization: Bearer <token> or ?access_token=<token>)",
                        self.name
                    )))
                }
            }
        }
    }
}

/// Git coordinates an event asks the worker to check out. Empty strings mean
/// "unknown": the project's own settings then apply to that field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitDetails {
    /// URL to clone (GitHub's `repository.clone_url`).
    #[serde(rename = "cloneURL")]
    pub clone_url: String,
    /// Commit SHA to check out.
    pub commit: String,
    /// Fully qualified ref such as `refs/heads/main` or `refs/pull/12/head`.
    #[serde(rename = "ref")]
    pub git_ref: String,
}

/// An event a gateway produced, before subscription fan-out. Field names
/// follow Brigade v2's Event (and serialise with Brigade's JSON names).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayEvent {
    /// Event source, e.g. `brigade.sh/github`.
    pub source: String,
    /// Event type, e.g. `push` or `pull_request:opened`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Qualifiers; a subscription must match these exactly.
    pub qualifiers: BTreeMap<String, String>,
    /// Labels; a subscription's labels must all be present with equal values.
    pub labels: BTreeMap<String, String>,
    /// Short human-readable title (at most [`MAX_SHORT_TITLE_CHARS`] characters; may be empty).
    pub short_title: String,
    /// Longer human-readable title (may be empty).
    pub long_title: String,
    /// Git coordinates, when the delivery concerns a repository.
    pub git: Option<GitDetails>,
    /// The raw request body as UTF-8 (for CloudEvents, the whole event in structured JSON form).
    pub payload: String,
    /// The one project the event is for (a GitHub check run names it);
    /// empty: every project that subscribes.
    #[serde(
        rename = "projectID",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub project_id: String,
    /// State for whoever reports on the event (`tracking` and what it needs
    /// to find the commit), kept as the event's `sourceState`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source_state: BTreeMap<String, String>,
}

impl GatewayEvent {
    fn new(source: &str, event_type: &str, payload: String) -> Self {
        Self {
            source: source.to_owned(),
            event_type: event_type.to_owned(),
            payload,
            ..Self::default()
        }
    }
}

/// Why a delivery produced no event.
///
/// Messages name the offending header, parameter or field and never contain
/// secrets or tokens.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// Missing or invalid signature or token.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// Malformed delivery: the message names the missing or invalid field.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A valid delivery that produces no event (GitHub `ping`, ACR `ping`).
    /// The HTTP layer answers 200 with the message.
    #[error("ignored: {0}")]
    Ignored(String),
}

impl GatewayError {
    /// HTTP status to answer with: 401, 400, or 200 for [`GatewayError::Ignored`].
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Ignored(_) => StatusCode::OK,
        }
    }

    /// The message without the variant prefix, suitable for a response body.
    pub fn message(&self) -> &str {
        match self {
            Self::Unauthorized(m) | Self::BadRequest(m) | Self::Ignored(m) => m,
        }
    }
}

fn bad(message: impl Into<String>) -> GatewayError {
    GatewayError::BadRequest(message.into())
}

fn unauthorized(message: impl Into<String>) -> GatewayError {
    GatewayError::Unauthorized(message.into())
}

/// The token a request presents: from `Authorization: Bearer <token>`
/// ([`crate::auth::bearer_token`]), else from the `access_token` query parameter
/// (form-decoded: `%XX` escapes and `+` as space). `query` is the raw query
/// string, with or without its leading `?`. Returns `None` when neither is
/// present or the token is empty.
pub fn bearer_token(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    if let Some(token) = crate::auth::bearer_token(headers) {
        return Some(token.to_owned());
    }
    let query = query?;
    form_pairs(query.strip_prefix('?').unwrap_or(query))
        .flatten()
        .find_map(|(key, value)| (key == "access_token" && !value.is_empty()).then_some(value))
}

/// The `key=value` pairs of a query string or a form-encoded body
/// (`application/x-www-form-urlencoded`), each form-decoded (`%XX` escapes,
/// `+` as space), or `None` where a pair is not well formed; empty pairs
/// are skipped.
fn form_pairs(text: &str) -> impl Iterator<Item = Option<(String, String)>> + '_ {
    text.split('&').filter(|pair| !pair.is_empty()).map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        Some((percent_decode(key, true)?, percent_decode(value, true)?))
    })
}

/// Whether `presented` equals one of the configured plain-text tokens.
///
/// SHA-256 digests of both sides are compared with [`subtle::ConstantTimeEq`]
/// and every configured token is checked, so the time taken does not depend on
/// where (or whether) they differ. Empty tokens never match.
pub fn token_matches(presented: &str, expected: &[String]) -> bool {
    if presented.is_empty() {
        return false;
    }
    let presented = Sha256::digest(presented.as_bytes());
    let mut matched = Choice::from(0u8);
    for token in expected.iter().filter(|t| !t.is_empty()) {
        let token = Sha256::digest(token.as_bytes());
        matched |= presented.as_slice().ct_eq(token.as_slice());
    }
    matched.into()
}

/// A header's value as trimmed, non-empty visible ASCII.
fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)?
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// Decodes a body as UTF-8 JSON that must be an object; returns the text too.
fn parse_json_object(body: &[u8]) -> Result<(String, Value), GatewayError> {
    let text = std::str::from_utf8(body).map_err(|_| bad("request body is not valid UTF-8"))?;
    let value: Value = serde_json::from_str(text)
        .map_err(|e| bad(format!("request body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(bad("request body must be a JSON object"));
    }
    Ok((text.to_owned(), value))
}

/// The non-null value at a dotted path of object keys.
fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(value, |v, key| v.get(key))
        .filter(|v| !v.is_null())
}

/// The non-empty string at a dotted path, if any.
fn opt_str<'a>(value: &'a Value, path: &str) -> Option<&'a str> {
    lookup(value, path)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// The non-empty string at a dotted path, or a BadRequest naming the path.
fn req_str<'a>(value: &'a Value, path: &str) -> Result<&'a str, GatewayError> {
    match lookup(value, path) {
        None => Err(bad(format!("missing field `{path}`"))),
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::String(_)) => Err(bad(format!("field `{path}` must not be empty"))),
        Some(_) => Err(bad(format!("field `{path}` must be a string"))),
    }
}

/// Checks a value against Brigade's label pattern `^[\w:/\-\.\?=\*]*$`
/// ([`is_label_char`]) and the 1..=255 length bounds.
fn check_label_value(what: &str, value: &str) -> Result<(), GatewayError> {
    if value.is_empty() {
        return Err(bad(format!("{what} must not be empty")));
    }
    if let Some(c) = value.chars().find(|c| !is_label_char(*c)) {
        return Err(bad(format!(
            "{what} contains {c:?}, which Brigade label values do not allow \
             (allowed: ASCII letters, digits and _ : / - . ? = *)"
        )));
    }
    if value.len() > MAX_LABEL_LEN {
        return Err(bad(format!(
            "{what} is {} characters long; Brigade allows at most {MAX_LABEL_LEN}",
            value.len()
        )));
    }
    Ok(())
}

/// Cuts a title to [`MAX_SHORT_TITLE_CHARS`] characters, ending it with `…`.
fn truncate_title(title: String) -> String {
    if title.chars().count() <= MAX_SHORT_TITLE_CHARS {
        return title;
    }
    let mut short: String = title.chars().take(MAX_SHORT_TITLE_CHARS - 1).collect();
    short.push('…');
    short
}

/// At most `max` characters of `s`, for quoting input in error messages.
fn clip(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// Decodes `%XX` escapes (and `+` as space when `plus_as_space`); `None` on a
/// malformed escape or a result that is not UTF-8. The `percent-encoding`
/// crate keeps a malformed escape as it is, so such text is refused first.
fn percent_decode(s: &str, plus_as_space: bool) -> Option<String> {
    let well_formed = s.split('%').skip(1).all(|escaped| {
        escaped
            .as_bytes()
            .get(..2)
            .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    });
    if !well_formed {
        return None;
    }
    // `+` first, so that an escaped `%2B` stays a plus.
    let text = if plus_as_space {
        Cow::Owned(s.replace('+', " "))
    } else {
        Cow::Borrowed(s)
    };
    percent_encoding::percent_decode_str(&text)
        .decode_utf8()
        .ok()
        .map(Cow::into_owned)
}

/// What the gateways' tests share.
#[cfg(test)]
mod testing {
    use super::GatewayError;
    use axum::http::{HeaderMap, HeaderValue};

    pub(super) fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).expect("header value"));
        }
        map
    }

    pub(super) fn expect_bad(result: Result<impl std::fmt::Debug, GatewayError>) -> String {
        match result {
            Err(GatewayError::BadRequest(m)) => m,
            other => panic!("expected BadRequest, got {other:?}"),
        }
    }

    pub(super) fn expect_unauthorized(
        result: Result<impl std::fmt::Debug, GatewayError>,
    ) -> String {
        match result {
            Err(GatewayError::Unauthorized(m)) => m,
            other => panic!("expected Unauthorized, got {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{expect_bad, expect_unauthorized, headers};
    use super::*;

    #[test]
    fn short_titles_are_truncated_on_char_boundaries() {
        let long = "é".repeat(150);
        let cut = truncate_title(long);
        assert_eq!(cut.chars().count(), MAX_SHORT_TITLE_CHARS);
        assert!(cut.ends_with('…'));
        assert_eq!(truncate_title("PR #1".to_owned()), "PR #1");
    }

    #[test]
    fn bearer_token_from_header() {
        let h = headers(&[("authorization", "Bearer s3cr3t-t0ken")]);
        assert_eq!(bearer_token(&h, None).as_deref(), Some("s3cr3t-t0ken"));
        let h = headers(&[("authorization", "bearer   abc ")]);
        assert_eq!(
            bearer_token(&h, Some("access_token=other")).as_deref(),
            Some("abc")
        );
        let h = headers(&[("authorization", "Basic dXNlcjpwYXNz")]);
        assert_eq!(bearer_token(&h, None), None);
        assert_eq!(bearer_token(&HeaderMap::new(), None), None);
    }

    #[test]
    fn bearer_token_from_query() {
        let h = HeaderMap::new();
        assert_eq!(
            bearer_token(&h, Some("?foo=1&access_token=a%2Fb%3Dc+d")).as_deref(),
            Some("a/b=c d")
        );
        assert_eq!(
            bearer_token(&h, Some("access_token=%zz&access_token=ok")).as_deref(),
            Some("ok")
        );
        assert_eq!(bearer_token(&h, Some("access_token=")), None);
        assert_eq!(bearer_token(&h, Some("token=abc")), None);
    }

    #[test]
    fn token_matching() {
        let expected = vec!["first-token".to_owned(), "second-token".to_owned()];
        assert!(token_matches("first-token", &expected));
        assert!(token_matches("second-token", &expected));
        assert!(!token_matches("second-tokeN", &expected));
        assert!(!token_matches("", &expected));
        assert!(!token_matches("", &[String::new()]));
        assert!(!token_matches("first-token", &[]));
    }

    #[test]
    fn label_values_follow_brigade_pattern() {
        assert!(check_label_value("v", "a-Z_0.9:/?=*").is_ok());
        assert!(check_label_value("v", "").is_err());
        assert!(check_label_value("v", &"a".repeat(255)).is_ok());
        let msg = expect_bad(check_label_value("v", &"a".repeat(256)));
        assert!(msg.contains("255"), "{msg}");
    }

    #[test]
    fn errors_map_to_http_statuses() {
        assert_eq!(unauthorized("x").status(), StatusCode::UNAUTHORIZED);
        assert_eq!(bad("x").status(), StatusCode::BAD_REQUEST);
        assert_eq!(bad("field `a`").to_string(), "bad request: field `a`");
        assert_eq!(bad("field `a`").message(), "field `a`");
    }

    #[test]
    fn percent_decoding_refuses_malformed_escapes() {
        assert_eq!(percent_decode("a%2Bb+c", true).as_deref(), Some("a+b c"));
        assert_eq!(percent_decode("a+b", false).as_deref(), Some("a+b"));
        assert_eq!(percent_decode("caf%C3%A9", false).as_deref(), Some("café"));
        for malformed in ["%", "%4", "%zz", "a%%41", "%FF"] {
            assert_eq!(percent_decode(malformed, false), None, "{malformed}");
        }
    }

    #[test]
    fn each_gateway_authenticates_with_its_own_credentials() {
        fn request<'a>(
            headers: &'a HeaderMap,
            query: Option<&'a str>,
            body: &'a [u8],
        ) -> Request<'a> {
            Request {
                headers,
                query,
                body,
                peer: Some([192, 0, 2, 7].into()),
            }
        }
        let config = GatewayConfig {
            github_secret: Some("secret".into()),
            acr_tokens: vec!["acr-token".into()],
            ..GatewayConfig::default()
        };
        let enabled: Vec<_> = GATEWAYS
            .iter()
            .filter(|g| g.enabled(&config))
            .map(|g| g.path)
            .collect();
        assert_eq!(enabled, ["github", "acr"]);
        let acr = GATEWAYS.iter().find(|g| g.path == "acr").unwrap();
        let bearer = headers(&[("authorization", "Bearer acr-token")]);
        assert!(
            acr.authenticate(&config, &request(&bearer, None, b""), 0)
                .is_ok()
        );
        let none = HeaderMap::new();
        assert!(
            acr.authenticate(
                &config,
                &request(&none, Some("access_token=acr-token"), b""),
                0
            )
            .is_ok()
        );
        let msg = expect_unauthorized(acr.authenticate(
            &config,
            &request(&none, Some("access_token=x"), b""),
            0,
        ));
        assert!(msg.contains("the ACR gateway needs a valid token"), "{msg}");
        let github = &GATEWAYS[0];
        let msg =
            expect_unauthorized(github.authenticate(&config, &request(&bearer, None, b"{}"), 0));
        assert!(msg.contains("X-Hub-Signature-256"), "{msg}");
        // Slack's signature is checked against the server's clock.
        let config = GatewayConfig {
            slack_signing_secret: Some("slack-secret".into()),
            ..GatewayConfig::default()
        };
        let slack = GATEWAYS.iter().find(|g| g.path == "slack").unwrap();
        assert!(slack.enabled(&config));
        let body = b"command=%2Fdeploy";
        let signature = {
            let mut mac =
                <hmac::Hmac<Sha256> as hmac::Mac>::new_from_slice(b"slack-secret").unwrap();
            hmac::Mac::update(&mut mac, b"v0:1000:command=%2Fdeploy");
            format!("v0={}", hex::encode(hmac::Mac::finalize(mac).into_bytes()))
        };
        let signed = headers(&[
            ("x-slack-signature", &signature),
            ("x-slack-request-timestamp", "1000"),
        ]);
        assert!(
            slack
                .authenticate(&config, &request(&signed, None, body), 1_100)
                .is_ok()
        );
        let msg =
            expect_unauthorized(slack.authenticate(&config, &request(&signed, None, body), 2_000));
        assert!(msg.contains("more than 300 seconds"), "{msg}");

        // Bitbucket's by the connection's address.
        let config = GatewayConfig {
            bitbucket_addresses: vec!["192.0.2.0/28".parse().unwrap()],
            ..GatewayConfig::default()
        };
        let bitbucket = GATEWAYS.iter().find(|g| g.path == "bitbucket").unwrap();
        let none = HeaderMap::new();
        assert!(
            bitbucket
                .authenticate(&config, &request(&none, None, b"{}"), 0)
                .is_ok()
        );
        let outside = Request {
            peer: Some([192, 0, 2, 16].into()),
            ..request(&none, None, b"{}")
        };
        let msg = expect_unauthorized(bitbucket.authenticate(&config, &outside, 0));
        assert!(
            msg.contains("192.0.2.16 is not among the addresses"),
            "{msg}"
        );
        let unknown = Request {
            peer: None,
            ..request(&none, None, b"{}")
        };
        let msg = expect_unauthorized(bitbucket.authenticate(&config, &unknown, 0));
        assert!(msg.contains("this connection's is unknown"), "{msg}");
    }
}
