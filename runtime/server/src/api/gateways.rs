//! The webhook gateways' HTTP side: which are enabled, their credentials,
//! replayed deliveries, and their events accepted like any other.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::json;

use super::accept::{EventBody, fan_out, store_events};
use super::{ApiError, ApiResult, AppState, AppStateRef};
use crate::gateways::{self, GatewayError, GatewayEvent};

/// The routes of this resource.
pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/gateways/github", post(github_webhook))
        .route("/gateways/dockerhub", post(dockerhub_webhook))
        .route("/gateways/acr", post(acr_webhook))
        .route(
            "/gateways/cloudevents",
            post(cloudevents_webhook).options(cloudevents_handshake),
        )
}

fn gateway_error(error: GatewayError) -> Response {
    let status = error.status();
    (status, axum::Json(json!({"message": error.message()}))).into_response()
}

fn gateway_disabled(name: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({"message": format!("the {name} gateway is not enabled on this server")})),
    )
        .into_response()
}

/// Fans a gateway's event out and stores it; 200 only once it is durable.
async fn accept_gateway_event(state: &AppState, event: GatewayEvent) -> ApiResult<usize> {
    let git = event.git.map(|git| {
        // The project's own clone URL (perhaps SSH, for a private
        // repository) stays; the delivery says which commit and ref.
        json!({"commit": git.commit, "ref": git.git_ref})
    });
    let body = EventBody {
        project_id: String::new(),
        source: event.source,
        event_type: event.event_type,
        qualifiers: Some(event.qualifiers),
        labels: Some(event.labels),
        short_title: event.short_title,
        long_title: event.long_title,
        git,
        payload: event.payload,
    };
    let events = fan_out(state, body, &BTreeMap::new()).await?;
    Ok(store_events(state, events).await?.0)
}

fn accepted(count: usize) -> Response {
    (
        StatusCode::OK,
        axum::Json(json!({"message": format!("accepted: {count} event(s) created")})),
    )
        .into_response()
}

async fn github_webhook(State(state): AppStateRef, headers: HeaderMap, body: Bytes) -> Response {
    let Some(secret) = &state.gateways.github_secret else {
        return gateway_disabled("GitHub");
    };
    let delivery = match gateways::github(&headers, &body, secret.as_bytes()) {
        Ok(delivery) => delivery,
        Err(e) => return gateway_error(e),
    };
    match state
        .store
        .record_delivery("github", &delivery.delivery_id)
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            return (
                StatusCode::OK,
                axum::Json(json!({"message": format!(
                    "delivery {} was already received; ignored", delivery.delivery_id
                )})),
            )
                .into_response();
        }
        Err(e) => return ApiError::from(e).into_response(),
    }
    match accept_gateway_event(&state, delivery.event).await {
        Ok(count) => accepted(count),
        Err(e) => {
            // Let GitHub's redelivery through: this one was not stored.
            let _ = state
                .store
                .forget_delivery("github", &delivery.delivery_id)
                .await;
            e.into_response()
        }
    }
}

async fn token_gateway(
    state: &AppState,
    name: &str,
    tokens: &[String],
    headers: &HeaderMap,
    query: Option<&str>,
    parse: impl FnOnce() -> Result<GatewayEvent, GatewayError>,
) -> Response {
    if tokens.is_empty() {
        return gateway_disabled(name);
    }
    let authorized = gateways::bearer_token(headers, query)
        .is_some_and(|token| gateways::token_matches(&token, tokens));
    if !authorized {
        return gateway_error(GatewayError::Unauthorized(format!(
            "the {name} gateway needs a valid token (Authorization: Bearer <token> or ?access_token=<token>)"
        )));
    }
    match parse() {
        Ok(event) => match accept_gateway_event(state, event).await {
            Ok(count) => accepted(count),
            Err(e) => e.into_response(),
        },
        Err(e) => gateway_error(e),
    }
}

async fn dockerhub_webhook(
    State(state): AppStateRef,
    headers: HeaderMap,
    uri: axum::http::Uri,
    body: Bytes,
) -> Response {
    let tokens = state.gateways.dockerhub_tokens.clone();
    token_gateway(&state, "Docker Hub", &tokens, &headers, uri.query(), || {
        gateways::dockerhub(&body)
    })
    .await
}

async fn acr_webhook(
    State(state): AppStateRef,
    headers: HeaderMap,
    uri: axum::http::Uri,
    body: Bytes,
) -> Response {
    let tokens = state.gateways.acr_tokens.clone();
    token_gateway(&state, "ACR", &tokens, &headers, uri.query(), || {
        gateways::acr(&body)
    })
    .await
}

async fn cloudevents_webhook(
    State(state): AppStateRef,
    headers: HeaderMap,
    uri: axum::http::Uri,
    body: Bytes,
) -> Response {
    let tokens = state.gateways.cloudevents_tokens.clone();
    token_gateway(
        &state,
        "CloudEvents",
        &tokens,
        &headers,
        uri.query(),
        || gateways::cloudevent(&headers, &body),
    )
    .await
}

/// CloudEvents' webhook abuse protection: a sender asks with OPTIONS
/// whether it may deliver; the gateway allows the origin it was asked about.
async fn cloudevents_handshake(State(state): AppStateRef, headers: HeaderMap) -> Response {
    if state.gateways.cloudevents_tokens.is_empty() {
        return gateway_disabled("CloudEvents");
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
