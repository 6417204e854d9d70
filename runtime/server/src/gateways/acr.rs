//! Azure Container Registry's webhooks: an image pushed or deleted.

use super::{
    GatewayError, GatewayEvent, bad, check_label_value, clip, opt_str, parse_json_object, req_str,
};

/// Event source of events produced by [`acr`].
pub const ACR_SOURCE: &str = "brigade.sh/acr";

/// Translates an Azure Container Registry webhook.
///
/// Source `brigade.sh/acr`, type = `action` (`push` or `delete`; `ping` yields
/// [`GatewayError::Ignored`]; any other action, e.g. `chart_push`, is a bad
/// request), qualifier `registry` = `request.host`, label `repo` =
/// `target.repository`, label `tag` = `target.tag` when present; payload =
/// the body unchanged. Authenticate the request with [`bearer_token`](super::bearer_token) and
/// [`token_matches`](super::token_matches).
pub fn acr(body: &[u8]) -> Result<GatewayEvent, GatewayError> {
    let (payload, json) = parse_json_object(body)?;
    let action = req_str(&json, "action")?;
    match action {
        "ping" => {
            return Err(GatewayError::Ignored(
                "ACR ping acknowledged; no event created".to_owned(),
            ));
        }
        "push" | "delete" => {}
        other => {
            return Err(bad(format!(
                "unsupported ACR action {:?} in field `action` (only push and delete create events)",
                clip(other, 64)
            )));
        }
    }
    let host = req_str(&json, "request.host")?;
    check_label_value("field `request.host`", host)?;
    let repository = req_str(&json, "target.repository")?;
    check_label_value("field `target.repository`", repository)?;

    let mut event = GatewayEvent::new(ACR_SOURCE, action, payload);
    event
        .qualifiers
        .insert("registry".to_owned(), host.to_owned());
    event
        .labels
        .insert("repo".to_owned(), repository.to_owned());
    if let Some(tag) = opt_str(&json, "target.tag") {
        check_label_value("field `target.tag`", tag)?;
        event.labels.insert("tag".to_owned(), tag.to_owned());
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateways::testing::expect_bad;
    use std::collections::BTreeMap;

    const ACR_PUSH: &str = r#"{
        "id": "cb8c3971-9adc-488b-bdd8-43cbb4974ff5",
        "timestamp": "2017-11-17T16:52:01.343145347Z",
        "action": "push",
        "target": {
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "size": 524,
            "digest": "sha256:80f0d5c8786bb9e621a45ece0db56d11cdc624ad20da9fe62e9d25490f331d7d",
            "length": 524,
            "repository": "hello-world",
            "tag": "v1"
        },
        "request": {
            "id": "3cbb6949-7549-4fa1-86cd-a6d5451dffc7",
            "host": "myregistry.azurecr.io",
            "method": "PUT",
            "useragent": "docker/17.09.0-ce go/go1.8.3 git-commit/afdb6d4 kernel/4.10.0-27-generic os/Linux arch/amd64"
        }
    }"#;

    #[test]
    fn acr_push() {
        let event = acr(ACR_PUSH.as_bytes()).expect("accepted");
        assert_eq!(event.source, "brigade.sh/acr");
        assert_eq!(event.event_type, "push");
        assert_eq!(
            event.qualifiers,
            BTreeMap::from([("registry".to_owned(), "myregistry.azurecr.io".to_owned())])
        );
        assert_eq!(event.labels["repo"], "hello-world");
        assert_eq!(event.labels["tag"], "v1");
        assert_eq!(event.payload, ACR_PUSH);
    }

    #[test]
    fn acr_delete_has_no_tag_label() {
        let body = r#"{
            "id": "afc359ce-df7f-4e32-bdde-1ff8aa80927b",
            "timestamp": "2017-11-17T16:54:53.657764628Z",
            "action": "delete",
            "target": {
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "digest": "sha256:80f0d5c8786bb9e621a45ece0db56d11cdc624ad20da9fe62e9d25490f331d7d",
                "repository": "hello-world"
            },
            "request": {"id": "3d78b0f7-5b19-4fc2-ab8c-fe0fe4a6e9c5",
                        "host": "myregistry.azurecr.io", "method": "DELETE",
                        "useragent": "python-requests/2.18.4"}
        }"#;
        let event = acr(body.as_bytes()).expect("accepted");
        assert_eq!(event.event_type, "delete");
        assert_eq!(
            event.labels,
            BTreeMap::from([("repo".to_owned(), "hello-world".to_owned())])
        );
    }

    #[test]
    fn acr_ping_is_ignored() {
        let body = r#"{"id": "0fbbbd5f-7b1d-4c04-91d5-1f9a9b0c1c4f",
            "timestamp": "2021-03-01T10:00:00Z", "action": "ping",
            "target": {}, "request": {"host": "myregistry.azurecr.io"}}"#;
        let err = acr(body.as_bytes()).expect_err("ping yields no event");
        assert!(matches!(err, GatewayError::Ignored(_)), "{err:?}");
        assert!(err.message().contains("ping"));
    }

    #[test]
    fn acr_failures_name_the_field_or_action() {
        let body = ACR_PUSH.replace("\"push\"", "\"chart_push\"");
        let msg = expect_bad(acr(body.as_bytes()));
        assert!(msg.contains("\"chart_push\""), "{msg}");
        assert!(msg.contains("`action`"), "{msg}");

        let msg = expect_bad(acr(br#"{"target": {"repository": "x"}}"#));
        assert!(msg.contains("missing field `action`"), "{msg}");

        let body = r#"{"action": "push", "target": {"repository": "hello-world"}, "request": {}}"#;
        let msg = expect_bad(acr(body.as_bytes()));
        assert!(msg.contains("`request.host`"), "{msg}");
    }
}
