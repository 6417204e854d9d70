//! CloudEvents 1.0 over HTTP, in structured and binary mode.

use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;
use base64::Engine as _;
use serde_json::{Map, Value};

use super::{
    GatewayError, GatewayEvent, bad, check_label_value, clip, parse_json_object, percent_decode,
};

/// Event source of events produced by [`cloudevent`].
pub const CLOUDEVENTS_SOURCE: &str = "brigade.sh/cloudevents";

/// Event type of every event produced by [`cloudevent`].
pub const CLOUDEVENT_TYPE: &str = "cloudevent";

/// Translates a CloudEvents 1.0 HTTP request, in structured mode (`Content-Type:
/// application/cloudevents+json`) or binary mode (`ce-*` headers, body = data).
///
/// Source `brigade.sh/cloudevents`, type `cloudevent`, qualifiers `source` and
/// `type` copied from the CloudEvent. `specversion` must be `1.0`; `id`,
/// `source` and `type` are required. The payload is the whole CloudEvent in
/// structured JSON form: the body itself in structured mode; in binary mode a
/// JSON object built from the (percent-decoded) `ce-*` headers, with
/// `datacontenttype` from `Content-Type` and the body as `data` (parsed JSON
/// for JSON content types, a string for other UTF-8 bodies, `data_base64`
/// otherwise). Batched mode is not supported. Authenticate the request with
/// [`bearer_token`](super::bearer_token) and [`token_matches`](super::token_matches).
pub fn cloudevent(headers: &HeaderMap, body: &[u8]) -> Result<GatewayEvent, GatewayError> {
    let media = media_type(headers);
    let (attributes, payload, binary) = match media.as_deref() {
        Some("application/cloudevents+json") => {
            let (text, value) = parse_json_object(body)?;
            match value {
                Value::Object(map) => (map, text, false),
                _ => return Err(bad("request body must be a JSON object")),
            }
        }
        Some("application/cloudevents-batch+json") => {
            return Err(bad(
                "batched CloudEvents (application/cloudevents-batch+json) are not supported; \
                 send one event per request",
            ));
        }
        Some(other) if other.starts_with("application/cloudevents") => {
            return Err(bad(format!(
                "unsupported CloudEvents format {:?} in Content-Type; use application/cloudevents+json",
                clip(other, 64)
            )));
        }
        _ if headers.contains_key("ce-specversion") => {
            let map = binary_mode_event(headers, body)?;
            let text = Value::Object(map.clone()).to_string();
            (map, text, true)
        }
        _ => {
            return Err(bad(
                "request is not a CloudEvent: expected Content-Type application/cloudevents+json \
                 (structured mode) or a ce-specversion header (binary mode)",
            ));
        }
    };

    match required_ce_attribute(&attributes, "specversion", binary)? {
        "1.0" => {}
        other => {
            return Err(bad(format!(
                "unsupported CloudEvents specversion {:?}; only \"1.0\" is supported",
                clip(other, 32)
            )));
        }
    }
    required_ce_attribute(&attributes, "id", binary)?;
    let source = required_ce_attribute(&attributes, "source", binary)?;
    let ce_type = required_ce_attribute(&attributes, "type", binary)?;
    check_label_value("CloudEvents attribute `source`", source)?;
    check_label_value("CloudEvents attribute `type`", ce_type)?;

    let mut event = GatewayEvent::new(CLOUDEVENTS_SOURCE, CLOUDEVENT_TYPE, payload);
    event
        .qualifiers
        .insert("source".to_owned(), source.to_owned());
    event
        .qualifiers
        .insert("type".to_owned(), ce_type.to_owned());
    Ok(event)
}

fn required_ce_attribute<'a>(
    attributes: &'a Map<String, Value>,
    name: &str,
    binary: bool,
) -> Result<&'a str, GatewayError> {
    let hint = if binary {
        format!(" (ce-{name} header)")
    } else {
        String::new()
    };
    match attributes.get(name) {
        Some(Value::String(value)) if !value.is_empty() => Ok(value),
        None | Some(Value::Null) | Some(Value::String(_)) => Err(bad(format!(
            "missing required CloudEvents attribute `{name}`{hint}"
        ))),
        Some(_) => Err(bad(format!(
            "CloudEvents attribute `{name}`{hint} must be a string"
        ))),
    }
}

