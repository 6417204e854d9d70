//! Bitbucket Cloud's webhooks, as Brigade's Bitbucket gateway made them.
//! Bitbucket signs nothing Brigade's gateway checked, so a delivery is
//! trusted by where it comes from: an address on the operator's allow-list
//! (Bitbucket publishes its ranges), checked by the caller.

use axum::http::HeaderMap;
use serde_json::Value;

use super::{
    GatewayError, GatewayEvent, GitDetails, bad, check_label_value, header_str, lookup, opt_str,
    parse_json_object, req_str, truncate_title,
};

/// Event source of events produced by [`bitbucket_delivery`].
pub const BITBUCKET_SOURCE: &str = "brigade.sh/bitbucket";

/// Longest accepted `X-Request-UUID` (Bitbucket sends a 36-character UUID).
const MAX_REQUEST_ID_LEN: usize = 255;

/// Translates a Bitbucket delivery: type the `X-Event-Key` (`repo:push`,
/// `pullrequest:created`, `issue:comment_created`, ...), qualifier `repo`
/// (`repository.full_name`), the git commit and ref of a push's first
/// change or a pull request's source, titles, the body as the payload.
/// `X-Request-UUID` is the delivery's id.
pub(super) fn bitbucket_delivery(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(Option<String>, GatewayEvent), GatewayError> {
    let event_key = header_str(headers, "x-event-key")
        .ok_or_else(|| bad("missing or non-ASCII X-Event-Key header"))?;
    check_label_value("the X-Event-Key header", event_key)?;
    let id = header_str(headers, "x-request-uuid").map(str::to_owned);
    if id.as_ref().is_some_and(|id| id.len() > MAX_REQUEST_ID_LEN) {
        return Err(bad(format!(
            "X-Request-UUID header is longer than {MAX_REQUEST_ID_LEN} bytes"
        )));
    }
    let (payload, json) = parse_json_object(body)?;
    let mut event = GatewayEvent::new(BITBUCKET_SOURCE, event_key, payload);
    let full_name = req_str(&json, "repository.full_name")?;
    check_label_value("field `repository.full_name`", full_name)?;
    event.qualifiers.insert("repo".into(), full_name.to_owned());

    let s = |path: &str| opt_str(&json, path).unwrap_or_default().to_owned();
    if event_key == "repo:push" {
        // The first change's new head; a deleted branch or tag has none.
        let new = lookup(&json, "push.changes")
            .and_then(|changes| changes.get(0))
            .and_then(|change| change.get("new"))
            .filter(|new| !new.is_null());
        if let Some(new) = new {
            let name = opt_str(new, "name").unwrap_or_default();
            let (prefix, title) = match opt_str(new, "type") {
                Some("tag") => ("refs/tags/", "tag"),
                _ => ("refs/heads/", "branch"),
            };
            event.git = Some(GitDetails {
                clone_url: String::new(),
                commit: opt_str(new, "target.hash").unwrap_or_default().to_owned(),
                git_ref: format!("{prefix}{name}"),
            });
            event.short_title = truncate_title(format!("{title}: {name}"));
            event.long_title = event.short_title.clone();
        }
    } else if event_key.starts_with("pullrequest:") {
        let number = lookup(&json, "pullrequest.id")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad("missing or non-numeric field `pullrequest.id`"))?;
        event.git = Some(GitDetails {
            clone_url: String::new(),
            commit: s("pullrequest.source.commit.hash"),
            git_ref: format!("refs/heads/{}", s("pullrequest.source.branch.name")),
        });
        event.short_title = format!("PR #{number}");
        event.long_title = opt_str(&json, "pullrequest.title")
            .map(|title| format!("PR #{number}: {title}"))
            .unwrap_or_default();
    }
    Ok((id, event))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateways::testing::headers;

    /// A `repo:push` as Bitbucket Cloud's "Event payloads" page describes
    /// it: the repository entity, and `push.changes` with each change's
    /// `new` and `old` reference (type, name, target commit).
    const PUSH: &str = r#"{
        "actor": {"type": "user", "display_name": "Emma", "uuid": "{a54f16da-24e9-4d7f-a3a7-b1ba2cd98aa3}"},
        "repository": {"type": "repository", "name": "geordi", "full_name": "team_name/repo_name",
                       "uuid": "{673a6070-3421-46c9-9d48-90745f7bfe8e}",
                       "links": {"html": {"href": "https://bitbucket.org/team_name/repo_name"}},
                       "scm": "git", "is_private": true},
        "push": {"changes": [{
            "new": {"type": "branch", "name": "name-of-branch",
                    "target": {"type": "commit", "hash": "709d658dc5b6d6afcd46049c2f332ee3f515a67d",
                               "message": "new commit message\n", "date": "2015-06-09T03:34:49+00:00"}},
            "old": {"type": "branch", "name": "name-of-branch",
                    "target": {"type": "commit", "hash": "1e65c05c1d5171631d92438a13901ca7dae9618c"}},
            "created": false, "forced": false, "closed": false, "truncated": false
        }]}
    }"#;

    fn delivered(key: &str, body: &str) -> Result<(Option<String>, GatewayEvent), GatewayError> {
        bitbucket_delivery(
            &headers(&[
                ("x-event-key", key),
                ("x-request-uuid", "afe0b9ff-bb9a-4d4d-a3e7-7e8a6cc7a3e6"),
                ("x-hook-uuid", "cb3fa8a2-3c1e-4e3b-9b5d-2a6d7b0e0f3a"),
            ]),
            body.as_bytes(),
        )
    }

    #[test]
    fn a_push_names_its_repository_branch_and_commit() {
        let (id, event) = delivered("repo:push", PUSH).unwrap();
        assert_eq!(id.as_deref(), Some("afe0b9ff-bb9a-4d4d-a3e7-7e8a6cc7a3e6"));
        assert_eq!(event.source, "brigade.sh/bitbucket");
        assert_eq!(event.event_type, "repo:push");
        assert_eq!(event.qualifiers["repo"], "team_name/repo_name");
        let git = event.git.unwrap();
        assert_eq!(git.commit, "709d658dc5b6d6afcd46049c2f332ee3f515a67d");
        assert_eq!(git.git_ref, "refs/heads/name-of-branch");
        assert_eq!(event.short_title, "branch: name-of-branch");
        assert_eq!(event.payload, PUSH);

        let deleted = PUSH.replacen(
            r#""new": {"type": "branch""#,
            r#""gone": {"type": "branch""#,
            1,
        );
        let (_, event) = delivered("repo:push", &deleted).unwrap();
        assert_eq!(event.git, None);
    }

    #[test]
    fn a_pull_request_is_titled_and_checks_out_its_source() {
        let body = r#"{"repository": {"full_name": "team_name/repo_name"},
            "pullrequest": {"id": 42, "title": "Fix the flux", "state": "OPEN",
                "source": {"branch": {"name": "fix-flux"}, "commit": {"hash": "d3a4b1c2e5f6"},
                           "repository": {"full_name": "someone/repo_name"}},
                "destination": {"branch": {"name": "main"}}}}"#;
        let (_, event) = delivered("pullrequest:created", body).unwrap();
        assert_eq!(event.event_type, "pullrequest:created");
        assert_eq!(event.short_title, "PR #42");
        assert_eq!(event.long_title, "PR #42: Fix the flux");
        let git = event.git.unwrap();
        assert_eq!(
            (git.commit.as_str(), git.git_ref.as_str()),
            ("d3a4b1c2e5f6", "refs/heads/fix-flux")
        );
    }

    #[test]
    fn bad_deliveries_are_named() {
        for (key, body, why) in [
            ("", PUSH, "missing or non-ASCII X-Event-Key"),
            ("repo push", PUSH, "the X-Event-Key header contains ' '"),
            ("repo:push", "[]", "must be a JSON object"),
            (
                "repo:push",
                r#"{"push": {}}"#,
                "missing field `repository.full_name`",
            ),
            (
                "pullrequest:created",
                r#"{"repository": {"full_name": "a/b"}}"#,
                "`pullrequest.id`",
            ),
        ] {
            let error = delivered(key, body).unwrap_err();
            assert!(
                matches!(error, GatewayError::BadRequest(ref m) if m.contains(why)),
                "{key}: {error:?}"
            );
        }
    }
}
