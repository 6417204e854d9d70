//! The webhook gateways' HTTP side: a route for each gateway of
//! [`GATEWAYS`], which answers only when the server has the gateway's
//! credentials, drops deliveries it has seen, and accepts the delivery's
//! events like any others, stored together.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Router};
use serde_json::json;

use super::accept::{EventBody, fan_out, store_events};
use super::{ApiError, ApiResult, AppState, AppStateRef};
use crate::gateways::{GATEWAYS, Gateway, GatewayError, GatewayEvent, Request};

/// The routes of this resource: `/gateways/<path>` for each gateway.
pub(super) fn routes() -> Router<Arc<AppState>> {
    let mut router = Router::new();
    for gateway in &GATEWAYS {
        let mut route = post(
            move |State(state): AppStateRef,
                  peer: Option<Extension<ConnectInfo<SocketAddr>>>,
                  headers: HeaderMap,
                  uri: Uri,
                  body: Bytes| {
                let peer = peer.map(|Extension(ConnectInfo(address))| address.ip());
                deliver(state, gateway, peer, headers, uri, body)
            },
        );
        if gateway.handshake {
            route = route.options(move |State(state): AppStateRef, headers: HeaderMap| {
                handshake(state, gateway, headers)
            });
        }
        router = router.route(&format!("/gateways/{}", gateway.path), route);
    }
    router
}

/// A delivery to `gateway`: authenticated, parsed, not seen before, and its
/// event stored (200 only once it is durable).
async fn deliver(
    state: Arc<AppState>,
    gateway: &Gateway,
    peer: Option<IpAddr>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let (response, outcome, reason) =
        deliver_counted(&state, gateway, peer, headers, uri, body).await;
    state
        .metrics
        .gateway_delivery(gateway.path, outcome, reason);
    response
}

/// [`deliver`]'s answer, with its outcome and reason for the metrics.
async fn deliver_counted(
    state: &AppState,
    gateway: &Gateway,
    peer: Option<IpAddr>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> (Response, &'static str, &'static str) {
    let config = &state.gateways;
    if !gateway.enabled(config) {
        return (gateway_disabled(gateway), "refused", "disabled");
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let request = Request {
        headers: &headers,
        query: uri.query(),
        body: &body,
        peer,
    };
    let delivery = gateway
        .authenticate(config, &request, now)
        .and_then(|()| (gateway.parse)(&headers, &body));
    let delivery = match delivery {
        Ok(delivery) => delivery,
        Err(e) => {
            let (outcome, reason) = match &e {
                GatewayError::Unauthorized(_) => ("refused", "unauthorized"),
                GatewayError::BadRequest(_) => ("refused", "bad_request"),
                GatewayError::Ignored(_) => ("ignored", ""),
            };
            return (answer(gateway, e.status(), e.message()), outcome, reason);
        }
    };
    if let Some(id) = &delivery.id {
        match state.store.record_delivery(gateway.path, id).await {
            Ok(true) => {}
            Ok(false) => {
                let said = format!("delivery {id} was already received; ignored");
                return (answer(gateway, StatusCode::OK, &said), "duplicate", "");
            }
            Err(e) => return (ApiError::from(e).into_response(), "failed", "store"),
        }
    }
    match accept_gateway_events(state, delivery.events, &headers).await {
        Ok(count) => {
            let said = format!("accepted: {count} event(s) created");
            (answer(gateway, StatusCode::OK, &said), "accepted", "")
        }
        Err(e) => {
            // Let the source's redelivery through: this one was not stored.
            if let Some(id) = &delivery.id {
                let _ = state.store.forget_delivery(gateway.path, id).await;
            }
            let (outcome, reason) = match &e {
                ApiError::BadRequest { .. } => ("refused", "bad_request"),
                _ => ("failed", "store"),
            };
            (e.into_response(), outcome, reason)
        }
    }
}

/// A gateway's answer: `{"message": ...}`, or for Slack a message only
/// the person who typed the command sees (Slack shows an answer's `text`).
fn answer(gateway: &Gateway, status: StatusCode, message: &str) -> Response {
    let body = if gateway.slack_reply {
        json!({"response_type": "ephemeral", "text": message})
    } else {
        json!({"message": message})
    };
    (status, axum::Json(body)).into_response()
}

fn gateway_disabled(gateway: &Gateway) -> Response {
    let said = format!("the {} gateway is not enabled on this server", gateway.name);
    answer(gateway, StatusCode::NOT_FOUND, &said)
}

/// Fans a gateway's events out and stores them together; 200 only once
/// they are durable. An event for one project (a GitHub check run names
/// it) that does not exist makes no event.
async fn accept_gateway_events(
    state: &AppState,
    events: Vec<GatewayEvent>,
    headers: &HeaderMap,
) -> ApiResult<usize> {
    let mut all = Vec::new();
    for event in events {
        let git = event.git.map(|git| {
            // The project's own clone URL (perhaps SSH, for a private
            // repository) stays; the delivery says which commit and ref.
            json!({"commit": git.commit, "ref": git.git_ref})
        });
        let for_one = !event.project_id.is_empty();
        let body = EventBody {
            project_id: event.project_id,
            source: event.source,
            event_type: event.event_type,
            qualifiers: Some(event.qualifiers),
            labels: Some(event.labels),
            short_title: event.short_title,
            long_title: event.long_title,
            git,
            payload: event.payload,
        };
        let copies = match fan_out(state, body, &BTreeMap::new()).await {
            Err(ApiError::NotFound { .. }) if for_one => continue,
            copies => copies?,
        };
        all.extend(copies.into_iter().map(|mut copy| {
            copy.document.source_state = event.source_state.clone();
            copy
        }));
    }
    Ok(store_events(state, all, Some(headers)).await?.0)
}

/// CloudEvents' webhook abuse protection: a sender asks with OPTIONS
/// whether it may deliver; the gateway allows the origin it was asked about.
async fn handshake(state: Arc<AppState>, gateway: &Gateway, headers: HeaderMap) -> Response {
    if !gateway.enabled(&state.gateways) {
        return gateway_disabled(gateway);
    }
    let origin = headers
        .get("webhook-request-origin")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("*")
        .to_string();
    Response::builder()
        .status(StatusCode::OK)
        .header("WebHook-Allowed-Origin", origin)
        .header("WebHook-Allowed-Rate", "*")
        .header(header::ALLOW, "POST, OPTIONS")
        .body(Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
