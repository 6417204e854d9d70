//! Mizzen as a GitHub App: its private key signs a JWT that buys an
//! installation's access token, cached until shortly before it expires, and
//! every call to GitHub's REST API goes through [`GitHubApp::call`], which
//! respects GitHub's rate limits and retries what GitHub asks to be retried.
//!
//! GitHub Enterprise Server is the same API under another base URL
//! (`https://HOST/api/v3`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::{Method, StatusCode};
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject as _;
use serde_json::{Value, json};
use tokio::sync::Mutex;

/// GitHub's public API; Enterprise Server's is `https://HOST/api/v3`.
pub const GITHUB_API: &str = "https://api.github.com";

/// The API version Mizzen was written against (GitHub's date-named
/// versions keep their shape).
const API_VERSION: &str = "2022-11-28";

/// How long a request to GitHub may take: its API answers in well under a
/// second, and a reporter stuck on one call delays every other report.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Attempts of one call: GitHub's 5xx answers and dropped connections are
/// brief; three tries spread over 7 s ride them out without piling up.
const MAX_ATTEMPTS: u32 = 3;

/// The longest Mizzen waits for a rate limit to reset before giving up on a
/// call: the primary limit resets hourly, and a report an hour late is
/// worth less than the ones queued behind it.
const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(60);

/// An installation token is renewed this long before it expires, so that no
/// call goes out with a token about to lapse (they last an hour).
const TOKEN_RENEWAL_MARGIN: Duration = Duration::from_secs(5 * 60);

/// The App's JWT is dated this far back, for a GitHub clock slightly behind
/// ours (GitHub's own advice), and lasts 9 minutes of the 10 GitHub allows.
const JWT_BACKDATE: u64 = 60;
const JWT_LIFETIME: u64 = 9 * 60;

/// How much of GitHub's error answer a message quotes.
const ERROR_BODY_CHARS: usize = 300;

/// Why the App could not be set up or a call to GitHub failed.
#[derive(Debug, thiserror::Error)]
pub enum GitHubError {
    /// The private key is not an RSA key in PEM (PKCS#1, as GitHub hands it
    /// out, or PKCS#8).
    #[error("the GitHub App's private key: {0}")]
    Key(String),
    /// The base URL is not an http(s) URL.
    #[error("the GitHub API URL {url:?}: {reason}")]
    BaseUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// GitHub could not be reached.
    #[error("{method} {path}: GitHub could not be reached: {source}")]
    Unreachable {
        /// The method.
        method: Method,
        /// The API path.
        path: String,
        /// Why.
        source: reqwest::Error,
    },
    /// GitHub refused or failed the call.
    #[error("{method} {path}: GitHub answered {status}: {message}")]
    Refused {
        /// The method.
        method: Method,
        /// The API path.
        path: String,
        /// Its status.
        status: StatusCode,
        /// GitHub's `message`, or the start of its answer.
        message: String,
    },
    /// A rate limit resets later than Mizzen waits.
    #[error("{method} {path}: GitHub's rate limit is spent for {wait:?} more")]
    RateLimited {
        /// The method.
        method: Method,
        /// The API path.
        path: String,
        /// How long until it resets.
        wait: Duration,
    },
    /// GitHub's answer is not what its API documents.
    #[error("{method} {path}: GitHub's answer has no {field}")]
    Answer {
        /// The method.
        method: Method,
        /// The API path.
        path: String,
        /// The field looked for.
        field: &'static str,
    },
}

/// How Mizzen acts as a GitHub App.
#[derive(Clone)]
pub struct GitHubAppConfig {
    /// The App's id (GitHub's App settings page, "App ID").
    pub app_id: u64,
    /// The App's private key, in PEM.
    pub private_key_pem: Vec<u8>,
    /// The REST API's base URL: [`GITHUB_API`], or an Enterprise Server's
    /// `https://HOST/api/v3`.
    pub api_url: String,
}

impl std::fmt::Debug for GitHubAppConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitHubAppConfig")
            .field("app_id", &self.app_id)
            .field("private_key_pem", &"<redacted>")
            .field("api_url", &self.api_url)
            .finish()
    }
}

/// An installation's token, when one was bought, and when to renew it.
type TokenSlot = Mutex<Option<(String, SystemTime)>>;

/// A GitHub App's credentials and its installations' tokens.
pub struct GitHubApp {
    app_id: u64,
    key: RsaKeyPair,
    api_url: String,
    http: reqwest::Client,
    /// Tokens by installation, with when to renew them; a lock each, so
    /// that buying one installation's token waits for no other's.
    tokens: std::sync::Mutex<HashMap<u64, Arc<TokenSlot>>>,
}

