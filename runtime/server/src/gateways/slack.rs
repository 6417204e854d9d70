//! Slack's slash commands, as Brigade's Slack gateway made them: the
//! request's signature (signing secret, version `v0`) within Slack's
//! five-minute window, then the command as an event.

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{
    GatewayError, GatewayEvent, bad, check_label_value, form_pairs, header_str, truncate_title,
    unauthorized,
};

/// Event source of events produced by [`slack`].
pub const SLACK_SOURCE: &str = "brigade.sh/slack";

/// How far a request's `X-Slack-Request-Timestamp` may be from the
/// server's clock: Slack's own advice against replays. A replay inside the
/// window carries the same signature, which the caller de-duplicates.
pub const MAX_CLOCK_SKEW_SECS: u64 = 5 * 60;

type HmacSha256 = Hmac<Sha256>;

/// Checks Slack's `X-Slack-Signature`: `v0=` and the hex HMAC-SHA256 of
/// `v0:<X-Slack-Request-Timestamp>:<body>` keyed with the app's signing
/// secret, compared in constant time, with the timestamp at most
/// [`MAX_CLOCK_SKEW_SECS`] from `now` (seconds since the epoch).
pub(super) fn verify_slack_signature(
    headers: &HeaderMap,
    body: &[u8],
    secret: &[u8],
    now: u64,
) -> Result<(), GatewayError> {
    if secret.is_empty() {
        return Err(unauthorized(
            "no Slack signing secret is configured, so X-Slack-Signature cannot be verified",
        ));
    }
    let timestamp = header_str(headers, "x-slack-request-timestamp")
        .ok_or_else(|| unauthorized("missing X-Slack-Request-Timestamp header"))?;
    let seconds: u64 = timestamp
        .parse()
        .map_err(|_| unauthorized("X-Slack-Request-Timestamp header is not a number of seconds"))?;
    if seconds.abs_diff(now) > MAX_CLOCK_SKEW_SECS {
        return Err(unauthorized(format!(
            "X-Slack-Request-Timestamp is more than {MAX_CLOCK_SKEW_SECS} seconds from the server's clock (a replay, or a clock that is off)"
        )));
    }
    let signature = header_str(headers, "x-slack-signature")
        .ok_or_else(|| unauthorized("missing X-Slack-Signature header"))?;
    let digest = signature.strip_prefix("v0=").ok_or_else(|| {
        unauthorized("X-Slack-Signature header must have the form v0=<hex digest>")
    })?;
    let tag = hex::decode(digest)
        .ok()
        .filter(|tag| tag.len() == 32)
        .ok_or_else(|| unauthorized("X-Slack-Signature digest must be 64 hex characters"))?;
    let mut mac = <HmacSha256 as Mac>::new_from_slice(secret)
        .map_err(|_| unauthorized("the configured Slack signing secret is unusable"))?;
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    mac.verify_slice(&tag).map_err(|_| {
        unauthorized("X-Slack-Signature does not match the request, its timestamp and the configured signing secret")
    })
}

