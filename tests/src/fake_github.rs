//! An in-process fake of the part of GitHub's REST API a GitHub App uses to
//! report check runs, at the HTTP level, checking the App's credentials as
//! GitHub does:
//!
//! - `POST /app/installations/{id}/access_tokens` takes the App's JWT
//!   (`Authorization: Bearer`): RS256, verified with the App's public key,
//!   `iss` the App's id, `iat` not in the future beyond a minute's drift,
//!   `exp` in the future and at most 10 minutes after `iat`. It answers an
//!   installation token and when it expires (an hour on);
//! - `POST /repos/{owner}/{repo}/check-runs`, `PATCH …/check-runs/{id}` and
//!   `GET /repos/{owner}/{repo}/pulls/{number}` take an installation token
//!   (`Authorization: token`), the one the fake issued for that repository's
//!   installation and not revoked;
//! - every call needs a `User-Agent` and GitHub's API version header.
//!
//! A test may have the first check-run creation refused with a spent rate
//! limit (`Retry-After`), and the first token revoked after some calls, to
//! see the App wait and buy a new one.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

/// What the fake knows of the App and the repositories.
#[derive(Clone, Default)]
pub struct FakeGitHubConfig {
    /// The App's id, which its JWT must name.
    pub app_id: u64,
    /// The App's public key: PKCS#1 `RSAPublicKey` in DER (`openssl rsa
    /// -RSAPublicKey_out -outform DER`).
    pub public_key_der: Vec<u8>,
    /// The installation of each repository (`owner/name`).
    pub installations: BTreeMap<String, u64>,
    /// Pull requests' head commits, by repository and number.
    pub pulls: BTreeMap<(String, u64), String>,
    /// Refuse the first check run's creation with a rate limit (`429`,
    /// `Retry-After: 1`).
    pub rate_limit_first_create: bool,
    /// Revoke the first token after this many calls made with it.
    pub revoke_first_token_after: Option<usize>,
    /// Answer check-run creations for these installations this late (a
    /// GitHub slow for one tenant).
    pub slow_installations: BTreeMap<u64, std::time::Duration>,
}

/// A check run as GitHub keeps it: its fields, and every body it was sent.
#[derive(Debug, Clone)]
pub struct CheckRun {
    /// Its id.
    pub id: u64,
    /// `owner/name`.
    pub repository: String,
    /// Its name.
    pub name: String,
    /// The commit.
    pub head_sha: String,
    /// `queued`, `in_progress` or `completed`.
    pub status: String,
    /// With `completed`.
    pub conclusion: Option<String>,
    /// Its title, summary and text.
    pub output: Option<Value>,
    /// The statuses it went through, in order.
    pub statuses: Vec<String>,
}

#[derive(Default)]
struct Calls {
    runs: Vec<CheckRun>,
    /// Tokens issued, in order, with the installation and calls made.
    tokens: Vec<(String, u64, usize)>,
    /// Why calls were refused.
    refused: Vec<String>,
    rate_limited: bool,
}

