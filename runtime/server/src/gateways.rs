//! Inbound webhook gateways: turns deliveries from GitHub, Docker Hub, Azure
//! Container Registry (ACR) and CloudEvents producers into [`GatewayEvent`]s,
//! the Brigade v2 events that subscription fan-out later copies to projects.
//!
//! This module owns, for each of those sources:
//! - authenticating the delivery where the source signs it (GitHub's
//!   `X-Hub-Signature-256` HMAC, checked in constant time), plus the
//!   shared-token helpers ([`bearer_token`], [`token_matches`]) used by the
//!   sources that authenticate with a token (Docker Hub, ACR, CloudEvents);
//! - validating the body and mapping it onto Brigade v2's event fields
//!   (source, type, qualifiers, labels, titles, git details, payload) the way
//!   the official Brigade v2 gateways do;
//! - checking every qualifier and label value against Brigade's label pattern
//!   `^[\w:/\-\.\?=\*]*$` (at most 255 characters). Values that do not fit are
//!   rejected with [`GatewayError::BadRequest`], never rewritten.
//!
//! Every function here is pure: no I/O, no clock, no global state. HTTP
//! routing, choosing which secret or token list applies to a request,
//! replay protection (for example de-duplicating GitHub delivery ids; note
//! that GitHub signs only the body, not the headers), the CloudEvents
//! `OPTIONS` abuse-protection handshake and subscription fan-out belong to the
//! caller.

use std::collections::BTreeMap;

use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

/// Event source of events produced by [`github`].
pub const GITHUB_SOURCE: &str = "brigade.sh/github";
/// Event source of events produced by [`dockerhub`].
pub const DOCKERHUB_SOURCE: &str = "brigade.sh/dockerhub";
/// Event source of events produced by [`acr`].
pub const ACR_SOURCE: &str = "brigade.sh/acr";
/// Event source of events produced by [`cloudevent`].
pub const CLOUDEVENTS_SOURCE: &str = "brigade.sh/cloudevents";
/// Event type of every event produced by [`cloudevent`].
pub const CLOUDEVENT_TYPE: &str = "cloudevent";
/// Event type Brigade v1's container-registry gateway used for image pushes.
///
/// [`dockerhub`] and [`acr`] never produce it: they emit `push` as Brigade v2
/// does. For projects written against v1 (`events.on("image_push", ...)`),
/// the server additionally emits a copy of a registry `push` event with this
/// type to projects that subscribe to it; the payload is unchanged.
pub const LEGACY_PUSH_TYPE: &str = "image_push";
/// Longest `short_title` (in characters) the gateways produce; longer titles
/// are cut on a character boundary and end with `…`.
pub const MAX_SHORT_TITLE_CHARS: usize = 100;
/// Longest qualifier or label value Brigade accepts.
pub const MAX_LABEL_LEN: usize = 255;

/// GitHub events that may legitimately arrive without a `repository` object
/// (organisation-, app- or account-level events). Any other event without one
/// is rejected.
const REPOSITORY_OPTIONAL_EVENTS: &[&str] = &[
    "github_app_authorization",
    "installation",
    "installation_repositories",
    "installation_target",
    "marketplace_purchase",
    "membership",
    "meta",
    "org_block",
    "organization",
    "package",
    "personal_access_token_request",
    "project",
    "project_card",
    "project_column",
    "projects_v2",
    "projects_v2_item",
    "registry_package",
    "security_advisory",
    "sponsorship",
    "team",
];

/// Longest accepted `X-GitHub-Delivery` value (GitHub sends a 36-character GUID).
const MAX_DELIVERY_ID_LEN: usize = 255;

type HmacSha256 = Hmac<Sha256>;

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

/// A verified GitHub delivery: GitHub's delivery id plus the event it maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GithubDelivery {
    /// The `X-GitHub-Delivery` GUID; the caller can use it to drop redeliveries.
    pub delivery_id: String,
    /// The event to fan out.
    pub event: GatewayEvent,
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

// ---------------------------------------------------------------------------
// GitHub
// ---------------------------------------------------------------------------

/// Verifies and translates a GitHub webhook delivery.
///
/// Checks, in order: `X-Hub-Signature-256` (`sha256=<hex HMAC-SHA256 of the
/// raw body keyed with secret>`, compared in constant time; an empty secret
/// is refused), `X-GitHub-Delivery`, `X-GitHub-Event`, then the JSON body.
/// A `ping` yields [`GatewayError::Ignored`].
///
/// The event type is the `X-GitHub-Event` value, or `<event>:<action>` when
/// the body has a string `action`; a push that deletes a branch or tag is
/// `push:delete` and carries no git details (as in Brigade). Qualifier `repo`
/// is `repository.full_name`; label `appID` is set when the delivery comes
/// from a GitHub App (`X-GitHub-Hook-Installation-Target-Type`). Titles
/// follow Brigade's GitHub gateway: `PR #12` / `PR #12: <title>` for pull
/// request events, `branch: main` or `tag: v1.0` for pushes.
pub fn github(
    headers: &HeaderMap,
    body: &[u8],
    secret: &[u8],
) -> Result<GithubDelivery, GatewayError> {
    verify_github_signature(headers, body, secret)?;

    let delivery_id = header_str(headers, "x-github-delivery")
        .ok_or_else(|| bad("missing or non-ASCII X-GitHub-Delivery header"))?;
    if delivery_id.len() > MAX_DELIVERY_ID_LEN {
        return Err(bad(format!(
            "X-GitHub-Delivery header is longer than {MAX_DELIVERY_ID_LEN} bytes"
        )));
    }
    let event_name = header_str(headers, "x-github-event")
        .ok_or_else(|| bad("missing or non-ASCII X-GitHub-Event header"))?;
    if event_name == "ping" {
        return Err(GatewayError::Ignored(format!(
            "GitHub ping (delivery {delivery_id}) acknowledged; no event created"
        )));
    }

    let (payload, json) = parse_json_object(body).map_err(|e| match e {
        GatewayError::BadRequest(m) => bad(format!(
            "{m} (configure the GitHub webhook with content type application/json)"
        )),
        other => other,
    })?;

    let action = json
        .get("action")
        .and_then(Value::as_str)
        .filter(|a| !a.is_empty());
    let deleted_push =
        event_name == "push" && json.get("deleted").and_then(Value::as_bool) == Some(true);
    let event_type = match action {
        Some(action) => format!("{event_name}:{action}"),
        None if deleted_push => "push:delete".to_owned(),
        None => event_name.to_owned(),
    };
    check_label_value(
        "event type (X-GitHub-Event header and `action` field)",
        &event_type,
    )?;

    let mut event = GatewayEvent::new(GITHUB_SOURCE, &event_type, payload);

    if let Some(app_id) = github_app_id(headers)? {
        event.labels.insert("appID".to_owned(), app_id.to_owned());
    }

    let repository = lookup(&json, "repository");
    let clone_url = match repository {
        Some(_) => {
            let full_name = req_str(&json, "repository.full_name")?;
            check_label_value("field `repository.full_name`", full_name)?;
            event
                .qualifiers
                .insert("repo".to_owned(), full_name.to_owned());
            Some(opt_str(&json, "repository.clone_url").unwrap_or_default())
        }
        None if REPOSITORY_OPTIONAL_EVENTS.contains(&event_name) => None,
        None => {
            return Err(bad(format!(
                "missing field `repository.full_name` (required for `{event_name}` events)"
            )));
        }
    };

    let (commit, git_ref) = github_git_target(event_name, &json)?;
    event.git = match clone_url {
        Some(_) if deleted_push => None,
        Some(clone_url) => Some(GitDetails {
            clone_url: clone_url.to_owned(),
            commit,
            git_ref,
        }),
        None => None,
    };

    let (short_title, long_title) = github_titles(event_name, &json);
    event.short_title = truncate_title(short_title);
    event.long_title = long_title;

    Ok(GithubDelivery {
        delivery_id: delivery_id.to_owned(),
        event,
    })
}

