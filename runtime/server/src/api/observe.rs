//! Every request counted, timed and logged: the route's template (never
//! the path, which holds ids and, for some gateways, a token in the query),
//! the method and the status.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;

use super::AppStateRef;

/// Counts, times and logs one request.
pub(super) async fn observe(
    State(state): AppStateRef,
    matched: Option<MatchedPath>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = matched
        .as_ref()
        .map_or("unmatched", MatchedPath::as_str)
        .to_string();
    let response = next.run(request).await;
    let seconds = started.elapsed().as_secs_f64();
    let status = response.status().as_u16();
    state.metrics.request(method, &route, status, seconds);
    let ms = format_args!("{:.1}", seconds * 1000.0);
    // Probes and scrapes come every few seconds: only when asked for.
    if matches!(
        route.as_str(),
        "/healthz" | "/metrics" | "/ping" | "/v2/ping"
    ) {
        tracing::debug!(method, route, status, ms, "request");
    } else {
        tracing::info!(method, route, status, ms, "request");
    }
    response
}

/// The method as a label: any other than HTTP's own is `other`, so a
/// client cannot make a series per made-up method.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}
