//! The memory answers may spend on large event documents at once: a
//! request for a large event waits for its share of one budget, and holds
//! it until the client has read the answer.

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::sync::OwnedSemaphorePermit;

use super::AppState;

/// Memory that answers may spend on large event documents at once, across
/// all requests, rendering them or holding them until the client has read
/// them: a request for a large event waits for its share, so that many
/// clients reading large payloads at once cost about this much, not their
/// number times their payloads. A document counts as many times as it is
/// held at once (`RENDERED`, `COPIED`).
pub const DOCUMENT_BUDGET: u32 = 256 * 1024 * 1024;

/// Documents smaller than this take no share of [`DOCUMENT_BUDGET`]: they
/// are what nearly every event is, and one request holds one at a time.
const SMALL_DOCUMENT: u64 = 1024 * 1024;

/// Copies of a document held at once while it is read and rendered: the
/// database's and the driver's while it is read, then the parsed event,
/// then the rendered answer.
pub(super) const RENDERED: u64 = 3;

/// Copies of a document held at once while a retry or a clone of its event
/// is read, stored and shown: as for [`RENDERED`], and the new event, the
/// copy the answer shows and the event as the store writes it.
pub(super) const COPIED: u64 = 4;

/// Waits for the share of [`DOCUMENT_BUDGET`] of `bytes` held in documents;
/// `None` for a small one. One larger than the budget waits for all of it.
pub(super) async fn document_share(state: &AppState, bytes: u64) -> Option<OwnedSemaphorePermit> {
    if bytes < SMALL_DOCUMENT {
        return None;
    }
    let bytes = u32::try_from(bytes)
        .unwrap_or(u32::MAX)
        .min(DOCUMENT_BUDGET);
    // The semaphore is never closed, so this cannot fail.
    state.documents.clone().acquire_many_owned(bytes).await.ok()
}

/// A rendered answer that keeps its share of [`DOCUMENT_BUDGET`] until the
/// HTTP layer has written it and drops it.
struct HeldBytes {
    bytes: Vec<u8>,
    _share: Option<OwnedSemaphorePermit>,
}

impl AsRef<[u8]> for HeldBytes {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// `value` as JSON, after `prefix`, holding as much of `share` as it has
/// bytes until it is written: the copies made to render it are gone by
/// then (or go with `value`), and their part of the budget goes back at
/// once, for other requests or this one's next event.
pub(super) fn held_json(
    prefix: &[u8],
    value: &Value,
    share: Option<OwnedSemaphorePermit>,
) -> Bytes {
    let mut bytes = prefix.to_vec();
    // Writing JSON values to memory cannot fail.
    let _ = serde_json::to_writer(&mut bytes, value);
    let Some(mut share) = share else {
        return Bytes::from(bytes);
    };
    let kept = match share.split(bytes.len()) {
        // The rest of `share` is given back when it is dropped here.
        Some(kept) => kept,
        None => share,
    };
    Bytes::from_owner(HeldBytes {
        bytes,
        _share: Some(kept),
    })
}

/// A JSON answer rendered by [`held_json`].
pub(super) fn held_answer(
    status: StatusCode,
    value: &Value,
    share: Option<OwnedSemaphorePermit>,
) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(held_json(b"", value, share)),
    )
        .into_response()
}