/// Builds the structured form of a binary-mode CloudEvent.
fn binary_mode_event(headers: &HeaderMap, body: &[u8]) -> Result<Map<String, Value>, GatewayError> {
    let mut event = Map::new();
    for (name, value) in headers {
        let Some(attribute) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        if attribute.is_empty() || !attribute.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(bad(format!(
                "header {name} does not name a CloudEvents attribute (lowercase letters and digits only)"
            )));
        }
        if attribute == "data" || attribute == "datacontenttype" {
            return Err(bad(format!(
                "header {name} is not allowed in binary mode: the body carries data and Content-Type its type"
            )));
        }
        if event.contains_key(attribute) {
            return Err(bad(format!("header {name} is repeated")));
        }
        let decoded = value
            .to_str()
            .ok()
            .and_then(|v| percent_decode(v, false))
            .ok_or_else(|| bad(format!("header {name} is not valid percent-encoded UTF-8")))?;
        event.insert(attribute.to_owned(), Value::String(decoded));
    }

    let content_type = match headers.get(CONTENT_TYPE) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| bad("Content-Type header is not visible ASCII"))?
                .trim()
                .to_owned(),
        ),
    };
    let json_data = media_type(headers).is_some_and(|m| is_json_media_type(&m));
    if let Some(content_type) = content_type.filter(|c| !c.is_empty()) {
        event.insert("datacontenttype".to_owned(), Value::String(content_type));
    }
    if !body.is_empty() {
        if json_data {
            let data: Value = serde_json::from_slice(body).map_err(|e| {
                bad(format!(
                    "request body is not valid JSON although Content-Type says it is: {e}"
                ))
            })?;
            event.insert("data".to_owned(), data);
        } else {
            match std::str::from_utf8(body) {
                Ok(text) => event.insert("data".to_owned(), Value::String(text.to_owned())),
                Err(_) => {
                    event.insert("data_base64".to_owned(), Value::String(base64_encode(body)))
                }
            };
        }
    }
    Ok(event)
}

/// Lowercased media type of `Content-Type`, without parameters.
fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(CONTENT_TYPE)?.to_str().ok()?;
    let media = value.split(';').next().unwrap_or_default().trim();
    (!media.is_empty()).then(|| media.to_ascii_lowercase())
}

fn is_json_media_type(media: &str) -> bool {
    media == "application/json" || media == "text/json" || media.ends_with("+json")
}

