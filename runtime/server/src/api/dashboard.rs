//! The dashboard: a page and its script and style, embedded in the binary
//! (no CDN, works offline), served at `/`. It reads and acts through the
//! REST API with the signed-in person's token, so the API's roles decide
//! what it shows and allows; the page itself holds no data.

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::AppState;

const INDEX: &str = include_str!("../../dashboard/index.html");
const SCRIPT: &str = include_str!("../../dashboard/app.js");
const STYLE: &str = include_str!("../../dashboard/app.css");

/// Only the page's own script and style, no inline code, no framing, and
/// requests only to this server: a value from the API that slipped into
/// markup could run nothing.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The routes of the dashboard.
pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(|headers: HeaderMap| async move { asset(&headers, INDEX, "text/html; charset=utf-8") }))
        .route("/ui/app.js", get(|headers: HeaderMap| async move { asset(&headers, SCRIPT, "text/javascript; charset=utf-8") }))
        .route("/ui/app.css", get(|headers: HeaderMap| async move { asset(&headers, STYLE, "text/css; charset=utf-8") }))
}

/// An asset with its validator: a browser asks again each time (`no-cache`)
/// and gets 304 while the binary is the same.
fn asset(request: &HeaderMap, body: &'static str, content_type: &'static str) -> Response {
    let etag = format!("\"{}-{:x}\"", env!("CARGO_PKG_VERSION"), fnv(body));
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, value);
    }
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == etag);
    if fresh {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    (StatusCode::OK, headers, body).into_response()
}

/// FNV-1a: a validator for a few embedded files, not a security hash.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}
