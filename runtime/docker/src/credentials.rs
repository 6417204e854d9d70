//! Registry credentials for the local engine's pulls.
//!
//! An engine's API pulls with whatever credentials its client sends in the
//! request: the Docker and Podman CLIs read the user's credentials and send
//! them, the API itself reads none. So Mizzen does what those CLIs do, for
//! the registry of the image it pulls, looking in this order:
//!
//! 1. the project's pull secrets: each project secret named in
//!    `spec.workerTemplate.kubernetes.imagePullSecrets`, holding a Docker
//!    config JSON (`{"auths": {...}}`, a Kubernetes pull secret's
//!    `.dockerconfigjson`), so a project brings its own credentials on the
//!    local engine as on Kubernetes;
//! 2. the host's files, as Podman and Docker read them: `$REGISTRY_AUTH_FILE`
//!    (else Podman's `$XDG_RUNTIME_DIR/containers/auth.json`, or
//!    `/run/containers/UID/auth.json` without a runtime directory), `$XDG_CONFIG_HOME/containers/auth.json`,
//!    then Docker's `$DOCKER_CONFIG/config.json` (else
//!    `~/.docker/config.json`), with their credential helpers (`credHelpers`,
//!    `credsStore`).
//!
//! The first source with an entry for the registry wins; with none, the pull
//! goes without credentials. A project's secret may not name a credential
//! helper: that would make the host run a program a tenant chose.

use std::path::PathBuf;
use std::time::Duration;

use bollard::auth::DockerCredentials;
use docker_credential::{CredentialRetrievalError, DockerCredential};
use mizzen_runtime::executor::PullSecret;

/// How long a lookup may take, credential helpers included: a helper
/// waiting on a keyring prompt nobody will answer must not hold the job
/// forever. Long enough for a helper that fetches a token over the network
/// (ECR's, GCR's).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Credentials for one pull, and where they came from.
pub(crate) struct Credentials {
    /// What the engine is sent.
    pub credentials: Option<DockerCredentials>,
    /// Where they came from, or where none was found, for the pull's error.
    pub provenance: String,
}

/// Why the credentials for a pull could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CredentialError {
    /// A project secret named in imagePullSecrets is not a Docker config.
    #[error(
        "project secret {name:?} (named in spec.workerTemplate.kubernetes.imagePullSecrets) {reason}"
    )]
    Secret {
        /// The secret's name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A credentials file of the host could not be used.
    #[error("{file}: {reason}", file = file.display())]
    File {
        /// The file.
        file: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The lookup outlasted [`LOOKUP_TIMEOUT`] (a credential helper that
    /// does not answer).
    #[error(
        "reading the credentials for {registry} took longer than {}s (a credential helper that does not answer?)",
        LOOKUP_TIMEOUT.as_secs()
    )]
    Timeout {
        /// The registry.
        registry: String,
    },
}

/// The registry an image is pulled from: its first component when that
/// names a host (a dot, a port or `localhost`), else Docker Hub, as the
/// engines read a reference.
pub(crate) fn registry_of(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first,
        _ => "docker.io",
    }
}

/// The credentials for pulling `image`, from the project's pull secrets or
/// the host's files.
pub(crate) async fn for_image(
    image: &str,
    pull_secrets: &[PullSecret],
) -> Result<Credentials, CredentialError> {
    let registry = registry_of(image).to_string();
    let secrets = pull_secrets.to_vec();
    let lookup = {
        let registry = registry.clone();
        tokio::task::spawn_blocking(move || lookup(&registry, &secrets))
    };
    match tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await {
        Ok(Ok(found)) => found,
        // The lookup panicked: a bug, not the user's; pull without.
        Ok(Err(_)) => Ok(Credentials {
            credentials: None,
            provenance: format!("no credentials for {registry}: their lookup failed"),
        }),
        Err(_) => Err(CredentialError::Timeout { registry }),
    }
}

