//! GitHub's webhooks: the delivery's signature, its event type, repository,
//! git target and titles, as Brigade's GitHub gateway made them.

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use super::{
    GatewayError, GatewayEvent, GitDetails, bad, check_label_value, header_str, lookup, opt_str,
    parse_json_object, req_str, truncate_title, unauthorized,
};

/// Event source of events produced by [`github`].
pub const GITHUB_SOURCE: &str = "brigade.sh/github";

/// GitHub events that may legitimately arrive without a `repository` object
/// (organisation-, app- or account-level events). Any other event without one
/// is rejected.
const REPOSITORY_OPTIONAL_EVENTS: &[&str] = &[
    "github_app_authorization",
    "installation",
    "installation_repositories",
    "installation_target",
    "marketplace_purchase",
    "membership",
    "meta",
    "org_block",
    "organization",
    "package",
    "personal_access_token_request",
    "project",
    "project_card",
    "project_column",
    "projects_v2",
    "projects_v2_item",
    "registry_package",
    "security_advisory",
    "sponsorship",
    "team",
];

/// Longest accepted `X-GitHub-Delivery` value (GitHub sends a 36-character GUID).
const MAX_DELIVERY_ID_LEN: usize = 255;

type HmacSha256 = Hmac<Sha256>;

/// Comments on a pull request that ask for its pipeline, as Brigade's
/// gateway read them (its "check suite forwarding": a pull request from a
/// fork gets no check suite of its own, so a trusted person asks for one).
const PIPELINE_COMMANDS: &[&str] = &["/brig run", "/brig check"];

/// Who may ask for a pull request's pipeline by comment: people with
/// write access to the repository, as GitHub reports them
/// (`comment.author_association`). A stranger's fork must not run a
/// pipeline that sees the project's secrets.
const TRUSTED_ASSOCIATIONS: &[&str] = &["OWNER", "MEMBER", "COLLABORATOR"];

/// A verified GitHub delivery: GitHub's delivery id plus the events it maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GithubDelivery {
    /// The `X-GitHub-Delivery` GUID; the caller can use it to drop redeliveries.
    pub delivery_id: String,
    /// The event to fan out, of type `<event>` or `<event>:<action>`.
    pub event: GatewayEvent,
    /// Brigade's CI/CD event for the same delivery, when it is one:
    /// `ci:pipeline_requested`, `ci:job_requested` or `cd:pipeline_requested`.
    pub synthetic: Option<GatewayEvent>,
}

/// Verifies and translates a GitHub webhook delivery.
///
/// Checks, in order: `X-Hub-Signature-256` (`sha256=<hex HMAC-SHA256 of the
/// raw body keyed with secret>`, compared in constant time; an empty secret
/// is refused), `X-GitHub-Delivery`, `X-GitHub-Event`, then the JSON body.
/// A `ping` yields [`GatewayError::Ignored`].
///
/// The event type is the `X-GitHub-Event` value, or `<event>:<action>` when
/// the body has a string `action`; a push that deletes a branch or tag is
/// `push:delete` and carries no git details (as in Brigade). Qualifier `repo`
/// is `repository.full_name`; label `appID` is set when the delivery comes
/// from a GitHub App (`X-GitHub-Hook-Installation-Target-Type`). Titles
/// follow Brigade's GitHub gateway: `PR #12` / `PR #12: <title>` for pull
/// request events, `branch: main` or `tag: v1.0` for pushes.
pub fn github(
    headers: &HeaderMap,
    body: &[u8],
    secret: &[u8],
) -> Result<GithubDelivery, GatewayError> {
    verify_github_signature(headers, body, secret)?;
    github_delivery(headers, body)
}

