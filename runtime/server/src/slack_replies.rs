//! Slack commands answered in their channel when their event ends, as
//! Brigade's Slack gateway's monitor did: the project, how its worker ended
//! and its summary, posted to the command's `response_url`.
//!
//! The Slack gateway writes the URL into the event's source state
//! (`tracking`, `responseURL`). The server posts only to URLs under the
//! allowed prefix (`https://hooks.slack.com/` unless configured): source
//! state can also be set through the API by an EVENT_CREATOR of
//! `brigade.sh/slack`, and the server must not be made to post wherever
//! that caller likes. A failed post is logged and never fails the event.

use std::sync::Arc;
use std::time::Duration;

use mizzen_host_api::types::Phase;
use serde_json::json;

use crate::gateways::SLACK_SOURCE;
use crate::store::EventRecord;

/// Slack's own prefix of response URLs.
pub const SLACK_RESPONSE_URLS: &str = "https://hooks.slack.com/";

/// How long a post to Slack may take: Slack answers at once, and a reply
/// later than this is not worth a task held open.
const POST_TIMEOUT: Duration = Duration::from_secs(15);

/// Attempts of one reply: Slack's rare 5xx answers pass in seconds.
const ATTEMPTS: u32 = 3;

/// The most of a summary a reply quotes: Slack cuts a message's text at
/// 40,000 characters, and a channel is no place for more than a screenful.
const SUMMARY_CHARS: usize = 3_000;

/// Posts ended events' outcomes back to Slack.
pub struct SlackReplies {
    http: reqwest::Client,
    allowed: String,
}

impl SlackReplies {
    /// Replies to URLs under `allowed` (e.g. [`SLACK_RESPONSE_URLS`]).
    pub fn new(allowed: String) -> Result<Arc<Self>, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(POST_TIMEOUT)
            .user_agent(concat!("mizzen/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Arc::new(Self { http, allowed }))
    }

    /// When `event` came from a Slack command that asked to be answered,
    /// posts how it ended; returns at once.
    pub fn event_ended(&self, event: &EventRecord, phase: Phase, summary: Option<&str>) {
        let state = &event.document.source_state;
        if event.source != SLACK_SOURCE || state.get("tracking").map(String::as_str) != Some("true")
        {
            return;
        }
        let Some(url) = state.get("responseURL") else {
            return;
        };
        if !url.starts_with(&self.allowed) {
            tracing::warn!(event = %event.id, url, allowed = %self.allowed, "the Slack command's response URL is not under the allowed prefix: no reply");
            return;
        }
        let mut text = format!("*{}*: {} (event {})", event.project_id, phase, event.id);
        if let Some(summary) = summary.filter(|s| !s.is_empty()) {
            text.push('\n');
            text.extend(summary.chars().take(SUMMARY_CHARS));
        }
        let body =
            json!({ "response_type": "in_channel", "replace_original": false, "text": text });
        let (http, url, event_id) = (self.http.clone(), url.clone(), event.id.clone());
        tokio::spawn(async move {
            for attempt in 1..=ATTEMPTS {
                // A refusal (4xx) stays a refusal; the rest may pass.
                let (again, error) = match http.post(&url).json(&body).send().await {
                    Ok(answer) if answer.status().is_success() => return,
                    Ok(answer) => (
                        answer.status().is_server_error(),
                        format!("Slack answered {}", answer.status()),
                    ),
                    Err(e) => (true, e.to_string()),
                };
                if !again || attempt == ATTEMPTS {
                    tracing::warn!(event = %event_id, %error, "the Slack command could not be answered");
                    return;
                }
                tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
            }
        });
    }
}
