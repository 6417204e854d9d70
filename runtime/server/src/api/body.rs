//! Request bodies: how long they may take to arrive, and what a sender is
//! told when one is too large.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{API_VERSION, AppStateRef, MAX_BODY_BYTES};

/// Gives a request's body [`AppState::body_timeout`](super::AppState::body_timeout) from the moment its
/// head arrived: a client that sends its body slowly, or stops, would
/// otherwise hold its connection (and a descriptor) for as long as it
/// likes. The sender is told which limit it ran into, and the connection
/// is closed, since the rest of the body would be read as the next request.
pub(super) async fn limit_body_time(
    State(state): AppStateRef,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let timeout = state.body_timeout;
    let expired = Arc::new(AtomicBool::new(false));
    let request = request.map(|body| {
        Body::new(BodyDeadline {
            body,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            timeout,
            expired: expired.clone(),
        })
    });
    let response = next.run(request).await;
    if !expired.load(Ordering::Relaxed) {
        return response;
    }
    let reason = format!(
        "the request body did not arrive within this server's limit of {} (--body-timeout)",
        humantime::format_duration(timeout)
    );
    (
        StatusCode::REQUEST_TIMEOUT,
        [(header::CONNECTION, "close")],
        axum::Json(
            json!({"apiVersion": API_VERSION, "kind": "RequestTimeoutError", "reason": reason}),
        ),
    )
        .into_response()
}

/// A request body that fails once its deadline has passed.
struct BodyDeadline {
    body: Body,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
    expired: Arc<AtomicBool>,
}

/// What reading a body past its deadline fails with.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {}", humantime::format_duration(*.0))]
struct BodyTimedOut(Duration);

impl axum::body::HttpBody for BodyDeadline {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        // The deadline first: a body that trickles in is always ready with
        // its next byte.
        if this.deadline.as_mut().poll(cx).is_ready() {
            this.expired.store(true, Ordering::Relaxed);
            return std::task::Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut(this.timeout)))));
        }
        std::pin::Pin::new(&mut this.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// axum refuses a body past [`MAX_BODY_BYTES`] with its own plain text; the
/// sender is told the limit instead, as a JSON error like every other.
///
/// The response also says `Connection: close`: the rest of the refused body
/// is never read, so the connection cannot carry another request, and a
/// client that was not told so would send its next request on a connection
/// the server is closing (and get no answer to it).
pub(super) async fn name_the_body_limit(response: Response) -> Response {
    if response.status() != StatusCode::PAYLOAD_TOO_LARGE {
        return response;
    }
    let reason = format!(
        "the request body is larger than this server's limit of {} MiB ({MAX_BODY_BYTES} bytes)",
        MAX_BODY_BYTES / (1024 * 1024)
    );
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        [(header::CONNECTION, "close")],
        axum::Json(json!({"kind": "PayloadTooLargeError", "reason": reason})),
    )
        .into_response()
}