fn lookup(registry: &str, pull_secrets: &[PullSecret]) -> Result<Credentials, CredentialError> {
    // Docker's own files and helpers know Docker Hub by its v1 address.
    let server = if registry == "docker.io" {
        "https://index.docker.io/v1/"
    } else {
        registry
    };
    let mut searched = Vec::new();
    for secret in pull_secrets {
        let Some(value) = &secret.value else {
            searched.push(format!(
                "imagePullSecrets {:?} (no such project secret)",
                secret.name
            ));
            continue;
        };
        let refuse = |reason: String| CredentialError::Secret {
            name: secret.name.clone(),
            reason,
        };
        let config = parse(value.as_bytes()).map_err(refuse)?;
        if let Some(key) = ["credsStore", "credHelpers"]
            .into_iter()
            .find(|key| config.contains_key(*key))
        {
            return Err(refuse(format!(
                "names a credential helper ({key}): a project's secret may not make the host run a program"
            )));
        }
        match credential(value.as_bytes(), server, &config, registry).map_err(refuse)? {
            Some(credentials) => {
                return Ok(found(
                    credentials,
                    registry,
                    format!("project secret {:?}", secret.name),
                ));
            }
            None => searched.push(format!("project secret {:?}", secret.name)),
        }
    }
    for file in host_files() {
        let bytes = match std::fs::read(&file) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => {
                return Err(CredentialError::File {
                    file,
                    reason: error.to_string(),
                });
            }
        };
        let refuse = |reason: String| CredentialError::File {
            file: file.clone(),
            reason,
        };
        let config = parse(&bytes).map_err(refuse)?;
        match credential(&bytes, server, &config, registry).map_err(refuse)? {
            Some(credentials) => {
                return Ok(found(credentials, registry, file.display().to_string()));
            }
            None => searched.push(file.display().to_string()),
        }
    }
    let provenance = if searched.is_empty() {
        format!("no credentials for {registry}: no project pull secret, no credentials file")
    } else {
        format!("no credentials for {registry} in {}", searched.join(", "))
    };
    Ok(Credentials {
        credentials: None,
        provenance,
    })
}

/// Checks that a config is a JSON object, naming the line and column where
/// it is not (the crate that reads it says only that it could not).
fn parse(bytes: &[u8]) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err(
            r#"is not a Docker config JSON: expected an object such as {"auths": {...}}"#.into(),
        ),
        Err(error) => Err(format!("is not a Docker config JSON: {error}")),
    }
}

/// The config's credential for `server`, `None` when it has no entry.
fn credential(
    bytes: &[u8],
    server: &str,
    config: &serde_json::Map<String, serde_json::Value>,
    registry: &str,
) -> Result<Option<DockerCredential>, String> {
    match docker_credential::get_credential_from_reader(bytes, server) {
        Ok(credential) => Ok(Some(credential)),
        Err(CredentialRetrievalError::NoCredentialConfigured) => Ok(None),
        Err(error) => Err(explain(error, config, registry)),
    }
}

/// The crate's error, in words naming the entry or helper involved. A
/// helper's output is not repeated: it may hold a secret.
fn explain(
    error: CredentialRetrievalError,
    config: &serde_json::Map<String, serde_json::Value>,
    registry: &str,
) -> String {
    let helper = config
        .get("credHelpers")
        .and_then(|helpers| helpers.get(registry))
        .or_else(|| config.get("credsStore"))
        .and_then(|name| name.as_str())
        .map_or_else(
            || "credential helper".to_string(),
            |name| format!("docker-credential-{name}"),
        );
    match error {
        CredentialRetrievalError::HelperCommunicationError => {
            format!("{helper} could not be run (is it on the PATH?)")
        }
        CredentialRetrievalError::MalformedHelperResponse => {
            format!("{helper} answered with something other than {{\"Username\", \"Secret\"}}")
        }
        CredentialRetrievalError::HelperFailure { stderr, .. } => {
            let stderr = stderr.trim();
            let first = stderr
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(200)
                .collect::<String>();
            format!("{helper} failed: {first}")
        }
        CredentialRetrievalError::CredentialDecodingError => {
            format!("the \"auth\" of {registry} is not base64 of USER:PASSWORD")
        }
        CredentialRetrievalError::CredentialMismatchError => {
            format!("the \"auth\" of {registry} does not match its \"username\" and \"password\"")
        }
        CredentialRetrievalError::ConfigNotFound | CredentialRetrievalError::ConfigReadError => {
            "is not a Docker config JSON".into()
        }
        CredentialRetrievalError::NoCredentialConfigured => {
            format!("has no credentials for {registry}")
        }
    }
}