fn verify_github_signature(
    headers: &HeaderMap,
    body: &[u8],
    secret: &[u8],
) -> Result<(), GatewayError> {
    if secret.is_empty() {
        return Err(unauthorized(
            "no GitHub webhook secret is configured, so X-Hub-Signature-256 cannot be verified",
        ));
    }
    let value = headers.get("x-hub-signature-256").ok_or_else(|| {
        unauthorized("missing X-Hub-Signature-256 header (set a secret on the GitHub webhook)")
    })?;
    let value = value
        .to_str()
        .map_err(|_| unauthorized("X-Hub-Signature-256 header is not visible ASCII"))?;
    let digest_hex = value.trim().strip_prefix("sha256=").ok_or_else(|| {
        unauthorized("X-Hub-Signature-256 header must have the form sha256=<hex digest>")
    })?;
    let tag = hex::decode(digest_hex)
        .map_err(|_| unauthorized("X-Hub-Signature-256 header digest is not valid hex"))?;
    if tag.len() != 32 {
        return Err(unauthorized(
            "X-Hub-Signature-256 header digest must be 64 hex characters",
        ));
    }
    let mut mac = <HmacSha256 as Mac>::new_from_slice(secret)
        .map_err(|_| unauthorized("the configured GitHub webhook secret is unusable"))?;
    mac.update(body);
    mac.verify_slice(&tag).map_err(|_| {
        unauthorized("X-Hub-Signature-256 does not match the request body and configured secret")
    })
}

/// The GitHub App id, when the webhook belongs to a GitHub App.
fn github_app_id(headers: &HeaderMap) -> Result<Option<&str>, GatewayError> {
    let target_type = header_str(headers, "x-github-hook-installation-target-type");
    if !matches!(target_type, Some("integration" | "app")) {
        return Ok(None);
    }
    match header_str(headers, "x-github-hook-installation-target-id") {
        None => Ok(None),
        Some(id) if !id.is_empty() && id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit()) => {
            Ok(Some(id))
        }
        Some(_) => Err(bad(
            "X-GitHub-Hook-Installation-Target-ID header must be a decimal GitHub App id",
        )),
    }
}

/// `(commit, ref)` for a GitHub event; empty strings when not applicable.
fn github_git_target(event_name: &str, json: &Value) -> Result<(String, String), GatewayError> {
    let s = |path: &str| opt_str(json, path).unwrap_or_default().to_owned();
    Ok(match event_name {
        "push" => (s("after"), s("ref")),
        "pull_request"
        | "pull_request_review"
        | "pull_request_review_comment"
        | "pull_request_review_thread" => {
            let number = pr_number(json)?;
            (
                s("pull_request.head.sha"),
                format!("refs/pull/{number}/head"),
            )
        }
        "check_suite" => (
            s("check_suite.head_sha"),
            qualify_ref("refs/heads/", opt_str(json, "check_suite.head_branch")),
        ),
        "check_run" => (
            opt_str(json, "check_run.head_sha")
                .or_else(|| opt_str(json, "check_run.check_suite.head_sha"))
                .unwrap_or_default()
                .to_owned(),
            qualify_ref(
                "refs/heads/",
                opt_str(json, "check_run.check_suite.head_branch"),
            ),
        ),
        "release" => (
            String::new(),
            qualify_ref("refs/tags/", opt_str(json, "release.tag_name")),
        ),
        "create" => {
            let prefix = match opt_str(json, "ref_type") {
                Some("tag") => "refs/tags/",
                Some("branch") => "refs/heads/",
                _ => "",
            };
            (String::new(), qualify_ref(prefix, opt_str(json, "ref")))
        }
        "status" => (s("sha"), String::new()),
        _ => (String::new(), String::new()),
    })
}

fn pr_number(json: &Value) -> Result<u64, GatewayError> {
    lookup(json, "pull_request.number")
        .and_then(Value::as_u64)
        .ok_or_else(|| bad("missing or non-numeric field `pull_request.number`"))
}

/// Prefixes a short ref name (`main`, `v1.0`) unless it is already fully qualified.
fn qualify_ref(prefix: &str, name: Option<&str>) -> String {
    match name {
        None => String::new(),
        Some(name) if name.starts_with("refs/") => name.to_owned(),
        Some(name) => format!("{prefix}{name}"),
    }
}

/// `(short, long)` titles, following Brigade's GitHub gateway.
fn github_titles(event_name: &str, json: &Value) -> (String, String) {
    match event_name {
        "pull_request"
        | "pull_request_review"
        | "pull_request_review_comment"
        | "pull_request_review_thread" => {
            let Some(number) = lookup(json, "pull_request.number").and_then(Value::as_u64) else {
                return (String::new(), String::new());
            };
            let short = format!("PR #{number}");
            let long = opt_str(json, "pull_request.title")
                .map(|title| format!("{short}: {title}"))
                .unwrap_or_default();
            (short, long)
        }
        "push" => {
            let git_ref = opt_str(json, "ref").unwrap_or_default();
            let title = if let Some(branch) = git_ref.strip_prefix("refs/heads/") {
                format!("branch: {branch}")
            } else if let Some(tag) = git_ref.strip_prefix("refs/tags/") {
                format!("tag: {tag}")
            } else {
                String::new()
            };
            (title.clone(), title)
        }
        _ => (String::new(), String::new()),
    }
}

// ---------------------------------------------------------------------------
// Container registries
// ---------------------------------------------------------------------------

