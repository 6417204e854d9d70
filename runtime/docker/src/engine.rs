//! Finding the container engine the way Docker's own tools do: `DOCKER_HOST`
//! when it is set; otherwise Docker's socket, then Podman's (rootful, then
//! rootless).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::{API_DEFAULT_VERSION, Docker};

/// How long an engine has to answer a ping before the next is tried: a local
/// engine answers in milliseconds; a remote one within a second or two.
const PING_TIMEOUT: Duration = Duration::from_secs(3);

/// Seconds bollard waits for any one request (pulls of large images stream,
/// so this bounds silence, not the transfer).
const REQUEST_TIMEOUT_SECONDS: u64 = 600;

/// A connected engine.
#[derive(Clone)]
pub struct Engine {
    /// The client.
    pub docker: Docker,
    /// Where it answered, e.g. `unix:///run/podman/podman.sock`.
    pub endpoint: String,
    /// The engine's socket when it is a local one (jobs may mount it under
    /// the project's policy).
    pub socket: Option<PathBuf>,
}

/// No engine answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "no container engine answered ({}); start Docker or Podman (podman system service), or set DOCKER_HOST",
    .tried.join("; ")
)]
pub struct EngineNotFound {
    /// Each place tried, with why it failed.
    pub tried: Vec<String>,
}

/// Why one place gave no engine; an entry of [`EngineNotFound::tried`].
#[derive(Debug, thiserror::Error)]
enum EndpointError {
    /// A `unix://` endpoint whose socket does not exist.
    #[error("no such socket")]
    NoSocket,
    /// An endpoint of another scheme.
    #[error("only unix:// and tcp:// endpoints are supported")]
    UnsupportedScheme,
    /// The client could not be set up for the endpoint.
    #[error(transparent)]
    Client(bollard::errors::Error),
    /// Nothing answered the ping within [`PING_TIMEOUT`].
    #[error("no answer within {}s", PING_TIMEOUT.as_secs())]
    NoAnswer,
    /// The ping, or the negotiation of the API version, failed. Only the
    /// error's first line is shown: hyper's chains repeat themselves.
    #[error("{}", first_line(&.0.to_string()))]
    Request(#[source] bollard::errors::Error),
}

/// Connects to the first engine that answers.
pub async fn connect() -> Result<Engine, EngineNotFound> {
    let mut tried = Vec::new();
    for endpoint in candidates() {
        match try_endpoint(&endpoint).await {
            Ok(engine) => return Ok(engine),
            Err(why) => tried.push(format!("{endpoint}: {why}")),
        }
    }
    Err(EngineNotFound { tried })
}

/// Where to look, in order.
fn candidates() -> Vec<String> {
    if let Ok(host) = std::env::var("DOCKER_HOST")
        && !host.is_empty()
    {
        return vec![host];
    }
    let mut candidates = vec![
        "unix:///var/run/docker.sock".to_string(),
        "unix:///run/podman/podman.sock".to_string(),
    ];
    if let Some(runtime) = std::env::var_os("XDG_RUNTIME_DIR") {
        let rootless = Path::new(&runtime).join("podman/podman.sock");
        candidates.push(format!("unix://{}", rootless.display()));
    }
    candidates
}

async fn try_endpoint(endpoint: &str) -> Result<Engine, EndpointError> {
    let (docker, socket) = if let Some(path) = endpoint.strip_prefix("unix://") {
        if !Path::new(path).exists() {
            return Err(EndpointError::NoSocket);
        }
        let docker = Docker::connect_with_unix(path, REQUEST_TIMEOUT_SECONDS, API_DEFAULT_VERSION)
            .map_err(EndpointError::Client)?;
        (docker, Some(PathBuf::from(path)))
    } else if endpoint.starts_with("tcp://") || endpoint.starts_with("http://") {
        let address = endpoint.replacen("tcp://", "http://", 1);
        let docker =
            Docker::connect_with_http(&address, REQUEST_TIMEOUT_SECONDS, API_DEFAULT_VERSION)
                .map_err(EndpointError::Client)?;
        (docker, None)
    } else {
        return Err(EndpointError::UnsupportedScheme);
    };
    match tokio::time::timeout(PING_TIMEOUT, docker.ping()).await {
        Err(_) => return Err(EndpointError::NoAnswer),
        Ok(Err(e)) => return Err(EndpointError::Request(e)),
        Ok(Ok(_)) => {}
    }
    // Speak the engine's API version (Podman 4 answers 1.41, Docker newer).
    let docker = docker
        .negotiate_version()
        .await
        .map_err(EndpointError::Request)?;
    Ok(Engine {
        docker,
        endpoint: endpoint.to_string(),
        socket,
    })
}

fn first_line(message: &str) -> &str {
    message.lines().next().unwrap_or(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reasons in `EngineNotFound`, as they were written when they were
    /// strings.
    #[test]
    fn endpoint_errors_read_as_before() {
        assert_eq!(EndpointError::NoSocket.to_string(), "no such socket");
        assert_eq!(
            EndpointError::UnsupportedScheme.to_string(),
            "only unix:// and tcp:// endpoints are supported"
        );
        assert_eq!(EndpointError::NoAnswer.to_string(), "no answer within 3s");
        let repeated = bollard::errors::Error::DockerResponseServerError {
            status_code: 502,
            message: "bad gateway\nbad gateway".into(),
        };
        assert_eq!(
            EndpointError::Request(repeated).to_string(),
            "Docker responded with status code 502: bad gateway"
        );
        let client = bollard::errors::Error::UnsupportedURISchemeError {
            uri: "ftp://host".into(),
        };
        assert_eq!(
            EndpointError::Client(client).to_string(),
            bollard::errors::Error::UnsupportedURISchemeError {
                uri: "ftp://host".into(),
            }
            .to_string()
        );
    }
}