/// The fake, serving until dropped.
pub struct FakeGitHub {
    /// Its base URL (the App's `--github-api-url`).
    pub url: String,
    config: Arc<FakeGitHubConfig>,
    calls: Arc<Mutex<Calls>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeGitHub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Shared = (Arc<FakeGitHubConfig>, Arc<Mutex<Calls>>);

impl FakeGitHub {
    /// Serves on a free port of 127.0.0.1.
    pub async fn start(config: FakeGitHubConfig) -> Self {
        let config = Arc::new(config);
        let calls = Arc::new(Mutex::new(Calls::default()));
        let app = Router::new()
            .route(
                "/app/installations/{installation}/access_tokens",
                post(access_token),
            )
            .route("/repos/{owner}/{repo}/check-runs", post(create_run))
            .route("/repos/{owner}/{repo}/check-runs/{id}", patch(update_run))
            .route("/repos/{owner}/{repo}/pulls/{number}", get(pull))
            .with_state((config.clone(), calls.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            url,
            config,
            calls,
            task,
        }
    }

    /// The check runs, in the order they were created.
    pub fn check_runs(&self) -> Vec<CheckRun> {
        self.calls.lock().unwrap().runs.clone()
    }

    /// How many installation tokens were issued.
    pub fn tokens_issued(&self) -> usize {
        self.calls.lock().unwrap().tokens.len()
    }

    /// Why calls were refused, in order.
    pub fn refused(&self) -> Vec<String> {
        self.calls.lock().unwrap().refused.clone()
    }

    /// Whether the first creation was refused with a rate limit.
    pub fn rate_limited(&self) -> bool {
        self.calls.lock().unwrap().rate_limited
    }

    /// The App's id.
    pub fn app_id(&self) -> u64 {
        self.config.app_id
    }
}

fn refuse(calls: &Mutex<Calls>, status: StatusCode, why: String) -> Response {
    calls.lock().unwrap().refused.push(why.clone());
    (status, Json(json!({ "message": why }))).into_response()
}

/// The headers GitHub asks of every call.
fn check_headers(headers: &HeaderMap) -> Result<(), String> {
    if headers.get("user-agent").is_none() {
        return Err("Request forbidden by administrative rules. Please make sure your request has a User-Agent header".into());
    }
    if headers.get("x-github-api-version").is_none() {
        return Err("no X-GitHub-Api-Version header".into());
    }
    Ok(())
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Checks the App's JWT as GitHub does.
fn check_jwt(config: &FakeGitHubConfig, headers: &HeaderMap) -> Result<(), String> {
    let jwt = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or("A JSON web token could not be decoded: no Bearer authorization")?;
    let parts: Vec<&str> = jwt.split('.').collect();
    let [header, claims, signature] = parts[..] else {
        return Err("A JSON web token could not be decoded".into());
    };
    let decode = |part: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| "A JSON web token could not be decoded".to_string())
    };
    let header: Value = serde_json::from_slice(&decode(header)?).map_err(|e| e.to_string())?;
    if header["alg"] != "RS256" {
        return Err(format!("'alg' must be RS256, not {}", header["alg"]));
    }
    let key = ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        &config.public_key_der,
    );
    key.verify(
        format!("{}.{}", parts[0], parts[1]).as_bytes(),
        &decode(signature)?,
    )
    .map_err(|_| "'Signature' failed verification".to_string())?;
    let claims: Value = serde_json::from_slice(&decode(claims)?).map_err(|e| e.to_string())?;
    let iss = match &claims["iss"] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if iss != config.app_id.to_string() {
        return Err(format!(
            "'Issuer' claim ('iss') must be the App's id, not {iss}"
        ));
    }
    let (Some(iat), Some(exp)) = (claims["iat"].as_u64(), claims["exp"].as_u64()) else {
        return Err("'Issued at' and 'Expiration time' claims are required".into());
    };
    if iat > now() + 60 {
        return Err(
            "'Issued at' claim ('iat') must be an Integer representing a time in the past".into(),
        );
    }
    if exp <= now() || exp - iat > 600 {
        return Err(
            "'Expiration time' claim ('exp') is too far in the future or in the past".into(),
        );
    }
    Ok(())
}

/// Checks an installation token for `repository`; counts the call, and
/// revokes the first token when its time comes.
fn check_token(
    config: &FakeGitHubConfig,
    calls: &Mutex<Calls>,
    headers: &HeaderMap,
    repository: &str,
) -> Result<(), String> {
    check_headers(headers)?;
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("token ")
                .or_else(|| v.strip_prefix("Bearer "))
        })
        .ok_or("Bad credentials: no token")?;
    let installation = config.installations.get(repository).ok_or(format!(
        "Not Found: the App is not installed on {repository}"
    ))?;
    let mut calls = calls.lock().unwrap();
    let first = calls.tokens.first().map(|(t, _, _)| t.clone());
    let Some(entry) = calls.tokens.iter_mut().find(|(t, _, _)| t == token) else {
        return Err("Bad credentials".into());
    };
    if entry.1 != *installation {
        return Err(format!(
            "Resource not accessible by integration: the token is installation {}'s",
            entry.1
        ));
    }
    entry.2 += 1;
    if Some(entry.0.clone()) == first
        && config
            .revoke_first_token_after
            .is_some_and(|after| entry.2 > after)
    {
        return Err("Bad credentials: the token was revoked".into());
    }
    Ok(())
}