/// [`github`] after the signature: the delivery a verified request carries.
pub(super) fn github_delivery(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<GithubDelivery, GatewayError> {
    let delivery_id = header_str(headers, "x-github-delivery")
        .ok_or_else(|| bad("missing or non-ASCII X-GitHub-Delivery header"))?;
    if delivery_id.len() > MAX_DELIVERY_ID_LEN {
        return Err(bad(format!(
            "X-GitHub-Delivery header is longer than {MAX_DELIVERY_ID_LEN} bytes"
        )));
    }
    let event_name = header_str(headers, "x-github-event")
        .ok_or_else(|| bad("missing or non-ASCII X-GitHub-Event header"))?;
    if event_name == "ping" {
        return Err(GatewayError::Ignored(format!(
            "GitHub ping (delivery {delivery_id}) acknowledged; no event created"
        )));
    }

    let (payload, json) = parse_json_object(body).map_err(|e| match e {
        GatewayError::BadRequest(m) => bad(format!(
            "{m} (configure the GitHub webhook with content type application/json)"
        )),
        other => other,
    })?;

    let action = json
        .get("action")
        .and_then(Value::as_str)
        .filter(|a| !a.is_empty());
    let deleted_push =
        event_name == "push" && json.get("deleted").and_then(Value::as_bool) == Some(true);
    let event_type = match action {
        Some(action) => format!("{event_name}:{action}"),
        None if deleted_push => "push:delete".to_owned(),
        None => event_name.to_owned(),
    };
    check_label_value(
        "event type (X-GitHub-Event header and `action` field)",
        &event_type,
    )?;

    let mut event = GatewayEvent::new(GITHUB_SOURCE, &event_type, payload);

    if let Some(app_id) = github_app_id(headers)? {
        event.labels.insert("appID".to_owned(), app_id.to_owned());
    }

    let repository = lookup(&json, "repository");
    let clone_url = match repository {
        Some(_) => {
            let full_name = req_str(&json, "repository.full_name")?;
            check_label_value("field `repository.full_name`", full_name)?;
            event
                .qualifiers
                .insert("repo".to_owned(), full_name.to_owned());
            Some(opt_str(&json, "repository.clone_url").unwrap_or_default())
        }
        None if REPOSITORY_OPTIONAL_EVENTS.contains(&event_name) => None,
        None => {
            return Err(bad(format!(
                "missing field `repository.full_name` (required for `{event_name}` events)"
            )));
        }
    };

    let (commit, git_ref) = github_git_target(event_name, &json)?;
    event.git = match clone_url {
        Some(_) if deleted_push => None,
        Some(clone_url) => Some(GitDetails {
            clone_url: clone_url.to_owned(),
            commit,
            git_ref,
        }),
        None => None,
    };

    let (short_title, long_title) = github_titles(event_name, &json);
    event.short_title = truncate_title(short_title);
    event.long_title = long_title;

    let synthetic = synthetic_event(event_name, action, &json, &event)?;
    Ok(GithubDelivery {
        delivery_id: delivery_id.to_owned(),
        event,
        synthetic,
    })
}

/// Brigade's CI/CD events, made beside the plain one as Brigade's GitHub
/// gateway made them:
///
/// - `ci:pipeline_requested` when a check suite is requested or
///   re-requested, or when a trusted person comments `/brig run` or
///   `/brig check` on a pull request (its git ref `refs/pull/N/head`);
/// - `ci:job_requested` when a check run named `<project>:<job>` is
///   re-requested: for that project only, with label `job`;
/// - `cd:pipeline_requested` when a release is published, with label
///   `release` (its tag).
///
/// Each asks to be tracked (source state `tracking`, with the installation,
/// owner, repository and head commit) when the delivery comes from a GitHub
/// App installation, so its jobs can be reported back as check runs.
fn synthetic_event(
    event_name: &str,
    action: Option<&str>,
    json: &Value,
    plain: &GatewayEvent,
) -> Result<Option<GatewayEvent>, GatewayError> {
    let mut event = plain.clone();
    // A comment names its pull request, not the commit: the check runs'
    // reporter reads the head commit from GitHub.
    let mut pull_request = None;
    match (event_name, action) {
        ("check_suite", Some("requested" | "rerequested")) => {
            event.event_type = "ci:pipeline_requested".into();
            if let Some(number) = lookup(json, "check_suite.pull_requests")
                .and_then(|prs| prs.get(0))
                .and_then(|pr| pr.get("number"))
                .and_then(Value::as_u64)
            {
                event.short_title = format!("PR #{number}");
            } else if let Some(branch) = opt_str(json, "check_suite.head_branch") {
                event.short_title = truncate_title(format!("branch: {branch}"));
            }
        }
        ("check_run", Some("rerequested")) => {
            let name = req_str(json, "check_run.name")?;
            // A check run of another app, or of no project: nothing to run.
            let Some((project, job)) = name.split_once(':') else {
                return Ok(None);
            };
            if project.is_empty() || job.is_empty() {
                return Ok(None);
            }
            check_label_value("the job of check run `check_run.name`", job)?;
            event.event_type = "ci:job_requested".into();
            event.project_id = project.to_owned();
            event.labels.insert("job".into(), job.to_owned());
            event.short_title = truncate_title(format!("job: {job}"));
        }
        ("release", Some("published")) => {
            let tag = req_str(json, "release.tag_name")?;
            check_label_value("field `release.tag_name`", tag)?;
            event.event_type = "cd:pipeline_requested".into();
            event.labels.insert("release".into(), tag.to_owned());
            event.short_title = truncate_title(format!("release: {tag}"));
            event.long_title = opt_str(json, "release.name")
                .map(|name| format!("release: {tag}: {name}"))
                .unwrap_or_default();
        }
        ("issue_comment", Some("created")) => {
            let asks = opt_str(json, "comment.body")
                .and_then(|body| body.lines().next())
                .is_some_and(|line| PIPELINE_COMMANDS.contains(&line.trim()));
            let trusted = opt_str(json, "comment.author_association")
                .is_some_and(|who| TRUSTED_ASSOCIATIONS.contains(&who));
            let number = lookup(json, "issue.pull_request")
                .and(lookup(json, "issue.number"))
                .and_then(Value::as_u64);
            let (true, true, Some(number)) = (asks, trusted, number) else {
                return Ok(None);
            };
            event.event_type = "ci:pipeline_requested".into();
            pull_request = Some(number);
            if let Some(git) = &mut event.git {
                git.git_ref = format!("refs/pull/{number}/head");
            }
            event.short_title = format!("PR #{number}");
            event.long_title = opt_str(json, "issue.title")
                .map(|title| format!("PR #{number}: {title}"))
                .unwrap_or_default();
        }
        _ => return Ok(None),
    }
    if let Some(installation) = lookup(json, "installation.id").and_then(Value::as_u64) {
        let full_name = opt_str(json, "repository.full_name").unwrap_or_default();
        let (owner, repo) = full_name.split_once('/').unwrap_or(("", full_name));
        let head_sha = event
            .git
            .as_ref()
            .map(|g| g.commit.clone())
            .unwrap_or_default();
        event.source_state = [
            ("tracking", "true".to_owned()),
            ("installationID", installation.to_string()),
            ("owner", owner.to_owned()),
            ("repo", repo.to_owned()),
            ("headSHA", head_sha),
        ]
        .into_iter()
        .chain(pull_request.map(|n| ("pullRequest", n.to_string())))
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    }
    Ok(Some(event))
}

pub(super) fn verify_github_signature(
    headers: &HeaderMap,
    body: &[u8],
    secret: &[u8],
) -> Result<(), GatewayError> {
    if secret.is_empty() {
        return Err(unauthorized(
            "no GitHub webhook secret is configured, so X-Hub-Signature-256 cannot be verified",
        ));
    }
    let value = headers.get("x-hub-signature-256").ok_or_else(|| {
        unauthorized("missing X-Hub-Signature-256 header (set a secret on the GitHub webhook)")
    })?;
    let value = value
        .to_str()
        .map_err(|_| unauthorized("X-Hub-Signature-256 header is not visible ASCII"))?;
    let digest_hex = value.trim().strip_prefix("sha256=").ok_or_else(|| {
        unauthorized("X-Hub-Signature-256 header must have the form sha256=<hex digest>")
    })?;
    let tag = hex::decode(digest_hex)
        .map_err(|_| unauthorized("X-Hub-Signature-256 header digest is not valid hex"))?;
    if tag.len() != 32 {
        return Err(unauthorized(
            "X-Hub-Signature-256 header digest must be 64 hex characters",
        ));
    }
    let mut mac = <HmacSha256 as Mac>::new_from_slice(secret)
        .map_err(|_| unauthorized("the configured GitHub webhook secret is unusable"))?;
    mac.update(body);
    mac.verify_slice(&tag).map_err(|_| {
        unauthorized("X-Hub-Signature-256 does not match the request body and configured secret")
    })
}

/// The GitHub App id, when the webhook belongs to a GitHub App.
fn github_app_id(headers: &HeaderMap) -> Result<Option<&str>, GatewayError> {
    let target_type = header_str(headers, "x-github-hook-installation-target-type");
    if !matches!(target_type, Some("integration" | "app")) {
        return Ok(None);
    }
    match header_str(headers, "x-github-hook-installation-target-id") {
        None => Ok(None),
        Some(id) if !id.is_empty() && id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit()) => {
            Ok(Some(id))
        }
        Some(_) => Err(bad(
            "X-GitHub-Hook-Installation-Target-ID header must be a decimal GitHub App id",
        )),
    }
}