/// Standard base64 with padding (RFC 4648 §4), as CloudEvents' JSON format
/// wants `data_base64`.
fn base64_encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateways::testing::{expect_bad, headers};
    use std::collections::BTreeMap;

    const CE_STRUCTURED: &str = r#"{
        "specversion": "1.0",
        "type": "com.github.pull_request.opened",
        "source": "https://github.com/cloudevents/spec/pull",
        "subject": "123",
        "id": "A234-1234-1234",
        "time": "2018-04-05T17:31:00Z",
        "comexampleextension1": "value",
        "datacontenttype": "application/json",
        "data": {"appinfoA": "abc", "appinfoB": 123}
    }"#;

    #[test]
    fn cloudevent_structured_mode() {
        let h = headers(&[(
            "content-type",
            "application/cloudevents+json; charset=utf-8",
        )]);
        let event = cloudevent(&h, CE_STRUCTURED.as_bytes()).expect("accepted");
        assert_eq!(event.source, "brigade.sh/cloudevents");
        assert_eq!(event.event_type, "cloudevent");
        assert_eq!(
            event.qualifiers,
            BTreeMap::from([
                (
                    "source".to_owned(),
                    "https://github.com/cloudevents/spec/pull".to_owned()
                ),
                (
                    "type".to_owned(),
                    "com.github.pull_request.opened".to_owned()
                ),
            ])
        );
        assert_eq!(event.payload, CE_STRUCTURED);
    }

    #[test]
    fn cloudevent_binary_mode_with_json_data() {
        let h = headers(&[
            ("ce-specversion", "1.0"),
            ("ce-type", "com.example.someevent"),
            ("ce-source", "/mycontext/subcontext"),
            ("ce-id", "1234-1234-1234"),
            ("ce-time", "2018-04-05T03:56:24Z"),
            ("ce-subject", "caf%C3%A9%20order"),
            ("content-type", "application/json; charset=utf-8"),
        ]);
        let body = br#"{"orderId": 42, "items": ["tea"]}"#;
        let event = cloudevent(&h, body).expect("accepted");
        assert_eq!(event.qualifiers["source"], "/mycontext/subcontext");
        assert_eq!(event.qualifiers["type"], "com.example.someevent");
        let payload: Value = serde_json::from_str(&event.payload).expect("payload is JSON");
        assert_eq!(payload["specversion"], "1.0");
        assert_eq!(payload["id"], "1234-1234-1234");
        assert_eq!(payload["time"], "2018-04-05T03:56:24Z");
        assert_eq!(payload["subject"], "café order");
        assert_eq!(
            payload["datacontenttype"],
            "application/json; charset=utf-8"
        );
        assert_eq!(payload["data"]["orderId"], 42);
        assert_eq!(payload["data"]["items"][0], "tea");
    }

    #[test]
    fn cloudevent_binary_mode_text_and_binary_data() {
        let base = [
            ("ce-specversion", "1.0"),
            ("ce-type", "com.example.text"),
            ("ce-source", "urn:example:sensor"),
            ("ce-id", "7"),
        ];
        let mut text = base.to_vec();
        text.push(("content-type", "text/plain"));
        let event = cloudevent(&headers(&text), b"hello world").expect("accepted");
        let payload: Value = serde_json::from_str(&event.payload).expect("JSON");
        assert_eq!(payload["data"], "hello world");
        assert_eq!(payload["datacontenttype"], "text/plain");

        let mut octets = base.to_vec();
        octets.push(("content-type", "application/octet-stream"));
        let event = cloudevent(&headers(&octets), &[0x66, 0x6f, 0xff]).expect("accepted");
        let payload: Value = serde_json::from_str(&event.payload).expect("JSON");
        assert_eq!(payload["data_base64"], "Zm//");
        assert!(payload.get("data").is_none());

        let event = cloudevent(&headers(&base), b"").expect("accepted");
        let payload: Value = serde_json::from_str(&event.payload).expect("JSON");
        assert!(payload.get("data").is_none());
        assert_eq!(payload["source"], "urn:example:sensor");
    }

    #[test]
    fn cloudevent_plain_json_is_not_a_cloudevent() {
        let h = headers(&[("content-type", "application/json")]);
        let msg = expect_bad(cloudevent(&h, br#"{"hello": "world"}"#));
        assert!(msg.contains("not a CloudEvent"), "{msg}");
    }

    #[test]
    fn cloudevent_missing_source_is_named() {
        let h = headers(&[("content-type", "application/cloudevents+json")]);
        let body = r#"{"specversion": "1.0", "id": "1", "type": "t.x"}"#;
        let msg = expect_bad(cloudevent(&h, body.as_bytes()));
        assert!(msg.contains("attribute `source`"), "{msg}");

        let h = headers(&[
            ("ce-specversion", "1.0"),
            ("ce-id", "1"),
            ("ce-type", "t.x"),
        ]);
        let msg = expect_bad(cloudevent(&h, b""));
        assert!(msg.contains("`source` (ce-source header)"), "{msg}");
    }

    #[test]
    fn cloudevent_wrong_specversion() {
        let h = headers(&[("content-type", "application/cloudevents+json")]);
        let body = r#"{"specversion": "0.3", "id": "1", "source": "/s", "type": "t"}"#;
        let msg = expect_bad(cloudevent(&h, body.as_bytes()));
        assert!(msg.contains("specversion \"0.3\""), "{msg}");
        assert!(msg.contains("1.0"), "{msg}");
    }

    #[test]
    fn cloudevent_other_failures() {
        let h = headers(&[("content-type", "application/cloudevents-batch+json")]);
        let msg = expect_bad(cloudevent(&h, b"[]"));
        assert!(msg.contains("batch"), "{msg}");

        let h = headers(&[("content-type", "application/cloudevents+json")]);
        let body = r#"{"specversion": "1.0", "id": "1", "source": "mailto:a@b.c", "type": "t"}"#;
        let msg = expect_bad(cloudevent(&h, body.as_bytes()));
        assert!(
            msg.contains("attribute `source`") && msg.contains("'@'"),
            "{msg}"
        );

        let h = headers(&[
            ("ce-specversion", "1.0"),
            ("ce-id", "1"),
            ("ce-source", "/s"),
            ("ce-type", "t"),
            ("content-type", "application/json"),
        ]);
        let msg = expect_bad(cloudevent(&h, b"{not json"));
        assert!(msg.contains("not valid JSON"), "{msg}");
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (input, output) in vectors {
            assert_eq!(base64_encode(input.as_bytes()), output);
        }
    }
}