async fn access_token(
    State((config, calls)): State<Shared>,
    Path(installation): Path<u64>,
    headers: HeaderMap,
) -> Response {
    if let Err(why) = check_headers(&headers).and_then(|()| check_jwt(&config, &headers)) {
        return refuse(&calls, StatusCode::UNAUTHORIZED, why);
    }
    if !config.installations.values().any(|i| *i == installation) {
        return refuse(
            &calls,
            StatusCode::NOT_FOUND,
            format!("Not Found: installation {installation}"),
        );
    }
    let mut state = calls.lock().unwrap();
    let token = format!("ghs_fake{}", state.tokens.len() + 1);
    state.tokens.push((token.clone(), installation, 0));
    let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1);
    (
        StatusCode::CREATED,
        Json(json!({ "token": token, "expires_at": expires.to_string() })),
    )
        .into_response()
}

async fn create_run(
    State((config, calls)): State<Shared>,
    Path((owner, repo)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let repository = format!("{owner}/{repo}");
    if let Err(why) = check_token(&config, &calls, &headers, &repository) {
        return refuse(&calls, StatusCode::UNAUTHORIZED, why);
    }
    if let Some(delay) = config
        .installations
        .get(&repository)
        .and_then(|installation| config.slow_installations.get(installation))
    {
        tokio::time::sleep(*delay).await;
    }
    let mut state = calls.lock().unwrap();
    if config.rate_limit_first_create && !state.rate_limited {
        state.rate_limited = true;
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1")],
            Json(json!({"message": "You have exceeded a secondary rate limit"})),
        )
            .into_response();
    }
    let (Some(name), Some(head_sha)) = (body["name"].as_str(), body["head_sha"].as_str()) else {
        drop(state);
        return refuse(
            &calls,
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("Invalid request: name and head_sha are required: {body}"),
        );
    };
    let status = body["status"].as_str().unwrap_or("queued").to_owned();
    let id = state.runs.len() as u64 + 1;
    state.runs.push(CheckRun {
        id,
        repository,
        name: name.to_owned(),
        head_sha: head_sha.to_owned(),
        statuses: vec![status.clone()],
        status,
        conclusion: body["conclusion"].as_str().map(str::to_owned),
        output: body.get("output").cloned(),
    });
    (StatusCode::CREATED, Json(json!({ "id": id, "name": name }))).into_response()
}

async fn update_run(
    State((config, calls)): State<Shared>,
    Path((owner, repo, id)): Path<(String, String, u64)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let repository = format!("{owner}/{repo}");
    if let Err(why) = check_token(&config, &calls, &headers, &repository) {
        return refuse(&calls, StatusCode::UNAUTHORIZED, why);
    }
    let mut state = calls.lock().unwrap();
    let Some(run) = state
        .runs
        .iter_mut()
        .find(|r| r.id == id && r.repository == repository)
    else {
        drop(state);
        return refuse(
            &calls,
            StatusCode::NOT_FOUND,
            format!("Not Found: check run {id}"),
        );
    };
    if let Some(status) = body["status"].as_str() {
        run.status = status.to_owned();
        run.statuses.push(status.to_owned());
    }
    if let Some(conclusion) = body["conclusion"].as_str() {
        run.conclusion = Some(conclusion.to_owned());
    }
    if let Some(output) = body.get("output") {
        run.output = Some(output.clone());
    }
    (StatusCode::OK, Json(json!({ "id": id }))).into_response()
}

async fn pull(
    State((config, calls)): State<Shared>,
    Path((owner, repo, number)): Path<(String, String, u64)>,
    headers: HeaderMap,
) -> Response {
    let repository = format!("{owner}/{repo}");
    if let Err(why) = check_token(&config, &calls, &headers, &repository) {
        return refuse(&calls, StatusCode::UNAUTHORIZED, why);
    }
    match config.pulls.get(&(repository, number)) {
        Some(sha) => Json(json!({ "number": number, "head": { "sha": sha } })).into_response(),
        None => refuse(
            &calls,
            StatusCode::NOT_FOUND,
            format!("Not Found: pull request {number}"),
        ),
    }
}