/// `(commit, ref)` for a GitHub event; empty strings when not applicable.
fn github_git_target(event_name: &str, json: &Value) -> Result<(String, String), GatewayError> {
    let s = |path: &str| opt_str(json, path).unwrap_or_default().to_owned();
    Ok(match event_name {
        "push" => (s("after"), s("ref")),
        "pull_request"
        | "pull_request_review"
        | "pull_request_review_comment"
        | "pull_request_review_thread" => {
            let number = pr_number(json)?;
            (
                s("pull_request.head.sha"),
                format!("refs/pull/{number}/head"),
            )
        }
        "check_suite" => (
            s("check_suite.head_sha"),
            qualify_ref("refs/heads/", opt_str(json, "check_suite.head_branch")),
        ),
        "check_run" => (
            opt_str(json, "check_run.head_sha")
                .or_else(|| opt_str(json, "check_run.check_suite.head_sha"))
                .unwrap_or_default()
                .to_owned(),
            qualify_ref(
                "refs/heads/",
                opt_str(json, "check_run.check_suite.head_branch"),
            ),
        ),
        "release" => (
            String::new(),
            qualify_ref("refs/tags/", opt_str(json, "release.tag_name")),
        ),
        "create" => {
            let prefix = match opt_str(json, "ref_type") {
                Some("tag") => "refs/tags/",
                Some("branch") => "refs/heads/",
                _ => "",
            };
            (String::new(), qualify_ref(prefix, opt_str(json, "ref")))
        }
        "status" => (s("sha"), String::new()),
        _ => (String::new(), String::new()),
    })
}