/// Translates a Docker Hub repository webhook.
///
/// Source `brigade.sh/dockerhub`, type `push`, qualifier `repo` =
/// `repository.repo_name` (or `namespace/name` when `repo_name` is absent),
/// label `tag` = `push_data.tag` when present; payload = the body unchanged.
/// Docker Hub does not sign its webhooks: authenticate the request with
/// [`bearer_token`] and [`token_matches`] (the `access_token` query parameter).
/// See [`LEGACY_PUSH_TYPE`] for Brigade v1's `image_push`.
pub fn dockerhub(body: &[u8]) -> Result<GatewayEvent, GatewayError> {
    let (payload, json) = parse_json_object(body)?;
    let repo = match opt_str(&json, "repository.repo_name") {
        Some(repo) => repo.to_owned(),
        None => match (
            opt_str(&json, "repository.namespace"),
            opt_str(&json, "repository.name"),
        ) {
            (Some(namespace), Some(name)) => format!("{namespace}/{name}"),
            _ => return Err(bad("missing field `repository.repo_name`")),
        },
    };
    check_label_value("field `repository.repo_name`", &repo)?;

    let mut event = GatewayEvent::new(DOCKERHUB_SOURCE, "push", payload);
    event.qualifiers.insert("repo".to_owned(), repo);
    if let Some(tag) = opt_str(&json, "push_data.tag") {
        check_label_value("field `push_data.tag`", tag)?;
        event.labels.insert("tag".to_owned(), tag.to_owned());
    }
    Ok(event)
}

/// Translates an Azure Container Registry webhook.
///
/// Source `brigade.sh/acr`, type = `action` (`push` or `delete`; `ping` yields
/// [`GatewayError::Ignored`]; any other action, e.g. `chart_push`, is a bad
/// request), qualifier `registry` = `request.host`, label `repo` =
/// `target.repository`, label `tag` = `target.tag` when present; payload =
/// the body unchanged. Authenticate the request with [`bearer_token`] and
/// [`token_matches`].
pub fn acr(body: &[u8]) -> Result<GatewayEvent, GatewayError> {
    let (payload, json) = parse_json_object(body)?;
    let action = req_str(&json, "action")?;
    match action {
        "ping" => {
            return Err(GatewayError::Ignored(
                "ACR ping acknowledged; no event created".to_owned(),
            ));
        }
        "push" | "delete" => {}
        other => {
            return Err(bad(format!(
                "unsupported ACR action {:?} in field `action` (only push and delete create events)",
                clip(other, 64)
            )));
        }
    }
    let host = req_str(&json, "request.host")?;
    check_label_value("field `request.host`", host)?;
    let repository = req_str(&json, "target.repository")?;
    check_label_value("field `target.repository`", repository)?;

    let mut event = GatewayEvent::new(ACR_SOURCE, action, payload);
    event
        .qualifiers
        .insert("registry".to_owned(), host.to_owned());
    event
        .labels
        .insert("repo".to_owned(), repository.to_owned());
    if let Some(tag) = opt_str(&json, "target.tag") {
        check_label_value("field `target.tag`", tag)?;
        event.labels.insert("tag".to_owned(), tag.to_owned());
    }
    Ok(event)
}

// ---------------------------------------------------------------------------
// CloudEvents
// ---------------------------------------------------------------------------

/// Translates a CloudEvents 1.0 HTTP request, in structured mode (`Content-Type:
/// application/cloudevents+json`) or binary mode (`ce-*` headers, body = data).
///
/// Source `brigade.sh/cloudevents`, type `cloudevent`, qualifiers `source` and
/// `type` copied from the CloudEvent. `specversion` must be `1.0`; `id`,
/// `source` and `type` are required. The payload is the whole CloudEvent in
/// structured JSON form: the body itself in structured mode; in binary mode a
/// JSON object built from the (percent-decoded) `ce-*` headers, with
/// `datacontenttype` from `Content-Type` and the body as `data` (parsed JSON
/// for JSON content types, a string for other UTF-8 bodies, `data_base64`
/// otherwise). Batched mode is not supported. Authenticate the request with
/// [`bearer_token`] and [`token_matches`].
pub fn cloudevent(headers: &HeaderMap, body: &[u8]) -> Result<GatewayEvent, GatewayError> {
    let media = media_type(headers);
    let (attributes, payload, binary) = match media.as_deref() {
        Some("application/cloudevents+json") => {
            let (text, value) = parse_json_object(body)?;
            match value {
                Value::Object(map) => (map, text, false),
                _ => return Err(bad("request body must be a JSON object")),
            }
        }
        Some("application/cloudevents-batch+json") => {
            return Err(bad(
                "batched CloudEvents (application/cloudevents-batch+json) are not supported; \
                 send one event per request",
            ));
        }
        Some(other) if other.starts_with("application/cloudevents") => {
            return Err(bad(format!(
                "unsupported CloudEvents format {:?} in Content-Type; use application/cloudevents+json",
                clip(other, 64)
            )));
        }
        _ if headers.contains_key("ce-specversion") => {
            let map = binary_mode_event(headers, body)?;
            let text = Value::Object(map.clone()).to_string();
            (map, text, true)
        }
        _ => {
            return Err(bad(
                "request is not a CloudEvent: expected Content-Type application/cloudevents+json \
                 (structured mode) or a ce-specversion header (binary mode)",
            ));
        }
    };

    match required_ce_attribute(&attributes, "specversion", binary)? {
        "1.0" => {}
        other => {
            return Err(bad(format!(
                "unsupported CloudEvents specversion {:?}; only \"1.0\" is supported",
                clip(other, 32)
            )));
        }
    }
    required_ce_attribute(&attributes, "id", binary)?;
    let source = required_ce_attribute(&attributes, "source", binary)?;
    let ce_type = required_ce_attribute(&attributes, "type", binary)?;
    check_label_value("CloudEvents attribute `source`", source)?;
    check_label_value("CloudEvents attribute `type`", ce_type)?;

    let mut event = GatewayEvent::new(CLOUDEVENTS_SOURCE, CLOUDEVENT_TYPE, payload);
    event
        .qualifiers
        .insert("source".to_owned(), source.to_owned());
    event
        .qualifiers
        .insert("type".to_owned(), ce_type.to_owned());
    Ok(event)
}

fn required_ce_attribute<'a>(
    attributes: &'a Map<String, Value>,
    name: &str,
    binary: bool,
) -> Result<&'a str, GatewayError> {
    let hint = if binary {
        format!(" (ce-{name} header)")
    } else {
        String::new()
    };
    match attributes.get(name) {
        Some(Value::String(value)) if !value.is_empty() => Ok(value),
        None | Some(Value::Null) | Some(Value::String(_)) => Err(bad(format!(
            "missing required CloudEvents attribute `{name}`{hint}"
        ))),
        Some(_) => Err(bad(format!(
            "CloudEvents attribute `{name}`{hint} must be a string"
        ))),
    }
}

