//! The client half of `mizzen`: brig's verbs against a Mizzen (or Brigade
//! v2) API server. `mizzen login` stores the server's address and a token
//! (see [`config`]); every other command reads them.
//!
//! Exit codes: 0 done; 1 the server refused the request, could not be
//! reached, or a followed worker did not succeed; 2 bad local input (flags,
//! files, no login); 3 `event create` made no event because the project does
//! not subscribe to it.

mod auth;
mod config;
mod event;
mod http;
mod kept;
mod print;
mod project;
mod sse;

use std::io::{BufRead, IsTerminal, Write};

use clap::Subcommand;

use crate::{EXIT_BAD_INPUT, EXIT_FAILED, Failure};

/// The commands that talk to a server.
#[derive(Subcommand)]
pub enum ClientCommand {
    /// Log in to a Mizzen server (stores its address and a token)
    Login(auth::LoginArgs),
    /// End the session and forget the stored login
    Logout,
    /// Show whom the stored token belongs to
    Whoami(print::OutputArg),
    /// Manage projects, their secrets and project roles
    #[command(subcommand, visible_alias = "projects")]
    Project(project::ProjectCommand),
    /// Create, list, follow, cancel and delete events
    #[command(subcommand, visible_alias = "events")]
    Event(event::EventCommand),
    /// Manage service accounts (tokens for gateways and automation)
    #[command(subcommand, visible_aliases = ["sa", "service-accounts"])]
    ServiceAccount(auth::ServiceAccountCommand),
    /// Grant, revoke and list system roles
    #[command(subcommand, visible_alias = "roles")]
    Role(auth::RoleCommand),
    /// Show the version and commit of this client and of the server it uses
    Version(print::OutputArg),
}

/// Runs a client command.
pub async fn run(command: ClientCommand) -> Result<(), Failure> {
    match command {
        ClientCommand::Login(args) => auth::login(args).await,
        ClientCommand::Logout => auth::logout().await,
        ClientCommand::Whoami(args) => auth::whoami(args).await,
        ClientCommand::Project(command) => project::run(command).await,
        ClientCommand::Event(command) => event::run(command).await,
        ClientCommand::ServiceAccount(command) => auth::service_account(command).await,
        ClientCommand::Role(command) => auth::role(command).await,
        ClientCommand::Version(args) => version(args).await,
    }
}

/// `mizzen version`: this client's version and commit, and those the server
/// it is logged in to gives (`GET /v2/ping`); a server that cannot be asked
/// is said to be so, and the command still succeeds.
async fn version(args: print::OutputArg) -> Result<(), Failure> {
    let client = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "commit": option_env!("MIZZEN_COMMIT").unwrap_or("unknown"),
    });
    let server = match http::Api::from_config() {
        Err(_) => serde_json::Value::Null,
        Ok(api) => match api.get(&["v2", "ping"]).send().await {
            Ok(ping) => serde_json::json!({
                "address": api.address(),
                "version": print::field(&ping, &["version"]),
                "commit": print::field(&ping, &["commit"]),
            }),
            Err(failure) => serde_json::json!({
                "address": api.address(),
                "error": format!("{:#}", failure.error),
            }),
        },
    };
    let versions = serde_json::json!({"client": client, "server": server});
    print::emit(args.output, &versions, |v| {
        let line = |v: &serde_json::Value| {
            format!(
                "{} (commit {})",
                print::field(v, &["version"]),
                print::field(v, &["commit"])
            )
        };
        let server = &v["server"];
        let server = if server.is_null() {
            "not logged in".to_string()
        } else if let Some(error) = server["error"].as_str() {
            format!(
                "{} did not answer: {error}",
                print::field(server, &["address"])
            )
        } else {
            format!("{} at {}", line(server), print::field(server, &["address"]))
        };
        format!("Client: {}\nServer: {server}", line(&v["client"]))
    })
}

/// A failure of the server, the network or a followed worker (exit 1).
fn failed(error: anyhow::Error) -> Failure {
    Failure {
        code: EXIT_FAILED,
        error,
    }
}

/// Bad local input: flags, files (exit 2).
fn bad_input(error: anyhow::Error) -> Failure {
    Failure {
        code: EXIT_BAD_INPUT,
        error,
    }
}

/// A remark on stderr, such as what was sent besides the file named.
fn note(message: impl std::fmt::Display) {
    let _ = writeln!(std::io::stderr(), "mizzen: {message}");
}

/// A line on stderr that does not stop the command.
fn warn(message: impl std::fmt::Display) {
    let _ = writeln!(std::io::stderr(), "mizzen: warning: {message}");
}

/// Asks `question` (y/N) when stdin is a terminal. Without one (a script, a
/// CI job) nothing is asked and nothing is done: `--yes` must say so, as
/// brig asked before destroying anything.
fn confirm(yes: bool, question: &str) -> Result<bool, Failure> {
    if yes {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        return Err(bad_input(anyhow::anyhow!(
            "{question} Not done: stdin is not a terminal to ask on; give --yes to confirm"
        )));
    }
    let mut stderr = std::io::stderr();
    let _ = write!(stderr, "{question} [y/N] ");
    let _ = stderr.flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| bad_input(anyhow::Error::new(e).context("cannot read the answer")))?;
    let yes = matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes");
    if !yes {
        let _ = writeln!(stderr, "Nothing was done.");
    }
    Ok(yes)
}

/// Reads a UTF-8 file of at most `limit` bytes; a missing or unreadable
/// file is bad input.
fn read_limited(path: &std::path::Path, limit: u64, what: &str) -> Result<String, Failure> {
    let read = || -> anyhow::Result<String> {
        let size = std::fs::metadata(path)?.len();
        if size > limit {
            anyhow::bail!("the file is {size} bytes; the limit is {limit} bytes");
        }
        Ok(std::fs::read_to_string(path)?)
    };
    read().map_err(|e| bad_input(e.context(format!("cannot read the {what} {}", path.display()))))
}