fn found(credential: DockerCredential, registry: &str, from: String) -> Credentials {
    let credentials = match credential {
        DockerCredential::UsernamePassword(username, password) => DockerCredentials {
            username: Some(username),
            password: Some(password),
            serveraddress: Some(registry.to_string()),
            ..Default::default()
        },
        DockerCredential::IdentityToken(token) => DockerCredentials {
            identitytoken: Some(token),
            serveraddress: Some(registry.to_string()),
            ..Default::default()
        },
    };
    Credentials {
        credentials: Some(credentials),
        provenance: format!("with the credentials for {registry} from {from}"),
    }
}

/// The host's credentials files, in the order Podman and Docker read them.
fn host_files() -> Vec<PathBuf> {
    let env = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let home = env("HOME");
    let mut files = Vec::new();
    if let Some(file) = env("REGISTRY_AUTH_FILE") {
        files.push(file);
    } else if let Some(run) = env("XDG_RUNTIME_DIR") {
        files.push(run.join("containers/auth.json"));
    } else {
        // Where Podman keeps a login without a runtime directory (root's).
        let uid = rustix::process::geteuid().as_raw();
        files.push(PathBuf::from(format!("/run/containers/{uid}/auth.json")));
    }
    if let Some(config) =
        env("XDG_CONFIG_HOME").or_else(|| home.as_ref().map(|h| h.join(".config")))
    {
        files.push(config.join("containers/auth.json"));
    }
    if let Some(docker) = env("DOCKER_CONFIG").or_else(|| home.as_ref().map(|h| h.join(".docker")))
    {
        files.push(docker.join("config.json"));
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries_are_read_as_the_engines_read_references() {
        assert_eq!(registry_of("debian"), "docker.io");
        assert_eq!(registry_of("library/debian:12"), "docker.io");
        assert_eq!(registry_of("ghcr.io/org/app:v1"), "ghcr.io");
        assert_eq!(registry_of("127.0.0.1:5000/private/app"), "127.0.0.1:5000");
        assert_eq!(registry_of("localhost/busybox"), "localhost");
    }

    fn secret(value: &str) -> PullSecret {
        PullSecret {
            name: "regcred".into(),
            value: Some(value.into()),
        }
    }

    #[test]
    fn a_project_secret_gives_its_registrys_credentials() {
        // base64("robot:s3cret")
        let value = r#"{"auths": {"registry.example.com": {"auth": "cm9ib3Q6czNjcmV0"}}}"#;
        let found = lookup("registry.example.com", &[secret(value)]).unwrap();
        let credentials = found.credentials.unwrap();
        assert_eq!(credentials.username.as_deref(), Some("robot"));
        assert_eq!(credentials.password.as_deref(), Some("s3cret"));
        assert_eq!(
            found.provenance,
            "with the credentials for registry.example.com from project secret \"regcred\""
        );
        let other = lookup("other.example.com", &[secret(value)]).unwrap();
        assert!(other.credentials.is_none());
        assert!(
            other.provenance.contains("project secret \"regcred\""),
            "{}",
            other.provenance
        );
    }

    #[test]
    fn a_project_secret_may_not_run_a_helper_or_be_malformed() {
        for (value, expected) in [
            (
                r#"{"credsStore": "../../../bin/sh"}"#,
                "project secret \"regcred\" (named in spec.workerTemplate.kubernetes.imagePullSecrets) names a credential helper (credsStore)",
            ),
            (
                r#"{"credHelpers": {"registry.example.com": "x"}}"#,
                "names a credential helper (credHelpers)",
            ),
            (
                "{\"auths\": \n{",
                "is not a Docker config JSON: EOF while parsing an object at line 2 column 1",
            ),
            ("[]", "expected an object such as"),
            (
                r#"{"auths": {"registry.example.com": {"auth": "not base64!"}}}"#,
                "the \"auth\" of registry.example.com is not base64 of USER:PASSWORD",
            ),
        ] {
            let error = lookup("registry.example.com", &[secret(value)])
                .err()
                .unwrap_or_else(|| panic!("{value} was accepted"))
                .to_string();
            assert!(error.contains(expected), "{value}: {error}");
        }
    }

    #[test]
    fn a_missing_project_secret_is_said_when_nothing_is_found() {
        let missing = PullSecret {
            name: "regcred".into(),
            value: None,
        };
        let found = lookup("registry.example.com", &[missing]).unwrap();
        assert!(found.credentials.is_none());
        assert!(
            found
                .provenance
                .contains("imagePullSecrets \"regcred\" (no such project secret)"),
            "{}",
            found.provenance
        );
    }
}