fn pr_number(json: &Value) -> Result<u64, GatewayError> {
    lookup(json, "pull_request.number")
        .and_then(Value::as_u64)
        .ok_or_else(|| bad("missing or non-numeric field `pull_request.number`"))
}

/// Prefixes a short ref name (`main`, `v1.0`) unless it is already fully qualified.
fn qualify_ref(prefix: &str, name: Option<&str>) -> String {
    match name {
        None => String::new(),
        Some(name) if name.starts_with("refs/") => name.to_owned(),
        Some(name) => format!("{prefix}{name}"),
    }
}

/// `(short, long)` titles, following Brigade's GitHub gateway.
fn github_titles(event_name: &str, json: &Value) -> (String, String) {
    match event_name {
        "pull_request"
        | "pull_request_review"
        | "pull_request_review_comment"
        | "pull_request_review_thread" => {
            let Some(number) = lookup(json, "pull_request.number").and_then(Value::as_u64) else {
                return (String::new(), String::new());
            };
            let short = format!("PR #{number}");
            let long = opt_str(json, "pull_request.title")
                .map(|title| format!("{short}: {title}"))
                .unwrap_or_default();
            (short, long)
        }
        "push" => {
            let git_ref = opt_str(json, "ref").unwrap_or_default();
            let title = if let Some(branch) = git_ref.strip_prefix("refs/heads/") {
                format!("branch: {branch}")
            } else if let Some(tag) = git_ref.strip_prefix("refs/tags/") {
                format!("tag: {tag}")
            } else {
                String::new()
            };
            (title.clone(), title)
        }
        _ => (String::new(), String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateways::testing::{expect_bad, expect_unauthorized, headers};
    use axum::http::{HeaderValue, StatusCode};
    use std::collections::BTreeMap;

    const SECRET: &[u8] = b"It's a Secret to Everybody";

    fn sign(secret: &[u8], body: &[u8]) -> String {
        let mut mac = <HmacSha256 as Mac>::new_from_slice(secret).expect("hmac key");
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    fn github_headers(event: &str, body: &[u8]) -> HeaderMap {
        headers(&[
            ("x-github-event", event),
            ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
            ("x-hub-signature-256", &sign(SECRET, body)),
            ("content-type", "application/json"),
        ])
    }

    fn deliver(event: &str, body: &str) -> Result<GithubDelivery, GatewayError> {
        github(
            &github_headers(event, body.as_bytes()),
            body.as_bytes(),
            SECRET,
        )
    }

    const REPO: &str = r#"{
        "id": 1296269, "name": "Hello-World", "full_name": "octocat/Hello-World",
        "private": false, "owner": {"login": "octocat", "id": 1},
        "html_url": "https://github.com/octocat/Hello-World",
        "clone_url": "https://github.com/octocat/Hello-World.git",
        "ssh_url": "git@github.com:octocat/Hello-World.git",
        "default_branch": "main"
    }"#;

    fn push_body(git_ref: &str, deleted: bool) -> String {
        format!(
            r#"{{
            "ref": "{git_ref}",
            "before": "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
            "after": "{after}",
            "created": false, "deleted": {deleted}, "forced": false,
            "base_ref": null,
            "compare": "https://github.com/octocat/Hello-World/compare/6113728f27ae...0000000000",
            "commits": [],
            "head_commit": null,
            "repository": {REPO},
            "pusher": {{"name": "octocat", "email": "octocat@github.com"}},
            "sender": {{"login": "octocat", "id": 1}}
        }}"#,
            after = if deleted {
                "0000000000000000000000000000000000000000"
            } else {
                "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c"
            },
        )
    }

    fn pr_body(number: u64, title: &str) -> String {
        format!(
            r#"{{
            "action": "opened",
            "number": {number},
            "pull_request": {{
                "url": "https://api.github.com/repos/octocat/Hello-World/pulls/{number}",
                "number": {number},
                "state": "open",
                "title": "{title}",
                "user": {{"login": "hubot"}},
                "author_association": "CONTRIBUTOR",
                "head": {{
                    "label": "hubot:fix-flux",
                    "ref": "fix-flux",
                    "sha": "e5bd3914e2e596debea16f433f57875b5b90bcd6",
                    "repo": {{"full_name": "hubot/Hello-World", "fork": true}}
                }},
                "base": {{
                    "label": "octocat:main",
                    "ref": "main",
                    "sha": "6dcb09b5b57875f334f61aebed695e2e4193db5e"
                }}
            }},
            "repository": {REPO},
            "sender": {{"login": "hubot"}}
        }}"#
        )
    }

    #[test]
    fn github_push_to_branch() {
        let body = push_body("refs/heads/main", false);
        let delivery = deliver("push", &body).expect("push accepted");
        assert_eq!(delivery.delivery_id, "72d3162e-cc78-11e3-81ab-4c9367dc0958");
        let event = delivery.event;
        assert_eq!(event.source, "brigade.sh/github");
        assert_eq!(event.event_type, "push");
        assert_eq!(
            event.qualifiers,
            BTreeMap::from([("repo".to_owned(), "octocat/Hello-World".to_owned())])
        );
        assert!(event.labels.is_empty());
        assert_eq!(
            event.git,
            Some(GitDetails {
                clone_url: "https://github.com/octocat/Hello-World.git".to_owned(),
                commit: "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c".to_owned(),
                git_ref: "refs/heads/main".to_owned(),
            })
        );
        assert_eq!(event.short_title, "branch: main");
        assert_eq!(event.long_title, "branch: main");
        assert_eq!(event.payload, body);
    }

    #[test]
    fn github_push_of_tag_is_titled_with_tag() {
        let event = deliver("push", &push_body("refs/tags/v1.2.3", false))
            .expect("push accepted")
            .event;
        assert_eq!(event.short_title, "tag: v1.2.3");
        assert_eq!(
            event.git.map(|g| g.git_ref).as_deref(),
            Some("refs/tags/v1.2.3")
        );
    }

    #[test]
    fn github_push_deleting_branch_is_push_delete_without_git() {
        let event = deliver("push", &push_body("refs/heads/old", true))
            .expect("push accepted")
            .event;
        assert_eq!(event.event_type, "push:delete");
        assert_eq!(event.git, None);
        assert_eq!(event.qualifiers["repo"], "octocat/Hello-World");
    }

    #[test]
    fn github_pull_request_opened() {
        let body = pr_body(12, "Fix the flux capacitor");
        let event = deliver("pull_request", &body).expect("pr accepted").event;
        assert_eq!(event.event_type, "pull_request:opened");
        assert_eq!(event.qualifiers["repo"], "octocat/Hello-World");
        let git = event.git.expect("git details");
        assert_eq!(git.commit, "e5bd3914e2e596debea16f433f57875b5b90bcd6");
        assert_eq!(git.git_ref, "refs/pull/12/head");
        assert_eq!(git.clone_url, "https://github.com/octocat/Hello-World.git");
        assert_eq!(event.short_title, "PR #12");
        assert_eq!(event.long_title, "PR #12: Fix the flux capacitor");
        assert_eq!(event.payload, body);
    }

    #[test]
    fn github_ping_is_ignored() {
        let body = r#"{"zen": "Keep it logically awesome.", "hook_id": 30,
            "hook": {"type": "Repository", "id": 30, "events": ["push"], "active": true},
            "repository": {"full_name": "octocat/Hello-World"}}"#;
        match deliver("ping", body) {
            Err(e @ GatewayError::Ignored(_)) => {
                assert!(e.message().contains("ping"), "{e}");
                assert_eq!(e.status(), StatusCode::OK);
            }
            other => panic!("expected Ignored, got {other:?}"),
        }
    }

    #[test]
    fn github_check_suite_requested() {
        let body = format!(
            r#"{{
            "action": "requested",
            "check_suite": {{
                "id": 118578147, "node_id": "MDEwOkNoZWNrU3VpdGUxMTg1NzgxNDc=",
                "head_branch": "changes",
                "head_sha": "ec26c3e57ca3a959ca5aad62de7213c562f8c821",
                "status": "queued", "conclusion": null,
                "before": "ebe1b2f5c4ee8e81c5b7b4bd1c3d4b2c9d3c8a4b",
                "after": "ec26c3e57ca3a959ca5aad62de7213c562f8c821",
                "pull_requests": [],
                "app": {{"id": 29310, "slug": "octoapp"}}
            }},
            "repository": {REPO},
            "installation": {{"id": 2311213}},
            "sender": {{"login": "octocat"}}
        }}"#
        );
        let mut h = github_headers("check_suite", body.as_bytes());
        h.insert(
            "x-github-hook-installation-target-type",
            HeaderValue::from_static("integration"),
        );
        h.insert(
            "x-github-hook-installation-target-id",
            HeaderValue::from_static("29310"),
        );
        let delivery = github(&h, body.as_bytes(), SECRET).expect("check_suite accepted");
        let synthetic = delivery
            .synthetic
            .expect("a ci:pipeline_requested beside it");
        assert_eq!(synthetic.event_type, "ci:pipeline_requested");
        assert_eq!(synthetic.qualifiers["repo"], "octocat/Hello-World");
        assert_eq!(synthetic.short_title, "branch: changes");
        assert_eq!(synthetic.project_id, "");
        assert_eq!(
            synthetic.source_state,
            BTreeMap::from(
                [
                    ("tracking", "true"),
                    ("installationID", "2311213"),
                    ("owner", "octocat"),
                    ("repo", "Hello-World"),
                    ("headSHA", "ec26c3e57ca3a959ca5aad62de7213c562f8c821"),
                ]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
            )
        );
        let event = delivery.event;
        assert_eq!(event.event_type, "check_suite:requested");
        assert_eq!(event.labels["appID"], "29310");
        let git = event.git.expect("git details");
        assert_eq!(git.commit, "ec26c3e57ca3a959ca5aad62de7213c562f8c821");
        assert_eq!(git.git_ref, "refs/heads/changes");
        assert_eq!(event.short_title, "");
    }

    #[test]
    fn github_check_run_rerequested_uses_head_sha_and_branch() {
        let body = format!(
            r#"{{
            "action": "rerequested",
            "check_run": {{
                "id": 128620228, "name": "my-project:test",
                "head_sha": "ec26c3e57ca3a959ca5aad62de7213c562f8c821",
                "check_suite": {{"id": 118578147, "head_branch": "changes",
                    "head_sha": "ec26c3e57ca3a959ca5aad62de7213c562f8c821"}}
            }},
            "repository": {REPO}
        }}"#
        );
        let delivery = deliver("check_run", &body).expect("accepted");
        let synthetic = delivery.synthetic.expect("a ci:job_requested beside it");
        assert_eq!(synthetic.event_type, "ci:job_requested");
        assert_eq!(synthetic.project_id, "my-project");
        assert_eq!(synthetic.labels["job"], "test");
        // Not from an App installation: nothing to report back to.
        assert!(synthetic.source_state.is_empty());
        let event = delivery.event;
        assert_eq!(event.event_type, "check_run:rerequested");
        let git = event.git.expect("git details");
        assert_eq!(git.commit, "ec26c3e57ca3a959ca5aad62de7213c562f8c821");
        assert_eq!(git.git_ref, "refs/heads/changes");
    }

    #[test]
    fn github_release_published_refs_tag() {
        let body = format!(
            r#"{{"action": "published",
                "release": {{"id": 1, "tag_name": "v1.0.0", "name": "v1.0.0",
                             "target_commitish": "main", "draft": false}},
                "repository": {REPO}}}"#
        );
        let delivery = deliver("release", &body).expect("accepted");
        let synthetic = delivery
            .synthetic
            .expect("a cd:pipeline_requested beside it");
        assert_eq!(synthetic.event_type, "cd:pipeline_requested");
        assert_eq!(synthetic.labels["release"], "v1.0.0");
        assert_eq!(synthetic.git.as_ref().unwrap().git_ref, "refs/tags/v1.0.0");
        let event = delivery.event;
        assert_eq!(event.event_type, "release:published");
        let git = event.git.expect("git details");
        assert_eq!(git.git_ref, "refs/tags/v1.0.0");
        assert_eq!(git.commit, "");
    }

    #[test]
    fn github_create_tag_and_branch() {
        let tag = format!(
            r#"{{"ref": "v2.0", "ref_type": "tag", "master_branch": "main", "repository": {REPO}}}"#
        );
        let event = deliver("create", &tag).expect("accepted").event;
        assert_eq!(event.event_type, "create");
        assert_eq!(
            event.git.map(|g| g.git_ref).as_deref(),
            Some("refs/tags/v2.0")
        );
        let branch = format!(
            r#"{{"ref": "feature", "ref_type": "branch", "master_branch": "main", "repository": {REPO}}}"#
        );
        let event = deliver("create", &branch).expect("accepted").event;
        assert_eq!(
            event.git.map(|g| g.git_ref).as_deref(),
            Some("refs/heads/feature")
        );
    }

    #[test]
    fn github_issue_comment_has_clone_url_but_no_commit() {
        let body = format!(
            r#"{{"action": "created",
                "issue": {{"number": 7, "title": "Bug"}},
                "comment": {{"id": 1, "body": "/brig run"}},
                "repository": {REPO}}}"#
        );
        let delivery = deliver("issue_comment", &body).expect("accepted");
        // On an issue, not a pull request, and from nobody known.
        assert_eq!(delivery.synthetic, None);
        let event = delivery.event;
        assert_eq!(event.event_type, "issue_comment:created");
        assert_eq!(
            event.git,
            Some(GitDetails {
                clone_url: "https://github.com/octocat/Hello-World.git".to_owned(),
                commit: String::new(),
                git_ref: String::new(),
            })
        );
    }

    #[test]
    fn github_installation_without_repository_has_no_qualifier() {
        let body = r#"{"action": "created",
            "installation": {"id": 1, "account": {"login": "octocat"}},
            "repositories": [{"id": 1296269, "full_name": "octocat/Hello-World"}],
            "sender": {"login": "octocat"}}"#;
        let event = deliver("installation", body).expect("accepted").event;
        assert_eq!(event.event_type, "installation:created");
        assert!(event.qualifiers.is_empty());
        assert_eq!(event.git, None);
    }

    #[test]
    fn github_rejects_signature_made_with_other_secret() {
        let body = push_body("refs/heads/main", false);
        let mut h = github_headers("push", body.as_bytes());
        h.insert(
            "x-hub-signature-256",
            HeaderValue::from_str(&sign(b"wrong secret", body.as_bytes())).expect("value"),
        );
        let msg = expect_unauthorized(github(&h, body.as_bytes(), SECRET));
        assert!(msg.contains("does not match"), "{msg}");
        assert!(!msg.contains("Secret to Everybody"), "{msg}");
    }

    #[test]
    fn github_rejects_missing_signature() {
        let body = push_body("refs/heads/main", false);
        let mut h = github_headers("push", body.as_bytes());
        h.remove("x-hub-signature-256");
        // A legacy SHA-1 signature alone is not accepted.
        h.insert(
            "x-hub-signature",
            HeaderValue::from_static("sha1=7d38cdd689735b008b3c702edd92eea23791c5f6"),
        );
        let err = github(&h, body.as_bytes(), SECRET).expect_err("must fail");
        assert_eq!(err.status(), StatusCode::UNAUTHORIZED);
        assert!(
            err.message().contains("missing X-Hub-Signature-256"),
            "{err}"
        );
    }

    #[test]
    fn github_rejects_signature_over_different_body() {
        let signed = push_body("refs/heads/main", false);
        let sent = push_body("refs/heads/evil", false);
        let h = github_headers("push", signed.as_bytes());
        let msg = expect_unauthorized(github(&h, sent.as_bytes(), SECRET));
        assert!(msg.contains("X-Hub-Signature-256 does not match"), "{msg}");
    }

    #[test]
    fn github_rejects_malformed_signatures() {
        let body = push_body("refs/heads/main", false);
        let cases = [
            (
                "sha256=zz26c3e57ca3a959ca5aad62de7213c562f8c821zz26c3e57ca3a959ca5a",
                "not valid hex",
            ),
            ("sha256=abcd", "64 hex characters"),
            (
                "sha1=7d38cdd689735b008b3c702edd92eea23791c5f6",
                "sha256=<hex digest>",
            ),
        ];
        for (value, expected) in cases {
            let mut h = github_headers("push", body.as_bytes());
            h.insert("x-hub-signature-256", HeaderValue::from_static(value));
            let msg = expect_unauthorized(github(&h, body.as_bytes(), SECRET));
            assert!(msg.contains(expected), "{value}: {msg}");
            assert!(msg.contains("X-Hub-Signature-256"), "{msg}");
        }
    }

    #[test]
    fn github_refuses_empty_secret() {
        let body = b"{}";
        let h = github_headers("push", body);
        let msg = expect_unauthorized(github(&h, body, b""));
        assert!(msg.contains("no GitHub webhook secret"), "{msg}");
    }

    #[test]
    fn github_requires_delivery_and_event_headers() {
        let body = push_body("refs/heads/main", false);
        let mut h = github_headers("push", body.as_bytes());
        h.remove("x-github-delivery");
        let msg = expect_bad(github(&h, body.as_bytes(), SECRET));
        assert!(msg.contains("X-GitHub-Delivery"), "{msg}");

        let mut h = github_headers("push", body.as_bytes());
        h.remove("x-github-event");
        let msg = expect_bad(github(&h, body.as_bytes(), SECRET));
        assert!(msg.contains("X-GitHub-Event"), "{msg}");
    }

    #[test]
    fn github_rejects_non_json_and_non_utf8_bodies() {
        let form = "payload=%7B%22ref%22%3A%22refs%2Fheads%2Fmain%22%7D";
        let msg = expect_bad(deliver("push", form));
        assert!(msg.contains("not valid JSON"), "{msg}");
        assert!(msg.contains("application/json"), "{msg}");

        let body: &[u8] = b"{\"ref\": \"\xff\"}";
        let msg = expect_bad(github(&github_headers("push", body), body, SECRET));
        assert!(msg.contains("UTF-8"), "{msg}");

        let msg = expect_bad(deliver("push", "[1, 2]"));
        assert!(msg.contains("JSON object"), "{msg}");
    }

    #[test]
    fn github_requires_repository_for_repository_events() {
        let body =
            r#"{"ref": "refs/heads/main", "after": "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c"}"#;
        let msg = expect_bad(deliver("push", body));
        assert!(msg.contains("`repository.full_name`"), "{msg}");

        let body = r#"{"ref": "refs/heads/main", "repository": {"name": "x"}}"#;
        let msg = expect_bad(deliver("push", body));
        assert!(
            msg.contains("missing field `repository.full_name`"),
            "{msg}"
        );
    }

    #[test]
    fn github_rejects_repo_name_outside_label_pattern() {
        let body = r#"{"ref": "refs/heads/main", "repository": {"full_name": "octocat/héllo"}}"#;
        let msg = expect_bad(deliver("push", body));
        assert!(msg.contains("`repository.full_name`"), "{msg}");
        assert!(msg.contains("'é'"), "{msg}");
    }

    #[test]
    fn github_pull_request_requires_number() {
        let body = format!(
            r#"{{"action": "opened", "pull_request": {{"title": "x"}}, "repository": {REPO}}}"#
        );
        let msg = expect_bad(deliver("pull_request", &body));
        assert!(msg.contains("`pull_request.number`"), "{msg}");
    }

    #[test]
    fn github_rejects_non_numeric_app_id() {
        let body = push_body("refs/heads/main", false);
        let mut h = github_headers("push", body.as_bytes());
        h.insert(
            "x-github-hook-installation-target-type",
            HeaderValue::from_static("integration"),
        );
        h.insert(
            "x-github-hook-installation-target-id",
            HeaderValue::from_static("12a"),
        );
        let msg = expect_bad(github(&h, body.as_bytes(), SECRET));
        assert!(
            msg.contains("X-GitHub-Hook-Installation-Target-ID"),
            "{msg}"
        );
    }

    fn pr_comment(body: &str, association: &str) -> String {
        format!(
            r#"{{"action": "created",
                "issue": {{"number": 12, "title": "Fix the flux",
                           "pull_request": {{"url": "https://api.github.com/repos/octocat/Hello-World/pulls/12"}}}},
                "comment": {{"id": 1, "body": {body:?}, "author_association": "{association}"}},
                "repository": {REPO}}}"#
        )
    }

    #[test]
    fn github_a_trusted_pull_request_comment_asks_for_the_pipeline() {
        let delivery =
            deliver("issue_comment", &pr_comment("/brig run\nplease", "MEMBER")).expect("accepted");
        let synthetic = delivery.synthetic.expect("a ci:pipeline_requested");
        assert_eq!(synthetic.event_type, "ci:pipeline_requested");
        assert_eq!(synthetic.git.unwrap().git_ref, "refs/pull/12/head");
        assert_eq!(synthetic.short_title, "PR #12");
        assert_eq!(synthetic.long_title, "PR #12: Fix the flux");
        for (body, association) in [
            ("/brig check", "FIRST_TIME_CONTRIBUTOR"),
            ("/brig check", "NONE"),
            ("please /brig run", "OWNER"),
            ("/brig deploy", "OWNER"),
        ] {
            let delivery =
                deliver("issue_comment", &pr_comment(body, association)).expect("accepted");
            assert_eq!(delivery.synthetic, None, "{body} by {association}");
        }
        let delivery =
            deliver("issue_comment", &pr_comment("/brig check", "OWNER")).expect("accepted");
        assert!(delivery.synthetic.is_some());
    }

    #[test]
    fn github_a_check_run_of_no_project_asks_for_nothing() {
        for name in ["lint", ":test", "project:", "other-app check"] {
            let body = format!(
                r#"{{"action": "rerequested",
                    "check_run": {{"id": 1, "name": "{name}", "head_sha": "ec26c3e57ca3a959ca5aad62de7213c562f8c821"}},
                    "repository": {REPO}}}"#
            );
            let delivery = deliver("check_run", &body).expect("accepted");
            assert_eq!(delivery.synthetic, None, "{name}");
        }
        let body = format!(
            r#"{{"action": "rerequested",
                "check_run": {{"id": 1, "name": "project:bad job"}},
                "repository": {REPO}}}"#
        );
        let message = expect_bad(deliver("check_run", &body));
        assert!(message.contains("the job of check run"), "{message}");
    }
}