/// Builds the structured form of a binary-mode CloudEvent.
fn binary_mode_event(headers: &HeaderMap, body: &[u8]) -> Result<Map<String, Value>, GatewayError> {
    let mut event = Map::new();
    for (name, value) in headers {
        let Some(attribute) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        if attribute.is_empty() || !attribute.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(bad(format!(
                "header {name} does not name a CloudEvents attribute (lowercase letters and digits only)"
            )));
        }
        if attribute == "data" || attribute == "datacontenttype" {
            return Err(bad(format!(
                "header {name} is not allowed in binary mode: the body carries data and Content-Type its type"
            )));
        }
        if event.contains_key(attribute) {
            return Err(bad(format!("header {name} is repeated")));
        }
        let decoded = value
            .to_str()
            .ok()
            .and_then(|v| percent_decode(v, false))
            .ok_or_else(|| bad(format!("header {name} is not valid percent-encoded UTF-8")))?;
        event.insert(attribute.to_owned(), Value::String(decoded));
    }

    let content_type = match headers.get(CONTENT_TYPE) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| bad("Content-Type header is not visible ASCII"))?
                .trim()
                .to_owned(),
        ),
    };
    let json_data = media_type(headers).is_some_and(|m| is_json_media_type(&m));
    if let Some(content_type) = content_type.filter(|c| !c.is_empty()) {
        event.insert("datacontenttype".to_owned(), Value::String(content_type));
    }
    if !body.is_empty() {
        if json_data {
            let data: Value = serde_json::from_slice(body).map_err(|e| {
                bad(format!(
                    "request body is not valid JSON although Content-Type says it is: {e}"
                ))
            })?;
            event.insert("data".to_owned(), data);
        } else {
            match std::str::from_utf8(body) {
                Ok(text) => event.insert("data".to_owned(), Value::String(text.to_owned())),
                Err(_) => {
                    event.insert("data_base64".to_owned(), Value::String(base64_encode(body)))
                }
            };
        }
    }
    Ok(event)
}

// ---------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------

/// The token a request presents: from `Authorization: Bearer <token>` (scheme
/// matched case-insensitively), else from the `access_token` query parameter
/// (form-decoded: `%XX` escapes and `+` as space). `query` is the raw query
/// string, with or without its leading `?`. Returns `None` when neither is
/// present or the token is empty.
pub fn bearer_token(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    let from_header = headers
        .get_all(AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(parse_bearer);
    if from_header.is_some() {
        return from_header;
    }
    let query = query?;
    let query = query.strip_prefix('?').unwrap_or(query);
    query
        .split('&')
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if percent_decode(key, true)? == "access_token" {
                percent_decode(value, true)
            } else {
                None
            }
        })
        .find(|token| !token.is_empty())
}

fn parse_bearer(value: &str) -> Option<String> {
    let (scheme, rest) = value.trim().split_once([' ', '\t'])?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim();
    (!token.is_empty()).then(|| token.to_owned())
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

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A header's value as trimmed, non-empty visible ASCII.
fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)?
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// Lowercased media type of `Content-Type`, without parameters.
fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(CONTENT_TYPE)?.to_str().ok()?;
    let media = value.split(';').next().unwrap_or_default().trim();
    (!media.is_empty()).then(|| media.to_ascii_lowercase())
}

fn is_json_media_type(media: &str) -> bool {
    media == "application/json" || media == "text/json" || media.ends_with("+json")
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

fn is_label_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '/' | '-' | '.' | '?' | '=' | '*')
}

/// Checks a value against Brigade's label pattern `^[\w:/\-\.\?=\*]*$`
/// (ASCII `\w`, as in Go's regexp) and the 1..=255 length bounds.
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

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes `%XX` escapes (and `+` as space when `plus_as_space`); `None` on a
/// malformed escape or a result that is not UTF-8.
fn percent_decode(s: &str, plus_as_space: bool) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hi = hex_value(*bytes.get(i + 1)?)?;
                let lo = hex_value(*bytes.get(i + 2)?)?;
                out.push((hi << 4) | lo);
                i += 3;
            }
            b'+' if plus_as_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Standard base64 with padding (RFC 4648 §4), for CloudEvents `data_base64`.
fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b0 = chunk.first().copied().unwrap_or_default();
        let b1 = chunk.get(1).copied().unwrap_or_default();
        let b2 = chunk.get(2).copied().unwrap_or_default();
        let n = (u32::from(b0) << 16) | (u32::from(b1) << 8) | u32::from(b2);
        for i in 0..4 {
            if i <= chunk.len() {
                let index = (n >> (18 - 6 * i)) & 63;
                out.push(char::from(ALPHABET[index as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const SECRET: &[u8] = b"It's a Secret to Everybody";

    fn sign(secret: &[u8], body: &[u8]) -> String {
        let mut mac = <HmacSha256 as Mac>::new_from_slice(secret).expect("hmac key");
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).expect("header value"));
        }
        map
    }

    fn github_headers(event: &str, body: &[u8]) -> HeaderMap {
        headers(&[
            ("x-github-event", event),
            ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
            ("x-hub-signature-256", &sign(SECRET, body)),
            ("content-type", "application/json"),
        ])
    }

    fn deliver(event: &str, body: &str) -> Result<GithubDelivery, GatewayError> {
        github(
            &github_headers(event, body.as_bytes()),
            body.as_bytes(),
            SECRET,
        )
    }

    fn expect_bad(result: Result<impl std::fmt::Debug, GatewayError>) -> String {
        match result {
            Err(GatewayError::BadRequest(m)) => m,
            other => panic!("expected BadRequest, got {other:?}"),
        }
    }

    fn expect_unauthorized(result: Result<impl std::fmt::Debug, GatewayError>) -> String {
        match result {
            Err(GatewayError::Unauthorized(m)) => m,
            other => panic!("expected Unauthorized, got {other:?}"),
        }
    }

    const REPO: &str = r#"{
        "id": 1296269, "name": "Hello-World", "full_name": "octocat/Hello-World",
        "private": false, "owner": {"login": "octocat", "id": 1},
        "html_url": "https://github.com/octocat/Hello-World",
        "clone_url": "https://github.com/octocat/Hello-World.git",
        "ssh_url": "git@github.com:octocat/Hello-World.git",
        "default_branch": "main"
    }"#;

    fn push_body(git_ref: &str, deleted: bool) -> String {
        format!(
            r#"{{
            "ref": "{git_ref}",
            "before": "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
            "after": "{after}",
            "created": false, "deleted": {deleted}, "forced": false,
            "base_ref": null,
            "compare": "https://github.com/octocat/Hello-World/compare/6113728f27ae...0000000000",
            "commits": [],
            "head_commit": null,
            "repository": {REPO},
            "pusher": {{"name": "octocat", "email": "octocat@github.com"}},
            "sender": {{"login": "octocat", "id": 1}}
        }}"#,
            after = if deleted {
                "0000000000000000000000000000000000000000"
            } else {
                "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c"
            },
        )
    }

    fn pr_body(number: u64, title: &str) -> String {
        format!(
            r#"{{
            "action": "opened",
            "number": {number},
            "pull_request": {{
                "url": "https://api.github.com/repos/octocat/Hello-World/pulls/{number}",
                "number": {number},
                "state": "open",
                "title": "{title}",
                "user": {{"login": "hubot"}},
                "author_association": "CONTRIBUTOR",
                "head": {{
                    "label": "hubot:fix-flux",
                    "ref": "fix-flux",
                    "sha": "e5bd3914e2e596debea16f433f57875b5b90bcd6",
                    "repo": {{"full_name": "hubot/Hello-World", "fork": true}}
                }},
                "base": {{
                    "label": "octocat:main",
                    "ref": "main",
                    "sha": "6dcb09b5b57875f334f61aebed695e2e4193db5e"
                }}
            }},
            "repository": {REPO},
            "sender": {{"login": "hubot"}}
        }}"#
        )
    }

    // ----- GitHub: happy paths -------------------------------------------

    #[test]
    fn github_push_to_branch() {
        let body = push_body("refs/heads/main", false);
        let delivery = deliver("push", &body).expect("push accepted");
        assert_eq!(delivery.delivery_id, "72d3162e-cc78-11e3-81ab-4c9367dc0958");
        let event = delivery.event;
        assert_eq!(event.source, "brigade.sh/github");
        assert_eq!(event.event_type, "push");
        assert_eq!(
            event.qualifiers,
            BTreeMap::from([("repo".to_owned(), "octocat/Hello-World".to_owned())])
        );
        assert!(event.labels.is_empty());
        assert_eq!(
            event.git,
            Some(GitDetails {
                clone_url: "https://github.com/octocat/Hello-World.git".to_owned(),
                commit: "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c".to_owned(),
                git_ref: "refs/heads/main".to_owned(),
            })
        );
        assert_eq!(event.short_title, "branch: main");
        assert_eq!(event.long_title, "branch: main");
        assert_eq!(event.payload, body);
    }

    #[test]
    fn github_push_of_tag_is_titled_with_tag() {
        let event = deliver("push", &push_body("refs/tags/v1.2.3", false))
            .expect("push accepted")
            .event;
        assert_eq!(event.short_title, "tag: v1.2.3");
        assert_eq!(
            event.git.map(|g| g.git_ref).as_deref(),
            Some("refs/tags/v1.2.3")
        );
    }

    #[test]
    fn github_push_deleting_branch_is_push_delete_without_git() {
        let event = deliver("push", &push_body("refs/heads/old", true))
            .expect("push accepted")
            .event;
        assert_eq!(event.event_type, "push:delete");
        assert_eq!(event.git, None);
        assert_eq!(event.qualifiers["repo"], "octocat/Hello-World");
    }

    #[test]
    fn github_pull_request_opened() {
        let body = pr_body(12, "Fix the flux capacitor");
        let event = deliver("pull_request", &body).expect("pr accepted").event;
        assert_eq!(event.event_type, "pull_request:opened");
        assert_eq!(event.qualifiers["repo"], "octocat/Hello-World");
        let git = event.git.expect("git details");
        assert_eq!(git.commit, "e5bd3914e2e596debea16f433f57875b5b90bcd6");
        assert_eq!(git.git_ref, "refs/pull/12/head");
        assert_eq!(git.clone_url, "https://github.com/octocat/Hello-World.git");
        assert_eq!(event.short_title, "PR #12");
        assert_eq!(event.long_title, "PR #12: Fix the flux capacitor");
        assert_eq!(event.payload, body);
    }

    #[test]
    fn github_ping_is_ignored() {
        let body = r#"{"zen": "Keep it logically awesome.", "hook_id": 30,
            "hook": {"type": "Repository", "id": 30, "events": ["push"], "active": true},
            "repository": {"full_name": "octocat/Hello-World"}}"#;
        match deliver("ping", body) {
            Err(e @ GatewayError::Ignored(_)) => {
                assert!(e.message().contains("ping"), "{e}");
                assert_eq!(e.status(), StatusCode::OK);
            }
            other => panic!("expected Ignored, got {other:?}"),
        }
    }

    #[test]
    fn github_check_suite_requested() {
        let body = format!(
            r#"{{
            "action": "requested",
            "check_suite": {{
                "id": 118578147, "node_id": "MDEwOkNoZWNrU3VpdGUxMTg1NzgxNDc=",
                "head_branch": "changes",
                "head_sha": "ec26c3e57ca3a959ca5aad62de7213c562f8c821",
                "status": "queued", "conclusion": null,
                "before": "ebe1b2f5c4ee8e81c5b7b4bd1c3d4b2c9d3c8a4b",
                "after": "ec26c3e57ca3a959ca5aad62de7213c562f8c821",
                "pull_requests": [],
                "app": {{"id": 29310, "slug": "octoapp"}}
            }},
            "repository": {REPO},
            "installation": {{"id": 2311213}},
            "sender": {{"login": "octocat"}}
        }}"#
        );
        let mut h = github_headers("check_suite", body.as_bytes());
        h.insert(
            "x-github-hook-installation-target-type",
            HeaderValue::from_static("integration"),
        );
        h.insert(
            "x-github-hook-installation-target-id",
            HeaderValue::from_static("29310"),
        );
        let event = github(&h, body.as_bytes(), SECRET)
            .expect("check_suite accepted")
            .event;
        assert_eq!(event.event_type, "check_suite:requested");
        assert_eq!(event.labels["appID"], "29310");
        let git = event.git.expect("git details");
        assert_eq!(git.commit, "ec26c3e57ca3a959ca5aad62de7213c562f8c821");
        assert_eq!(git.git_ref, "refs/heads/changes");
        assert_eq!(event.short_title, "");
    }

    #[test]
    fn github_check_run_rerequested_uses_head_sha_and_branch() {
        let body = format!(
            r#"{{
            "action": "rerequested",
            "check_run": {{
                "id": 128620228, "name": "my-project:test",
                "head_sha": "ec26c3e57ca3a959ca5aad62de7213c562f8c821",
                "check_suite": {{"id": 118578147, "head_branch": "changes",
                    "head_sha": "ec26c3e57ca3a959ca5aad62de7213c562f8c821"}}
            }},
            "repository": {REPO}
        }}"#
        );
        let event = deliver("check_run", &body).expect("accepted").event;
        assert_eq!(event.event_type, "check_run:rerequested");
        let git = event.git.expect("git details");
        assert_eq!(git.commit, "ec26c3e57ca3a959ca5aad62de7213c562f8c821");
        assert_eq!(git.git_ref, "refs/heads/changes");
    }

    #[test]
    fn github_release_published_refs_tag() {
        let body = format!(
            r#"{{"action": "published",
                "release": {{"id": 1, "tag_name": "v1.0.0", "name": "v1.0.0",
                             "target_commitish": "main", "draft": false}},
                "repository": {REPO}}}"#
        );
        let event = deliver("release", &body).expect("accepted").event;
        assert_eq!(event.event_type, "release:published");
        let git = event.git.expect("git details");
        assert_eq!(git.git_ref, "refs/tags/v1.0.0");
        assert_eq!(git.commit, "");
    }

    #[test]
    fn github_create_tag_and_branch() {
        let tag = format!(
            r#"{{"ref": "v2.0", "ref_type": "tag", "master_branch": "main", "repository": {REPO}}}"#
        );
        let event = deliver("create", &tag).expect("accepted").event;
        assert_eq!(event.event_type, "create");
        assert_eq!(
            event.git.map(|g| g.git_ref).as_deref(),
            Some("refs/tags/v2.0")
        );
        let branch = format!(
            r#"{{"ref": "feature", "ref_type": "branch", "master_branch": "main", "repository": {REPO}}}"#
        );
        let event = deliver("create", &branch).expect("accepted").event;
        assert_eq!(
            event.git.map(|g| g.git_ref).as_deref(),
            Some("refs/heads/feature")
        );
    }

    #[test]
    fn github_issue_comment_has_clone_url_but_no_commit() {
        let body = format!(
            r#"{{"action": "created",
                "issue": {{"number": 7, "title": "Bug"}},
                "comment": {{"id": 1, "body": "/brig run"}},
                "repository": {REPO}}}"#
        );
        let event = deliver("issue_comment", &body).expect("accepted").event;
        assert_eq!(event.event_type, "issue_comment:created");
        assert_eq!(
            event.git,
            Some(GitDetails {
                clone_url: "https://github.com/octocat/Hello-World.git".to_owned(),
                commit: String::new(),
                git_ref: String::new(),
            })
        );
    }

    #[test]
    fn github_installation_without_repository_has_no_qualifier() {
        let body = r#"{"action": "created",
            "installation": {"id": 1, "account": {"login": "octocat"}},
            "repositories": [{"id": 1296269, "full_name": "octocat/Hello-World"}],
            "sender": {"login": "octocat"}}"#;
        let event = deliver("installation", body).expect("accepted").event;
        assert_eq!(event.event_type, "installation:created");
        assert!(event.qualifiers.is_empty());
        assert_eq!(event.git, None);
    }

    // ----- GitHub: failures ----------------------------------------------

    #[test]
    fn github_rejects_signature_made_with_other_secret() {
        let body = push_body("refs/heads/main", false);
        let mut h = github_headers("push", body.as_bytes());
        h.insert(
            "x-hub-signature-256",
            HeaderValue::from_str(&sign(b"wrong secret", body.as_bytes())).expect("value"),
        );
        let msg = expect_unauthorized(github(&h, body.as_bytes(), SECRET));
        assert!(msg.contains("does not match"), "{msg}");
        assert!(!msg.contains("Secret to Everybody"), "{msg}");
    }

    #[test]
    fn github_rejects_missing_signature() {
        let body = push_body("refs/heads/main", false);
        let mut h = github_headers("push", body.as_bytes());
        h.remove("x-hub-signature-256");
        // A legacy SHA-1 signature alone is not accepted.
        h.insert(
            "x-hub-signature",
            HeaderValue::from_static("sha1=7d38cdd689735b008b3c702edd92eea23791c5f6"),
        );
        let err = github(&h, body.as_bytes(), SECRET).expect_err("must fail");
        assert_eq!(err.status(), StatusCode::UNAUTHORIZED);
        assert!(
            err.message().contains("missing X-Hub-Signature-256"),
            "{err}"
        );
    }

    #[test]
    fn github_rejects_signature_over_different_body() {
        let signed = push_body("refs/heads/main", false);
        let sent = push_body("refs/heads/evil", false);
        let h = github_headers("push", signed.as_bytes());
        let msg = expect_unauthorized(github(&h, sent.as_bytes(), SECRET));
        assert!(msg.contains("X-Hub-Signature-256 does not match"), "{msg}");
    }

    #[test]
    fn github_rejects_malformed_signatures() {
        let body = push_body("refs/heads/main", false);
        let cases = [
            (
                "sha256=zz26c3e57ca3a959ca5aad62de7213c562f8c821zz26c3e57ca3a959ca5a",
                "not valid hex",
            ),
            ("sha256=abcd", "64 hex characters"),
            (
                "sha1=7d38cdd689735b008b3c702edd92eea23791c5f6",
                "sha256=<hex digest>",
            ),
        ];
        for (value, expected) in cases {
            let mut h = github_headers("push", body.as_bytes());
            h.insert("x-hub-signature-256", HeaderValue::from_static(value));
            let msg = expect_unauthorized(github(&h, body.as_bytes(), SECRET));
            assert!(msg.contains(expected), "{value}: {msg}");
            assert!(msg.contains("X-Hub-Signature-256"), "{msg}");
        }
    }

    #[test]
    fn github_refuses_empty_secret() {
        let body = b"{}";
        let h = github_headers("push", body);
        let msg = expect_unauthorized(github(&h, body, b""));
        assert!(msg.contains("no GitHub webhook secret"), "{msg}");
    }

    #[test]
    fn github_requires_delivery_and_event_headers() {
        let body = push_body("refs/heads/main", false);
        let mut h = github_headers("push", body.as_bytes());
        h.remove("x-github-delivery");
        let msg = expect_bad(github(&h, body.as_bytes(), SECRET));
        assert!(msg.contains("X-GitHub-Delivery"), "{msg}");

        let mut h = github_headers("push", body.as_bytes());
        h.remove("x-github-event");
        let msg = expect_bad(github(&h, body.as_bytes(), SECRET));
        assert!(msg.contains("X-GitHub-Event"), "{msg}");
    }

    #[test]
    fn github_rejects_non_json_and_non_utf8_bodies() {
        let form = "payload=%7B%22ref%22%3A%22refs%2Fheads%2Fmain%22%7D";
        let msg = expect_bad(deliver("push", form));
        assert!(msg.contains("not valid JSON"), "{msg}");
        assert!(msg.contains("application/json"), "{msg}");

        let body: &[u8] = b"{\"ref\": \"\xff\"}";
        let msg = expect_bad(github(&github_headers("push", body), body, SECRET));
        assert!(msg.contains("UTF-8"), "{msg}");

        let msg = expect_bad(deliver("push", "[1, 2]"));
        assert!(msg.contains("JSON object"), "{msg}");
    }

    #[test]
    fn github_requires_repository_for_repository_events() {
        let body =
            r#"{"ref": "refs/heads/main", "after": "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c"}"#;
        let msg = expect_bad(deliver("push", body));
        assert!(msg.contains("`repository.full_name`"), "{msg}");

        let body = r#"{"ref": "refs/heads/main", "repository": {"name": "x"}}"#;
        let msg = expect_bad(deliver("push", body));
        assert!(
            msg.contains("missing field `repository.full_name`"),
            "{msg}"
        );
    }

    #[test]
    fn github_rejects_repo_name_outside_label_pattern() {
        let body = r#"{"ref": "refs/heads/main", "repository": {"full_name": "octocat/héllo"}}"#;
        let msg = expect_bad(deliver("push", body));
        assert!(msg.contains("`repository.full_name`"), "{msg}");
        assert!(msg.contains("'é'"), "{msg}");
    }

    #[test]
    fn github_pull_request_requires_number() {
        let body = format!(
            r#"{{"action": "opened", "pull_request": {{"title": "x"}}, "repository": {REPO}}}"#
        );
        let msg = expect_bad(deliver("pull_request", &body));
        assert!(msg.contains("`pull_request.number`"), "{msg}");
    }

    #[test]
    fn github_rejects_non_numeric_app_id() {
        let body = push_body("refs/heads/main", false);
        let mut h = github_headers("push", body.as_bytes());
        h.insert(
            "x-github-hook-installation-target-type",
            HeaderValue::from_static("integration"),
        );
        h.insert(
            "x-github-hook-installation-target-id",
            HeaderValue::from_static("12a"),
        );
        let msg = expect_bad(github(&h, body.as_bytes(), SECRET));
        assert!(
            msg.contains("X-GitHub-Hook-Installation-Target-ID"),
            "{msg}"
        );
    }

    #[test]
    fn short_titles_are_truncated_on_char_boundaries() {
        let long = "é".repeat(150);
        let cut = truncate_title(long);
        assert_eq!(cut.chars().count(), MAX_SHORT_TITLE_CHARS);
        assert!(cut.ends_with('…'));
        assert_eq!(truncate_title("PR #1".to_owned()), "PR #1");
    }

    // ----- Docker Hub ----------------------------------------------------

    const DOCKERHUB_PUSH: &str = r#"{
        "callback_url": "https://registry.hub.docker.com/u/svendowideit/testhook/hook/2141b5bi5i5b02bec211i4eeih0242eg11000a/",
        "push_data": {"pushed_at": 1417566161, "pusher": "trustedbuilder", "tag": "latest"},
        "repository": {
            "comment_count": 0, "date_created": 1417494799, "description": "",
            "full_description": "Docker Hub based automated build from a GitHub repo",
            "is_official": false, "is_private": true, "is_trusted": true,
            "name": "testhook", "namespace": "svendowideit", "owner": "svendowideit",
            "repo_name": "svendowideit/testhook",
            "repo_url": "https://registry.hub.docker.com/u/svendowideit/testhook/",
            "star_count": 0, "status": "Active"
        }
    }"#;

    #[test]
    fn dockerhub_push() {
        let event = dockerhub(DOCKERHUB_PUSH.as_bytes()).expect("accepted");
        assert_eq!(event.source, "brigade.sh/dockerhub");
        assert_eq!(event.event_type, "push");
        assert_eq!(event.qualifiers["repo"], "svendowideit/testhook");
        assert_eq!(event.labels["tag"], "latest");
        assert_eq!(event.git, None);
        assert_eq!(event.payload, DOCKERHUB_PUSH);
        assert_eq!(LEGACY_PUSH_TYPE, "image_push");
    }

    #[test]
    fn dockerhub_falls_back_to_namespace_and_name_and_tag_is_optional() {
        let body = r#"{"push_data": {"pusher": "me"},
                       "repository": {"namespace": "library", "name": "redis"}}"#;
        let event = dockerhub(body.as_bytes()).expect("accepted");
        assert_eq!(event.qualifiers["repo"], "library/redis");
        assert!(event.labels.is_empty());
    }

    #[test]
    fn dockerhub_failures_name_the_field() {
        let msg = expect_bad(dockerhub(br#"{"push_data": {"tag": "latest"}}"#));
        assert!(msg.contains("`repository.repo_name`"), "{msg}");

        let body = r#"{"push_data": {"tag": "v1 beta"}, "repository": {"repo_name": "a/b"}}"#;
        let msg = expect_bad(dockerhub(body.as_bytes()));
        assert!(msg.contains("`push_data.tag`"), "{msg}");
        assert!(msg.contains("' '"), "{msg}");

        let msg = expect_bad(dockerhub(b"not json"));
        assert!(msg.contains("not valid JSON"), "{msg}");
    }

    // ----- ACR -----------------------------------------------------------

    const ACR_PUSH: &str = r#"{
        "id": "cb8c3971-9adc-488b-bdd8-43cbb4974ff5",
        "timestamp": "2017-11-17T16:52:01.343145347Z",
        "action": "push",
        "target": {
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "size": 524,
            "digest": "sha256:80f0d5c8786bb9e621a45ece0db56d11cdc624ad20da9fe62e9d25490f331d7d",
            "length": 524,
            "repository": "hello-world",
            "tag": "v1"
        },
        "request": {
            "id": "3cbb6949-7549-4fa1-86cd-a6d5451dffc7",
            "host": "myregistry.azurecr.io",
            "method": "PUT",
            "useragent": "docker/17.09.0-ce go/go1.8.3 git-commit/afdb6d4 kernel/4.10.0-27-generic os/Linux arch/amd64"
        }
    }"#;

    #[test]
    fn acr_push() {
        let event = acr(ACR_PUSH.as_bytes()).expect("accepted");
        assert_eq!(event.source, "brigade.sh/acr");
        assert_eq!(event.event_type, "push");
        assert_eq!(
            event.qualifiers,
            BTreeMap::from([("registry".to_owned(), "myregistry.azurecr.io".to_owned())])
        );
        assert_eq!(event.labels["repo"], "hello-world");
        assert_eq!(event.labels["tag"], "v1");
        assert_eq!(event.payload, ACR_PUSH);
    }

    #[test]
    fn acr_delete_has_no_tag_label() {
        let body = r#"{
            "id": "afc359ce-df7f-4e32-bdde-1ff8aa80927b",
            "timestamp": "2017-11-17T16:54:53.657764628Z",
            "action": "delete",
            "target": {
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "digest": "sha256:80f0d5c8786bb9e621a45ece0db56d11cdc624ad20da9fe62e9d25490f331d7d",
                "repository": "hello-world"
            },
            "request": {"id": "3d78b0f7-5b19-4fc2-ab8c-fe0fe4a6e9c5",
                        "host": "myregistry.azurecr.io", "method": "DELETE",
                        "useragent": "python-requests/2.18.4"}
        }"#;
        let event = acr(body.as_bytes()).expect("accepted");
        assert_eq!(event.event_type, "delete");
        assert_eq!(
            event.labels,
            BTreeMap::from([("repo".to_owned(), "hello-world".to_owned())])
        );
    }

    #[test]
    fn acr_ping_is_ignored() {
        let body = r#"{"id": "0fbbbd5f-7b1d-4c04-91d5-1f9a9b0c1c4f",
            "timestamp": "2021-03-01T10:00:00Z", "action": "ping",
            "target": {}, "request": {"host": "myregistry.azurecr.io"}}"#;
        let err = acr(body.as_bytes()).expect_err("ping yields no event");
        assert!(matches!(err, GatewayError::Ignored(_)), "{err:?}");
        assert!(err.message().contains("ping"));
    }

    #[test]
    fn acr_failures_name_the_field_or_action() {
        let body = ACR_PUSH.replace("\"push\"", "\"chart_push\"");
        let msg = expect_bad(acr(body.as_bytes()));
        assert!(msg.contains("\"chart_push\""), "{msg}");
        assert!(msg.contains("`action`"), "{msg}");

        let msg = expect_bad(acr(br#"{"target": {"repository": "x"}}"#));
        assert!(msg.contains("missing field `action`"), "{msg}");

        let body = r#"{"action": "push", "target": {"repository": "hello-world"}, "request": {}}"#;
        let msg = expect_bad(acr(body.as_bytes()));
        assert!(msg.contains("`request.host`"), "{msg}");
    }

    // ----- CloudEvents ---------------------------------------------------

    const CE_STRUCTURED: &str = r#"{
        "specversion": "1.0",
        "type": "com.github.pull_request.opened",
        "source": "https://github.com/cloudevents/spec/pull",
        "subject": "123",
        "id": "A234-1234-1234",
        "time": "2018-04-05T17:31:00Z",
        "comexampleextension1": "value",
        "datacontenttype": "application/json",
        "data": {"appinfoA": "abc", "appinfoB": 123}
    }"#;

    #[test]
    fn cloudevent_structured_mode() {
        let h = headers(&[(
            "content-type",
            "application/cloudevents+json; charset=utf-8",
        )]);
        let event = cloudevent(&h, CE_STRUCTURED.as_bytes()).expect("accepted");
        assert_eq!(event.source, "brigade.sh/cloudevents");
        assert_eq!(event.event_type, "cloudevent");
        assert_eq!(
            event.qualifiers,
            BTreeMap::from([
                (
                    "source".to_owned(),
                    "https://github.com/cloudevents/spec/pull".to_owned()
                ),
                (
                    "type".to_owned(),
                    "com.github.pull_request.opened".to_owned()
                ),
            ])
        );
        assert_eq!(event.payload, CE_STRUCTURED);
    }

    #[test]
    fn cloudevent_binary_mode_with_json_data() {
        let h = headers(&[
            ("ce-specversion", "1.0"),
            ("ce-type", "com.example.someevent"),
            ("ce-source", "/mycontext/subcontext"),
            ("ce-id", "1234-1234-1234"),
            ("ce-time", "2018-04-05T03:56:24Z"),
            ("ce-subject", "caf%C3%A9%20order"),
            ("content-type", "application/json; charset=utf-8"),
        ]);
        let body = br#"{"orderId": 42, "items": ["tea"]}"#;
        let event = cloudevent(&h, body).expect("accepted");
        assert_eq!(event.qualifiers["source"], "/mycontext/subcontext");
        assert_eq!(event.qualifiers["type"], "com.example.someevent");
        let payload: Value = serde_json::from_str(&event.payload).expect("payload is JSON");
        assert_eq!(payload["specversion"], "1.0");
        assert_eq!(payload["id"], "1234-1234-1234");
        assert_eq!(payload["time"], "2018-04-05T03:56:24Z");
        assert_eq!(payload["subject"], "café order");
        assert_eq!(
            payload["datacontenttype"],
            "application/json; charset=utf-8"
        );
        assert_eq!(payload["data"]["orderId"], 42);
        assert_eq!(payload["data"]["items"][0], "tea");
    }

    #[test]
    fn cloudevent_binary_mode_text_and_binary_data() {
        let base = [
            ("ce-specversion", "1.0"),
            ("ce-type", "com.example.text"),
            ("ce-source", "urn:example:sensor"),
            ("ce-id", "7"),
        ];
        let mut text = base.to_vec();
        text.push(("content-type", "text/plain"));
        let event = cloudevent(&headers(&text), b"hello world").expect("accepted");
        let payload: Value = serde_json::from_str(&event.payload).expect("JSON");
        assert_eq!(payload["data"], "hello world");
        assert_eq!(payload["datacontenttype"], "text/plain");

        let mut octets = base.to_vec();
        octets.push(("content-type", "application/octet-stream"));
        let event = cloudevent(&headers(&octets), &[0x66, 0x6f, 0xff]).expect("accepted");
        let payload: Value = serde_json::from_str(&event.payload).expect("JSON");
        assert_eq!(payload["data_base64"], "Zm//");
        assert!(payload.get("data").is_none());

        let event = cloudevent(&headers(&base), b"").expect("accepted");
        let payload: Value = serde_json::from_str(&event.payload).expect("JSON");
        assert!(payload.get("data").is_none());
        assert_eq!(payload["source"], "urn:example:sensor");
    }

    #[test]
    fn cloudevent_plain_json_is_not_a_cloudevent() {
        let h = headers(&[("content-type", "application/json")]);
        let msg = expect_bad(cloudevent(&h, br#"{"hello": "world"}"#));
        assert!(msg.contains("not a CloudEvent"), "{msg}");
    }

    #[test]
    fn cloudevent_missing_source_is_named() {
        let h = headers(&[("content-type", "application/cloudevents+json")]);
        let body = r#"{"specversion": "1.0", "id": "1", "type": "t.x"}"#;
        let msg = expect_bad(cloudevent(&h, body.as_bytes()));
        assert!(msg.contains("attribute `source`"), "{msg}");

        let h = headers(&[
            ("ce-specversion", "1.0"),
            ("ce-id", "1"),
            ("ce-type", "t.x"),
        ]);
        let msg = expect_bad(cloudevent(&h, b""));
        assert!(msg.contains("`source` (ce-source header)"), "{msg}");
    }

    #[test]
    fn cloudevent_wrong_specversion() {
        let h = headers(&[("content-type", "application/cloudevents+json")]);
        let body = r#"{"specversion": "0.3", "id": "1", "source": "/s", "type": "t"}"#;
        let msg = expect_bad(cloudevent(&h, body.as_bytes()));
        assert!(msg.contains("specversion \"0.3\""), "{msg}");
        assert!(msg.contains("1.0"), "{msg}");
    }

    #[test]
    fn cloudevent_other_failures() {
        let h = headers(&[("content-type", "application/cloudevents-batch+json")]);
        let msg = expect_bad(cloudevent(&h, b"[]"));
        assert!(msg.contains("batch"), "{msg}");

        let h = headers(&[("content-type", "application/cloudevents+json")]);
        let body = r#"{"specversion": "1.0", "id": "1", "source": "mailto:a@b.c", "type": "t"}"#;
        let msg = expect_bad(cloudevent(&h, body.as_bytes()));
        assert!(
            msg.contains("attribute `source`") && msg.contains("'@'"),
            "{msg}"
        );

        let h = headers(&[
            ("ce-specversion", "1.0"),
            ("ce-id", "1"),
            ("ce-source", "/s"),
            ("ce-type", "t"),
            ("content-type", "application/json"),
        ]);
        let msg = expect_bad(cloudevent(&h, b"{not json"));
        assert!(msg.contains("not valid JSON"), "{msg}");
    }

    // ----- Tokens --------------------------------------------------------

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

    // ----- Helpers -------------------------------------------------------

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (input, output) in vectors {
            assert_eq!(base64_encode(input.as_bytes()), output);
        }
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
    fn gateway_event_serialises_with_brigade_names() {
        let event = dockerhub(DOCKERHUB_PUSH.as_bytes()).expect("accepted");
        let json = serde_json::to_value(&event).expect("serialise");
        assert_eq!(json["type"], "push");
        assert_eq!(json["shortTitle"], "");
        let git = GitDetails {
            clone_url: "u".into(),
            commit: "c".into(),
            git_ref: "r".into(),
        };
        let json = serde_json::to_value(&git).expect("serialise");
        assert_eq!(
            json,
            serde_json::json!({"cloneURL": "u", "commit": "c", "ref": "r"})
        );
    }
}
