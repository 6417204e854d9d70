//! Who is calling, and what they may do: Brigade v2's principals and roles.
//!
//! Tokens are random and only their SHA-256 is stored. Root signs in with the
//! password from `MIZZEN_ROOT_PASSWORD` and gets a session token; service
//! accounts carry a token made when they were created (or unlocked). Roles
//! are Brigade's: system roles `ADMIN`, `READER`, `PROJECT_CREATOR`,
//! `EVENT_CREATOR` (scoped to an event source), and project roles
//! `PROJECT_ADMIN`, `PROJECT_DEVELOPER`, `PROJECT_USER` (scoped to a project);
//! a scope of `*` matches every source or project. Unlike Brigade, a principal
//! without `READER` still sees the projects it holds a role in, and only
//! those: that is how a tenant sees its own events and nothing else.

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use sha2::{Digest, Sha256};

use crate::store::RoleAssignment;

/// Root's principal id, as Brigade's API reports it.
pub const ROOT_ID: &str = "root";

/// Bytes of randomness in a token: 256 bits, hex-encoded to 64 characters.
const TOKEN_BYTES: usize = 32;

/// The system roles (scope empty, or a source for EVENT_CREATOR).
pub const SYSTEM_ROLES: [&str; 4] = ["ADMIN", "EVENT_CREATOR", "PROJECT_CREATOR", "READER"];

/// The project roles (scope: a project, or `*`).
pub const PROJECT_ROLES: [&str; 3] = ["PROJECT_ADMIN", "PROJECT_DEVELOPER", "PROJECT_USER"];

/// The operating system gave no random bytes for a token. (getrandom's
/// error is a `std::error::Error` only with its `std` feature, which this
/// build does not enable; the error is kept here as it is.)
#[derive(Debug, thiserror::Error)]
#[error("no random bytes for a token: {0}")]
pub struct NoRandomness(getrandom::Error);

/// A new random token.
pub fn new_token() -> Result<String, NoRandomness> {
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut bytes).map_err(NoRandomness)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The stored form of a token.
pub fn hash_token(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The credentials an `Authorization` header value carries in `scheme`,
/// trimmed: the scheme is matched whatever its case (RFC 7235 §2.1) and is
/// followed by spaces or tabs. `None` for another scheme or no credentials.
pub fn credentials<'a>(value: &'a str, scheme: &str) -> Option<&'a str> {
    let (given, rest) = value.trim().split_once([' ', '\t'])?;
    let credentials = rest.trim();
    (given.eq_ignore_ascii_case(scheme) && !credentials.is_empty()).then_some(credentials)
}

/// The bearer token of a request (RFC 6750 §2.1): that of its first
/// `Authorization` header with the `Bearer` scheme, in any case. The API's
/// principals and the webhook gateways' tokens are both read here.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(AUTHORIZATION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find_map(|value| credentials(value, "Bearer"))
}

/// The kind of a principal, as Brigade names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrincipalKind {
    /// The root user: every role.
    Root,
    /// A service account (gateways, automation).
    ServiceAccount,
    /// A user.
    User,
}

impl PrincipalKind {
    /// `ROOT`, `SERVICE_ACCOUNT` or `USER`.
    pub fn as_str(&self) -> &'static str {
        match self {
            PrincipalKind::Root => "ROOT",
            PrincipalKind::ServiceAccount => "SERVICE_ACCOUNT",
            PrincipalKind::User => "USER",
        }
    }
}

/// An authenticated caller and its roles.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Root, a service account or a user.
    pub kind: PrincipalKind,
    /// Its id.
    pub id: String,
    /// Its role assignments (empty for root, who has them all).
    pub roles: Vec<RoleAssignment>,
}

impl Principal {
    /// The root principal.
    pub fn root() -> Self {
        Self {
            kind: PrincipalKind::Root,
            id: ROOT_ID.to_string(),
            roles: Vec::new(),
        }
    }

    /// Whether the principal holds `role` for `scope` (a scope of `*` in the
    /// assignment matches any).
    pub fn has(&self, role: &str, scope: &str) -> bool {
        self.kind == PrincipalKind::Root
            || self
                .roles
                .iter()
                .any(|r| r.role == role && (r.scope == scope || r.scope == "*"))
    }