impl GitHubApp {
    /// Reads the key and checks the URL; GitHub is not called yet.
    pub fn new(config: GitHubAppConfig) -> Result<Self, GitHubError> {
        let key = match PrivateKeyDer::from_pem_slice(&config.private_key_pem) {
            Ok(PrivateKeyDer::Pkcs1(der)) => RsaKeyPair::from_der(der.secret_pkcs1_der()),
            Ok(PrivateKeyDer::Pkcs8(der)) => RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()),
            Ok(_) => {
                return Err(GitHubError::Key(
                    "it is not an RSA key (GitHub Apps' keys are RSA)".into(),
                ));
            }
            Err(e) => {
                return Err(GitHubError::Key(format!(
                    "no PEM private key in it ({e}); use the .pem file GitHub's App settings page downloads"
                )));
            }
        }
        .map_err(|e| GitHubError::Key(format!("it is not a usable RSA key: {e}")))?;
        let api_url = config.api_url.trim_end_matches('/').to_owned();
        let parsed = url::Url::parse(&api_url).map_err(|e| GitHubError::BaseUrl {
            url: config.api_url.clone(),
            reason: e.to_string(),
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(GitHubError::BaseUrl {
                url: config.api_url,
                reason: "it is not an http(s) URL".into(),
            });
        }
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("mizzen/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| GitHubError::BaseUrl {
                url: api_url.clone(),
                reason: format!("no HTTP client for it: {e}"),
            })?;
        Ok(Self {
            app_id: config.app_id,
            key,
            api_url,
            http,
            tokens: std::sync::Mutex::default(),
        })
    }

    /// The App's id.
    pub fn app_id(&self) -> u64 {
        self.app_id
    }

    /// Calls the API as `installation`: `path` is under the base URL
    /// (`/repos/OWNER/REPO/check-runs`). Returns GitHub's JSON answer.
    pub async fn call(
        &self,
        installation: u64,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, GitHubError> {
        let mut renewed = false;
        loop {
            let token = self.installation_token(installation).await?;
            match self
                .send(method.clone(), path, &format!("token {token}"), body)
                .await
            {
                // A token revoked or expired early: one new one.
                Err(GitHubError::Refused { status, .. })
                    if status == StatusCode::UNAUTHORIZED && !renewed =>
                {
                    *self.token_slot(installation).lock().await = None;
                    renewed = true;
                }
                answer => return answer,
            }
        }
    }

    /// The installation's token, from the cache or bought with the App's
    /// JWT.
    async fn installation_token(&self, installation: u64) -> Result<String, GitHubError> {
        let slot = self.token_slot(installation);
        // Held across the purchase: concurrent calls for one installation
        // wait for one token instead of each buying its own.
        let mut cached = slot.lock().await;
        if let Some((token, renew_at)) = &*cached
            && SystemTime::now() < *renew_at
        {
            return Ok(token.clone());
        }
        let path = format!("/app/installations/{installation}/access_tokens");
        let answer = self
            .send(
                Method::POST,
                &path,
                &format!("Bearer {}", self.jwt()?),
                None,
            )
            .await?;
        let missing = |field| GitHubError::Answer {
            method: Method::POST,
            path: path.clone(),
            field,
        };
        let token = answer
            .get("token")
            .and_then(Value::as_str)
            .ok_or_else(|| missing("token"))?
            .to_owned();
        let expires: jiff::Timestamp = answer
            .get("expires_at")
            .and_then(Value::as_str)
            .and_then(|at| at.parse().ok())
            .ok_or_else(|| missing("expires_at"))?;
        let expires = UNIX_EPOCH + Duration::from_secs(expires.as_second().max(0) as u64);
        let renew_at = expires
            .checked_sub(TOKEN_RENEWAL_MARGIN)
            .unwrap_or(UNIX_EPOCH);
        *cached = Some((token.clone(), renew_at));
        Ok(token)
    }

    /// The installation's place in the token cache.
    fn token_slot(&self, installation: u64) -> Arc<TokenSlot> {
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(installation)
            .or_default()
            .clone()
    }

    /// The App's JSON Web Token: RS256 over `iat`, `exp` and `iss`.
    fn jwt(&self) -> Result<String, GitHubError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
        let claims = URL_SAFE_NO_PAD.encode(
            json!({
                "iat": now.saturating_sub(JWT_BACKDATE),
                "exp": now + JWT_LIFETIME,
                "iss": self.app_id.to_string(),
            })
            .to_string(),
        );
        let signed = format!("{header}.{claims}");
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                signed.as_bytes(),
                &mut signature,
            )
            .map_err(|_| GitHubError::Key("signing the App's JWT failed".into()))?;
        Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }

    /// One call, retried as GitHub asks: after `Retry-After`, after a spent
    /// rate limit resets (within [`MAX_RATE_LIMIT_WAIT`]), and after a 5xx
    /// answer or a lost connection with a growing pause.
    async fn send(
        &self,
        method: Method,
        path: &str,
        authorization: &str,
        body: Option<&Value>,
    ) -> Result<Value, GitHubError> {
        let url = format!("{}{path}", self.api_url);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut request = self
                .http
                .request(method.clone(), &url)
                .header("Accept", "application/vnd.github+json")
                .header("X-GitHub-Api-Version", API_VERSION)
                .header("Authorization", authorization);
            if let Some(body) = body {
                request = request.json(body);
            }
            let backoff = Duration::from_secs(1 << attempt.min(4));
            let response = match request.send().await {
                Ok(response) => response,
                Err(source) if attempt < MAX_ATTEMPTS => {
                    tracing::debug!(%method, path, error = %source, "GitHub could not be reached; trying again");
                    tokio::time::sleep(backoff).await;
                    continue;
                }
                Err(source) => {
                    return Err(GitHubError::Unreachable {
                        method,
                        path: path.to_owned(),
                        source,
                    });
                }
            };
            let status = response.status();
            let wait = rate_limit_wait(status, response.headers());
            let text = response.text().await.unwrap_or_default();
            if status.is_success() {
                return Ok(serde_json::from_str(&text).unwrap_or(Value::Null));
            }
            if let Some(wait) = wait {
                if wait > MAX_RATE_LIMIT_WAIT {
                    return Err(GitHubError::RateLimited {
                        method,
                        path: path.to_owned(),
                        wait,
                    });
                }
                if attempt < MAX_ATTEMPTS {
                    tracing::info!(%method, path, seconds = wait.as_secs(), "GitHub's rate limit: waiting");
                    tokio::time::sleep(wait).await;
                    continue;
                }
            } else if status.is_server_error() && attempt < MAX_ATTEMPTS {
                tokio::time::sleep(backoff).await;
                continue;
            }
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_else(|| text.chars().take(ERROR_BODY_CHARS).collect());
            return Err(GitHubError::Refused {
                method,
                path: path.to_owned(),
                status,
                message,
            });
        }
    }
}

