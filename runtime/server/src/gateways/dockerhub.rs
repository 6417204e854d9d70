//! Docker Hub's repository webhooks: an image pushed.

use super::{GatewayError, GatewayEvent, bad, check_label_value, opt_str, parse_json_object};

/// Event source of events produced by [`dockerhub`].
pub const DOCKERHUB_SOURCE: &str = "brigade.sh/dockerhub";

/// Event type Brigade v1's container-registry gateway used for image pushes.
///
/// [`dockerhub`] and [`acr`](fn@super::acr) never produce it: they emit `push` as Brigade v2
/// does. For projects written against v1 (`events.on("image_push", ...)`),
/// the server additionally emits a copy of a registry `push` event with this
/// type to projects that subscribe to it; the payload is unchanged.
pub const LEGACY_PUSH_TYPE: &str = "image_push";

/// Translates a Docker Hub repository webhook.
///
/// Source `brigade.sh/dockerhub`, type `push`, qualifier `repo` =
/// `repository.repo_name` (or `namespace/name` when `repo_name` is absent),
/// label `tag` = `push_data.tag` when present; payload = the body unchanged.
/// Docker Hub does not sign its webhooks: authenticate the request with
/// [`bearer_token`](super::bearer_token) and [`token_matches`](super::token_matches) (the `access_token` query parameter).
/// See [`LEGACY_PUSH_TYPE`] for Brigade v1's `image_push`.
pub fn dockerhub(body: &[u8]) -> Result<GatewayEvent, GatewayError> {
    let (payload, json) = parse_json_object(body)?;
    let repo = match opt_str(&json, "repository.repo_name") {
        Some(repo) => repo.to_owned(),
        None => match (
            opt_str(&json, "repository.namespace"),
            opt_str(&json, "repository.name"),
        ) {
            (Some(namespace), Some(name)) => format!("{namespace}/{name}"),
            _ => return Err(bad("missing field `repository.repo_name`")),
        },
    };
    check_label_value("field `repository.repo_name`", &repo)?;

    let mut event = GatewayEvent::new(DOCKERHUB_SOURCE, "push", payload);
    event.qualifiers.insert("repo".to_owned(), repo);
    if let Some(tag) = opt_str(&json, "push_data.tag") {
        check_label_value("field `push_data.tag`", tag)?;
        event.labels.insert("tag".to_owned(), tag.to_owned());
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateways::GitDetails;
    use crate::gateways::testing::expect_bad;

    const DOCKERHUB_PUSH: &str = r#"{
        "callback_url": "https://registry.hub.docker.com/u/svendowideit/testhook/hook/2141b5bi5i5b02bec211i4eeih0242eg11000a/",
        "push_data": {"pushed_at": 1417566161, "pusher": "trustedbuilder", "tag": "latest"},
        "repository": {
            "comment_count": 0, "date_created": 1417494799, "description": "",
            "full_description": "Docker Hub based automated build from a GitHub repo",
            "is_official": false, "is_private": true, "is_trusted": true,
            "name": "testhook", "namespace": "svendowideit", "owner": "svendowideit",
            "repo_name": "svendowideit/testhook",
            "repo_url": "https://registry.hub.docker.com/u/svendowideit/testhook/",
            "star_count": 0, "status": "Active"
        }
    }"#;

    #[test]
    fn dockerhub_push() {
        let event = dockerhub(DOCKERHUB_PUSH.as_bytes()).expect("accepted");
        assert_eq!(event.source, "brigade.sh/dockerhub");
        assert_eq!(event.event_type, "push");
        assert_eq!(event.qualifiers["repo"], "svendowideit/testhook");
        assert_eq!(event.labels["tag"], "latest");
        assert_eq!(event.git, None);
        assert_eq!(event.payload, DOCKERHUB_PUSH);
        assert_eq!(LEGACY_PUSH_TYPE, "image_push");
    }

    #[test]
    fn dockerhub_falls_back_to_namespace_and_name_and_tag_is_optional() {
        let body = r#"{"push_data": {"pusher": "me"},
                       "repository": {"namespace": "library", "name": "redis"}}"#;
        let event = dockerhub(body.as_bytes()).expect("accepted");
        assert_eq!(event.qualifiers["repo"], "library/redis");
        assert!(event.labels.is_empty());
    }

    #[test]
    fn dockerhub_failures_name_the_field() {
        let msg = expect_bad(dockerhub(br#"{"push_data": {"tag": "latest"}}"#));
        assert!(msg.contains("`repository.repo_name`"), "{msg}");

        let body = r#"{"push_data": {"tag": "v1 beta"}, "repository": {"repo_name": "a/b"}}"#;
        let msg = expect_bad(dockerhub(body.as_bytes()));
        assert!(msg.contains("`push_data.tag`"), "{msg}");
        assert!(msg.contains("' '"), "{msg}");

        let msg = expect_bad(dockerhub(b"not json"));
        assert!(msg.contains("not valid JSON"), "{msg}");
    }

    #[test]
    fn gateway_event_serialises_with_brigade_names() {
        let event = dockerhub(DOCKERHUB_PUSH.as_bytes()).expect("accepted");
        let json = serde_json::to_value(&event).expect("serialise");
        assert_eq!(json["type"], "push");
        assert_eq!(json["shortTitle"], "");
        let git = GitDetails {
            clone_url: "u".into(),
            commit: "c".into(),
            git_ref: "r".into(),
        };
        let json = serde_json::to_value(&git).expect("serialise");
        assert_eq!(
            json,
            serde_json::json!({"cloneURL": "u", "commit": "c", "ref": "r"})
        );
    }
}