/// Translates a verified slash command (a form-encoded body) into an event:
/// type the command without its `/`, qualifier `appID` (`api_app_id`),
/// labels `teamID`, `channelID`, `userID` and, on Enterprise Grid,
/// `enterpriseID`; the payload is the command's text. The delivery's id is
/// its signature, so a replay within the window is dropped.
pub(super) fn slack_delivery(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(String, GatewayEvent), GatewayError> {
    let text = std::str::from_utf8(body).map_err(|_| bad("request body is not valid UTF-8"))?;
    let mut fields = std::collections::BTreeMap::new();
    for pair in form_pairs(text) {
        let Some((key, value)) = pair else {
            return Err(bad(
                "request body is not form-encoded (Slack sends application/x-www-form-urlencoded)",
            ));
        };
        fields.insert(key, value);
    }
    let field = |name: &str| {
        fields
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    let command = field("command").ok_or_else(|| bad("missing field `command`"))?;
    let event_type = command.strip_prefix('/').unwrap_or(command);
    check_label_value("field `command`", event_type)?;
    let mut event = GatewayEvent::new(
        SLACK_SOURCE,
        event_type,
        field("text").unwrap_or_default().to_owned(),
    );
    if let Some(app) = field("api_app_id") {
        check_label_value("field `api_app_id`", app)?;
        event.qualifiers.insert("appID".into(), app.to_owned());
    }
    for (label, name, required) in [
        ("teamID", "team_id", true),
        ("channelID", "channel_id", true),
        ("userID", "user_id", true),
        ("enterpriseID", "enterprise_id", false),
    ] {
        match field(name) {
            Some(value) => {
                check_label_value(&format!("field `{name}`"), value)?;
                event.labels.insert(label.into(), value.to_owned());
            }
            None if required => return Err(bad(format!("missing field `{name}`"))),
            None => {}
        }
    }
    let said = match field("text") {
        Some(text) => format!("{command} {text}"),
        None => command.to_owned(),
    };
    event.short_title = truncate_title(said.clone());
    event.long_title = said;
    // Where the outcome is posted when the event ends
    // (crate::slack_replies).
    if let Some(url) = field("response_url") {
        event.source_state = [("tracking", "true"), ("responseURL", url)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
    }
    let id = header_str(headers, "x-slack-signature")
        .unwrap_or_default()
        .to_owned();
    Ok((id, event))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateways::testing::headers;

    /// Slack's own example ("Verifying requests from Slack"): its signing
    /// secret, timestamp, body and the signature it computes.
    const SECRET: &[u8] = b"8f742231b10e8888abcd99yyyzzz85a5";
    const TIMESTAMP: u64 = 1_531_420_618;
    const BODY: &str = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const SIGNATURE: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

    fn signed(signature: &str, timestamp: &str) -> HeaderMap {
        headers(&[
            ("x-slack-signature", signature),
            ("x-slack-request-timestamp", timestamp),
        ])
    }

    #[test]
    fn slacks_documented_example_verifies_and_becomes_an_event() {
        let h = signed(SIGNATURE, &TIMESTAMP.to_string());
        verify_slack_signature(&h, BODY.as_bytes(), SECRET, TIMESTAMP + 60)
            .expect("Slack's example verifies");
        let (id, event) = slack_delivery(&h, BODY.as_bytes()).expect("a command");
        assert_eq!(id, SIGNATURE);
        assert_eq!(event.source, "brigade.sh/slack");
        assert_eq!(event.event_type, "webhook-collect");
        assert_eq!(event.labels["teamID"], "T1DC2JH3J");
        assert_eq!(event.labels["channelID"], "G8PSS9T3V");
        assert_eq!(event.labels["userID"], "U2CERLKJA");
        assert!(!event.labels.contains_key("enterpriseID"));
        assert_eq!(event.payload, "");
        assert_eq!(event.short_title, "/webhook-collect");
    }

    #[test]
    fn a_wrong_secret_body_or_stale_timestamp_is_refused() {
        let h = signed(SIGNATURE, &TIMESTAMP.to_string());
        for (secret, body, now, why) in [
            (&b"another-secret"[..], BODY, TIMESTAMP, "does not match"),
            (
                SECRET,
                "token=x&command=%2Fdeploy",
                TIMESTAMP,
                "does not match",
            ),
            (
                SECRET,
                BODY,
                TIMESTAMP + MAX_CLOCK_SKEW_SECS + 1,
                "more than 300 seconds",
            ),
            (
                SECRET,
                BODY,
                TIMESTAMP - MAX_CLOCK_SKEW_SECS - 1,
                "more than 300 seconds",
            ),
            (b"", BODY, TIMESTAMP, "no Slack signing secret"),
        ] {
            let error = verify_slack_signature(&h, body.as_bytes(), secret, now).unwrap_err();
            assert!(
                matches!(error, GatewayError::Unauthorized(ref m) if m.contains(why)),
                "{error:?}"
            );
        }
        for (h, why) in [
            (
                signed("a2114d57", &TIMESTAMP.to_string()),
                "must have the form v0=",
            ),
            (signed("v0=zz", &TIMESTAMP.to_string()), "64 hex characters"),
            (signed(SIGNATURE, "yesterday"), "not a number of seconds"),
            (
                headers(&[("x-slack-request-timestamp", "1531420618")]),
                "missing X-Slack-Signature",
            ),
        ] {
            let error = verify_slack_signature(&h, BODY.as_bytes(), SECRET, TIMESTAMP).unwrap_err();
            assert!(
                matches!(error, GatewayError::Unauthorized(ref m) if m.contains(why)),
                "{error:?}"
            );
        }
    }

    #[test]
    fn commands_name_their_type_and_bad_fields_are_named() {
        let h = signed(SIGNATURE, "1");
        let (_, event) = slack_delivery(
            &h,
            b"api_app_id=A123456&team_id=T0001&enterprise_id=E0001&channel_id=C2147483705&user_id=U2147483697&command=%2Fdeploy&text=api+to+production",
        )
        .unwrap();
        assert_eq!(event.event_type, "deploy");
        assert_eq!(event.qualifiers["appID"], "A123456");
        assert_eq!(event.labels["enterpriseID"], "E0001");
        assert_eq!(event.payload, "api to production");
        assert_eq!(event.short_title, "/deploy api to production");
        for (body, why) in [
            (
                &b"team_id=T&channel_id=C&user_id=U"[..],
                "missing field `command`",
            ),
            (
                b"command=%2Fdeploy&channel_id=C&user_id=U",
                "missing field `team_id`",
            ),
            (
                b"command=%2Fde%20ploy&team_id=T&channel_id=C&user_id=U",
                "field `command` contains ' '",
            ),
            (b"command=%ZZ", "not form-encoded"),
            (b"\xff", "not valid UTF-8"),
        ] {
            let error = slack_delivery(&h, body).unwrap_err();
            assert!(
                matches!(error, GatewayError::BadRequest(ref m) if m.contains(why)),
                "{error:?}"
            );
        }
    }
}