/// How long GitHub asks to wait before the next call, if this answer is a
/// rate limit: `Retry-After` (secondary limits, 429), else a spent primary
/// limit (`x-ratelimit-remaining: 0`) until `x-ratelimit-reset`.
fn rate_limit_wait(status: StatusCode, headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    if status != StatusCode::FORBIDDEN && status != StatusCode::TOO_MANY_REQUESTS {
        return None;
    }
    let number = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    if let Some(seconds) = number("retry-after") {
        return Some(Duration::from_secs(seconds));
    }
    if number("x-ratelimit-remaining") == Some(0) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let reset = number("x-ratelimit-reset").unwrap_or(now + 60);
        return Some(Duration::from_secs(reset.saturating_sub(now).max(1)));
    }
    // A 429 without either header: GitHub's advice is a minute.
    (status == StatusCode::TOO_MANY_REQUESTS).then_some(Duration::from_secs(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> reqwest::header::HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    reqwest::header::HeaderName::from_static(k),
                    v.parse().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn rate_limits_are_read_as_github_documents_them() {
        assert_eq!(
            rate_limit_wait(
                StatusCode::TOO_MANY_REQUESTS,
                &headers(&[("retry-after", "3")])
            ),
            Some(Duration::from_secs(3))
        );
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let reset = (now + 30).to_string();
        let wait = rate_limit_wait(
            StatusCode::FORBIDDEN,
            &headers(&[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", &reset),
            ]),
        )
        .expect("a spent limit");
        assert!((29..=31).contains(&wait.as_secs()), "{wait:?}");
        // A 403 that is a permission problem is not waited on.
        assert_eq!(
            rate_limit_wait(
                StatusCode::FORBIDDEN,
                &headers(&[("x-ratelimit-remaining", "4999")])
            ),
            None
        );
        assert_eq!(
            rate_limit_wait(StatusCode::BAD_GATEWAY, &headers(&[])),
            None
        );
    }

    #[test]
    fn a_key_that_is_not_rsa_pem_is_refused_by_name() {
        let config = |pem: &str| GitHubAppConfig {
            app_id: 1,
            private_key_pem: pem.as_bytes().to_vec(),
            api_url: GITHUB_API.into(),
        };
        let error = GitHubApp::new(config("not a key"))
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("no PEM private key"), "{error}");
        let error = GitHubApp::new(config(
            "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
        ))
        .err()
        .unwrap()
        .to_string();
        assert!(error.contains("not a usable RSA key"), "{error}");
    }
}
