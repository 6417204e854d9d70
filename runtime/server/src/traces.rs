//! One trace per event: its W3C trace context, made when it is accepted
//! (continuing the caller's `traceparent`, if the request had one) and kept
//! with the event, and the spans of its life, made when its worker ends:
//!
//! ```text
//! event   accepted ──────────────────────────────────────────── ended
//!   queued    accepted ── claimed
//!   worker               claimed ──────────────────────────── ended
//!     job build              started ─────── ended
//!     job test                          started ─────── ended
//! ```
//!
//! The spans are made at the end, from what the store holds, because an
//! event's life crosses requests and replicas: the one that accepted it may
//! not be the one that runs it. They go out through a spool of their own
//! (`mizzen-forwarding`), as lines do.

use std::collections::BTreeMap;

use axum::http::HeaderMap;
use mizzen_forwarding::TraceSpan;
use mizzen_host_api::types::Phase;
use serde::{Deserialize, Serialize};

use crate::store::{EventRecord, JobRecord};

/// An event's place in a trace: its own span and where it hangs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EventTrace {
    /// 32 hex digits: the caller's trace, or a new one.
    pub trace_id: String,
    /// 16 hex digits: the event's span.
    pub span_id: String,
    /// The caller's span, or empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub parent_span_id: String,
}

impl EventTrace {
    /// A new span for an event, in the caller's trace when `headers` carry
    /// a valid `traceparent`, else in a trace of its own.
    pub fn start(headers: Option<&HeaderMap>) -> Self {
        let caller = headers
            .and_then(|h| h.get("traceparent"))
            .and_then(|v| v.to_str().ok())
            .and_then(parse_traceparent);
        let (trace_id, parent_span_id) = match caller {
            Some((trace, parent)) => (trace, parent),
            None => (random_hex::<16>(), String::new()),
        };
        Self {
            trace_id,
            span_id: random_hex::<8>(),
            parent_span_id,
        }
    }
}

/// `00-<32 hex trace>-<16 hex parent>-<2 hex flags>` (W3C Trace Context,
/// version 00; later versions may append fields). All-zero ids are invalid.
fn parse_traceparent(value: &str) -> Option<(String, String)> {
    let mut parts = value.trim().split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let parent = parts.next()?;
    let flags = parts.next()?;
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let valid = hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && trace.bytes().any(|b| b != b'0')
        && parent.bytes().any(|b| b != b'0')
        && (version != "00" || parts.next().is_none());
    valid.then(|| (trace.to_string(), parent.to_string()))
}

fn random_hex<const N: usize>() -> String {
    let mut bytes = [0u8; N];
    // An id must only be unlikely to repeat; without the OS's randomness
    // the clock's nanoseconds still make it so.
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
            .to_le_bytes();
        for (b, n) in bytes.iter_mut().zip(nanos.iter().cycle()) {
            *b = *n;
        }
    }
    hex::encode(bytes)
}

/// The spans of an event whose worker ended with `phase` at `ended`
/// (microseconds, as the store keeps times).
pub fn event_spans(
    event: &EventRecord,
    trace: &EventTrace,
    jobs: &[JobRecord],
    phase: Phase,
    ended: i64,
) -> Vec<TraceSpan> {
    let nanos = |micros: i64| micros.saturating_mul(1_000);
    let failed = |phase: Phase| !matches!(phase, Phase::Succeeded);
    let common = BTreeMap::from([
        ("project".to_string(), event.project_id.clone()),
        ("event".to_string(), event.id.clone()),
        ("source".to_string(), event.source.clone()),
        ("type".to_string(), event.event_type.clone()),
    ]);
    let claimed = event.started.unwrap_or(ended);
    let span = |name: &str, span_id: String, parent: &str, start: i64, end: i64| TraceSpan {
        trace_id: trace.trace_id.clone(),
        span_id,
        parent_span_id: parent.to_string(),
        name: name.to_string(),
        start_nanos: nanos(start),
        end_nanos: nanos(end),
        attributes: common.clone(),
        failed: false,
    };
    let worker_id = random_hex::<8>();
    let mut spans = vec![
        span(
            "queued",
            random_hex::<8>(),
            &trace.span_id,
            event.created,
            claimed,
        ),
        TraceSpan {
            attributes: {
                let mut a = common.clone();
                a.insert("phase".into(), phase.as_str().into());
                a.insert("attempt".into(), event.attempts.to_string());
                a
            },
            failed: failed(phase),
            ..span("worker", worker_id.clone(), &trace.span_id, claimed, ended)
        },
    ];
    for job in jobs {
        let start = job.started.unwrap_or(job.created);
        let mut attributes = common.clone();
        attributes.insert("job".into(), job.name.clone());
        attributes.insert("phase".into(), job.phase.as_str().into());
        spans.push(TraceSpan {
            attributes,
            failed: failed(job.phase),
            ..span(
                &format!("job {}", job.name),
                random_hex::<8>(),
                &worker_id,
                start,
                job.ended.unwrap_or(ended).max(start),
            )
        });
    }
    let mut attributes = common.clone();
    attributes.insert("phase".into(), phase.as_str().into());
    spans.push(TraceSpan {
        failed: failed(phase),
        attributes,
        ..span(
            "event",
            trace.span_id.clone(),
            &trace.parent_span_id,
            event.created,
            ended,
        )
    });
    spans
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_is_continued_and_others_start_anew() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            parse_traceparent(good),
            Some((
                "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                "00f067aa0ba902b7".into()
            ))
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad:?}");
        }
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", good.parse().unwrap());
        let trace = EventTrace::start(Some(&headers));
        assert_eq!(trace.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(trace.parent_span_id, "00f067aa0ba902b7");
        assert_eq!(trace.span_id.len(), 16);
        let own = EventTrace::start(None);
        assert_eq!((own.trace_id.len(), own.parent_span_id.as_str()), (32, ""));
    }
}