    /// Whether the principal may read everything (READER or root).
    pub fn reads_everything(&self) -> bool {
        self.has("READER", "")
    }

    /// Whether the principal may see `project` and its events: READER, or any
    /// project role in it.
    pub fn sees_project(&self, project: &str) -> bool {
        self.reads_everything() || PROJECT_ROLES.iter().any(|role| self.has(role, project))
    }

    /// The projects the principal sees, `None` meaning all of them.
    pub fn visible_projects(&self) -> Option<Vec<String>> {
        if self.reads_everything()
            || self
                .roles
                .iter()
                .any(|r| PROJECT_ROLES.contains(&r.role.as_str()) && r.scope == "*")
        {
            return None;
        }
        let mut projects: Vec<String> = self
            .roles
            .iter()
            .filter(|r| PROJECT_ROLES.contains(&r.role.as_str()))
            .map(|r| r.scope.clone())
            .collect();
        projects.sort();
        projects.dedup();
        Some(projects)
    }

    /// A project role, or ADMIN (which Brigade's admins used to manage
    /// any project).
    pub fn has_project_role(&self, role: &str, project: &str) -> bool {
        self.has(role, project) || self.has("ADMIN", "")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(roles: &[(&str, &str)]) -> Principal {
        Principal {
            kind: PrincipalKind::ServiceAccount,
            id: "sa".into(),
            roles: roles
                .iter()
                .map(|(role, scope)| RoleAssignment {
                    role: role.to_string(),
                    principal_type: "SERVICE_ACCOUNT".into(),
                    principal_id: "sa".into(),
                    scope: scope.to_string(),
                })
                .collect(),
        }
    }

    #[test]
    fn roles_match_their_scope_or_a_wildcard() {
        let p = principal(&[
            ("EVENT_CREATOR", "brigade.sh/github"),
            ("PROJECT_USER", "*"),
        ]);
        assert!(p.has("EVENT_CREATOR", "brigade.sh/github"));
        assert!(!p.has("EVENT_CREATOR", "brigade.sh/cli"));
        assert!(p.has("PROJECT_USER", "anything"));
        assert!(!p.has("READER", ""));
        assert!(Principal::root().has("ADMIN", ""));
    }

    #[test]
    fn a_tenant_sees_only_its_projects() {
        let p = principal(&[("PROJECT_USER", "alpha"), ("PROJECT_ADMIN", "beta")]);
        assert!(p.sees_project("alpha"));
        assert!(!p.sees_project("gamma"));
        assert_eq!(
            p.visible_projects(),
            Some(vec!["alpha".to_string(), "beta".to_string()])
        );
        assert_eq!(principal(&[("READER", "")]).visible_projects(), None);
    }

    #[test]
    fn bearer_tokens_are_read_whatever_the_schemes_case() {
        let headers = |values: &[&str]| {
            let mut headers = HeaderMap::new();
            for value in values {
                headers.append(AUTHORIZATION, value.parse().unwrap());
            }
            headers
        };
        assert_eq!(bearer_token(&headers(&["Bearer abc"])), Some("abc"));
        assert_eq!(bearer_token(&headers(&["bearer \t abc "])), Some("abc"));
        assert_eq!(bearer_token(&headers(&["BEARER abc"])), Some("abc"));
        assert_eq!(
            bearer_token(&headers(&["Basic abc", "Bearer d"])),
            Some("d")
        );
        for refused in ["Bearer", "Bearer   ", "Bearerabc", "abc", "Basic abc"] {
            assert_eq!(bearer_token(&headers(&[refused])), None, "{refused}");
        }
        assert_eq!(credentials("basic dXNlcg==", "Basic"), Some("dXNlcg=="));
    }

    #[test]
    fn tokens_are_random_and_stored_hashed() {
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(hash_token(&a).len(), 64);
        assert_ne!(hash_token(&a), a);
        assert_eq!(hash_token(&a), hash_token(&a));
    }
}
