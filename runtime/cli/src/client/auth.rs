//! Logging in and out, service accounts and system roles.

use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::{Value, json};

use super::config::{self, Config};
use super::http::{API_VERSION, Api};
use super::print::{self, OutputArg, Table, age_of, field, out};
use super::{Failure, bad_input, confirm, failed, warn};

/// `mizzen login`.
#[derive(Args)]
#[command(group(ArgGroup::new("how").required(true).args(["root", "token"])))]
pub struct LoginArgs {
    /// The server's address, such as https://mizzen.example.com
    #[arg(short, long, value_name = "URL", env = "MIZZEN_SERVER")]
    server: String,
    /// Log in as root, with --password (asked for on a terminal when not given)
    #[arg(short, long)]
    root: bool,
    /// The root password
    #[arg(short, long, env = "MIZZEN_ROOT_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Log in with a service account's token (checked with the server first)
    #[arg(short, long, value_name = "TOKEN", conflicts_with = "root")]
    token: Option<String>,
    /// Accept any TLS certificate from the server
    #[arg(short = 'k', long)]
    insecure: bool,
}

/// `mizzen login`: a root session (`POST /v2/sessions?root=true`) or a
/// service account's token (checked with `GET /v2/whoami`), stored in the
/// config file.
pub async fn login(args: LoginArgs) -> Result<(), Failure> {
    let path = config::path()?;
    let api = Api::new(&args.server, None, args.insecure)?;
    let (token, who) = match args.token {
        Some(token) => {
            if token.trim().is_empty() {
                return Err(bad_input(anyhow::anyhow!("--token is empty")));
            }
            let checked = Api::new(api.address(), Some(token.clone()), args.insecure)?;
            let principal = checked.get(&["v2", "whoami"]).send().await?;
            (token, principal_name(&principal))
        }
        None => {
            let password = match args.password.filter(|p| !p.is_empty()) {
                Some(password) => password,
                None => ask_password()?,
            };
            let session = api
                .request(Method::POST, &["v2", "sessions"])
                .query("root", "true")
                .basic_auth("root", &password)
                .send()
                .await?;
            let token = field(&session, &["value"]);
            if token.is_empty() {
                return Err(failed(anyhow::anyhow!(
                    "the server at {} created a session but sent no token",
                    api.address()
                )));
            }
            (token, "root".to_string())
        }
    };
    let stored = Config {
        api_address: api.address().to_string(),
        api_token: token,
        ignore_cert_errors: args.insecure,
    };
    config::save(&path, &stored).map_err(failed)?;
    out(format!("Logged in to {} as {who}.", api.address()));
    Ok(())
}

/// Asks for root's password on the terminal, without echoing it; without a
/// terminal (a script, a CI job) it must be given.
fn ask_password() -> Result<String, Failure> {
    use std::io::IsTerminal;
    let missing = || {
        bad_input(anyhow::anyhow!(
            "--root needs the root password: --password or MIZZEN_ROOT_PASSWORD (or a terminal to type it in)"
        ))
    };
    if !std::io::stdin().is_terminal() {
        return Err(missing());
    }
    let terminal = console::Term::stderr();
    let _ = terminal.write_str("Root password: ");
    let password = terminal
        .read_secure_line()
        .map_err(|e| bad_input(anyhow::Error::new(e).context("cannot read the password")))?;
    if password.is_empty() {
        return Err(missing());
    }
    Ok(password)
}

/// `mizzen logout`: ends the session on the server (`DELETE /v2/session`)
/// and forgets the stored login, even when the server did not agree (a
/// service account's token has no session to end).
pub async fn logout() -> Result<(), Failure> {
    let path = config::path()?;
    let Some(stored) = config::load(&path).unwrap_or(None) else {
        config::remove(&path).map_err(failed)?;
        out("Not logged in.");
        return Ok(());
    };
    let ended = match Api::new(
        &stored.api_address,
        Some(stored.api_token),
        stored.ignore_cert_errors,
    ) {
        Ok(api) => api
            .request(Method::DELETE, &["v2", "session"])
            .send()
            .await
            .map(drop),
        Err(failure) => Err(failure),
    };
    config::remove(&path).map_err(failed)?;
    if let Err(failure) = ended {
        warn(format!(
            "the server did not end the session: {:#}",
            failure.error
        ));
    }
    out(format!("Logged out of {}.", stored.api_address));
    Ok(())
}

/// `mizzen whoami`: `GET /v2/whoami`.
pub async fn whoami(args: OutputArg) -> Result<(), Failure> {
    let api = Api::from_config()?;
    let principal = api.get(&["v2", "whoami"]).send().await?;
    print::emit(args.output, &principal, |p| {
        format!("Logged in to {} as {}.", api.address(), principal_name(p))
    })
}

/// `ROOT`, `USER "alice"`, `SERVICE_ACCOUNT "gateway"`.
fn principal_name(principal: &Value) -> String {
    let kind = field(principal, &["type"]);
    let id = field(principal, &["id"]);
    match (kind.as_str(), id.as_str()) {
        ("ROOT", _) | ("", "root") => "root".into(),
        ("", id) => format!("{id:?}"),
        (kind, "") => kind.into(),
        (kind, id) => format!("{kind} {id:?}"),
    }
}

// ---------------------------------------------------------------------------
// Principals and roles, shared with project roles.

/// The users and service accounts a role is granted to or revoked from.
#[derive(Args)]
#[group(required = true, multiple = true)]
pub struct Principals {
    /// A user (repeatable)
    #[arg(short = 'u', long = "user", value_name = "USER")]
    users: Vec<String>,
    /// A service account (repeatable)
    #[arg(short = 's', long = "service-account", value_name = "ID")]
    service_accounts: Vec<String>,
}

impl Principals {
    /// `(principalType, principalID)` pairs.
    pub fn pairs(&self) -> Vec<(&'static str, &str)> {
        let users = self.users.iter().map(|u| ("USER", u.as_str()));
        let accounts = self
            .service_accounts
            .iter()
            .map(|s| ("SERVICE_ACCOUNT", s.as_str()));
        users.chain(accounts).collect()
    }
}

/// At most one principal to select role assignments by.
#[derive(Args)]
pub struct PrincipalFilter {
    /// Only this user's role assignments
    #[arg(short = 'u', long = "user", value_name = "USER")]
    user: Option<String>,
    /// Only this service account's role assignments
    #[arg(
        short = 's',
        long = "service-account",
        value_name = "ID",
        conflicts_with = "user"
    )]
    service_account: Option<String>,
}

impl PrincipalFilter {
    /// The `principalType` and `principalID` query parameters, if any.
    pub fn query(&self) -> Option<(&'static str, &str)> {
        match (&self.user, &self.service_account) {
            (Some(user), _) => Some(("USER", user)),
            (None, Some(account)) => Some(("SERVICE_ACCOUNT", account)),
            (None, None) => None,
        }
    }
}

/// A principal as a message names it.
pub fn describe(kind: &str, id: &str) -> String {
    format!("{kind} {id:?}")
}

/// System roles.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SystemRole {
    /// Manage everything
    #[value(name = "ADMIN")]
    Admin,
    /// Create events for a source (--source)
    #[value(name = "EVENT_CREATOR")]
    EventCreator,
    /// Create projects
    #[value(name = "PROJECT_CREATOR")]
    ProjectCreator,
    /// Read everything but secrets
    #[value(name = "READER")]
    Reader,
}

impl SystemRole {
    fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "ADMIN",
            Self::EventCreator => "EVENT_CREATOR",
            Self::ProjectCreator => "PROJECT_CREATOR",
            Self::Reader => "READER",
        }
    }
}

/// `mizzen role`.
#[derive(Subcommand)]
pub enum RoleCommand {
    /// Grant a system role to users and service accounts
    Grant(RoleArgs),
    /// Revoke a system role from users and service accounts
    Revoke(RoleArgs),
    /// List system role assignments
    #[command(visible_alias = "ls")]
    List(RoleListArgs),
}

/// `mizzen role grant|revoke`.
#[derive(Args)]
pub struct RoleArgs {
    /// The role
    #[arg(value_enum, ignore_case = true)]
    role: SystemRole,
    /// The event source EVENT_CREATOR is for ('*' for any)
    #[arg(long, value_name = "SOURCE")]
    source: Option<String>,
    #[command(flatten)]
    principals: Principals,
}

/// `mizzen role list`.
#[derive(Args)]
pub struct RoleListArgs {
    /// Only assignments of this role
    #[arg(short, long, value_enum, ignore_case = true)]
    role: Option<SystemRole>,
    #[command(flatten)]
    principal: PrincipalFilter,
    /// Continue a previous listing from this token
    #[arg(long = "continue", value_name = "TOKEN")]
    continue_from: Option<String>,
    #[command(flatten)]
    output: OutputArg,
}

/// `mizzen role ...`: `/v2/role-assignments`.
pub async fn role(command: RoleCommand) -> Result<(), Failure> {
    let api = Api::from_config()?;
    match command {
        RoleCommand::Grant(args) => {
            let scope = role_scope(&args)?;
            for (kind, id) in args.principals.pairs() {
                let mut body = json!({
                    "apiVersion": API_VERSION,
                    "kind": "RoleAssignment",
                    "role": args.role.as_str(),
                    "principal": {"type": kind, "id": id},
                });
                if let Some(scope) = scope {
                    body["scope"] = json!(scope);
                }
                api.request(Method::POST, &["v2", "role-assignments"])
                    .json(body)
                    .send()
                    .await?;
                out(format!(
                    "Granted role {}{} to {}.",
                    args.role.as_str(),
                    scope_note(scope),
                    describe(kind, id)
                ));
            }
            Ok(())
        }
        RoleCommand::Revoke(args) => {
            let scope = role_scope(&args)?;
            for (kind, id) in args.principals.pairs() {
                api.request(Method::DELETE, &["v2", "role-assignments"])
                    .query("role", args.role.as_str())
                    .query("principalType", kind)
                    .query("principalID", id)
                    .query_opt("scope", scope)
                    .send()
                    .await?;
                out(format!(
                    "Revoked role {}{} from {}.",
                    args.role.as_str(),
                    scope_note(scope),
                    describe(kind, id)
                ));
            }
            Ok(())
        }
        RoleCommand::List(args) => {
            let mut call = api
                .get(&["v2", "role-assignments"])
                .query_opt("role", args.role.map(SystemRole::as_str))
                .query_opt("continue", args.continue_from.as_deref());
            if let Some((kind, id)) = args.principal.query() {
                call = call.query("principalType", kind).query("principalID", id);
            }
            let list = call.send().await?;
            print::emit(args.output.output, &list, |list| {
                print::list_table(list, "No role assignments found.", |items| {
                    let mut table =
                        Table::new(&["PRINCIPAL TYPE", "PRINCIPAL ID", "ROLE", "SCOPE"]);
                    for item in items {
                        table.row(vec![
                            field(item, &["principal", "type"]),
                            field(item, &["principal", "id"]),
                            field(item, &["role"]),
                            field(item, &["scope"]),
                        ]);
                    }
                    table
                })
            })
        }
    }
}

/// EVENT_CREATOR's scope is the source; the other system roles have none.
fn role_scope(args: &RoleArgs) -> Result<Option<&str>, Failure> {
    match (args.role, args.source.as_deref()) {
        (SystemRole::EventCreator, Some(source)) if !source.is_empty() => Ok(Some(source)),
        (SystemRole::EventCreator, _) => Err(bad_input(anyhow::anyhow!(
            "EVENT_CREATOR needs --source: the event source it may create events for ('*' for any)"
        ))),
        (_, Some(_)) => Err(bad_input(anyhow::anyhow!(
            "--source applies only to EVENT_CREATOR"
        ))),
        (_, None) => Ok(None),
    }
}

fn scope_note(scope: Option<&str>) -> String {
    scope.map_or_else(String::new, |s| format!(" (source {s:?})"))
}

// ---------------------------------------------------------------------------
// Service accounts.

/// `mizzen service-account`.
#[derive(Subcommand)]
pub enum ServiceAccountCommand {
    /// Create a service account and print its token (shown only once)
    Create {
        /// The service account's ID
        #[arg(short, long)]
        id: String,
        /// What the service account is for
        #[arg(short, long)]
        description: String,
    },
    /// Show a service account
    Get {
        /// The service account's ID
        #[arg(short, long)]
        id: String,
        #[command(flatten)]
        output: OutputArg,
    },
    /// List service accounts
    #[command(visible_alias = "ls")]
    List {
        /// Continue a previous listing from this token
        #[arg(long = "continue", value_name = "TOKEN")]
        continue_from: Option<String>,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Lock a service account: its token stops working
    Lock {
        /// The service account's ID
        #[arg(short, long)]
        id: String,
    },
    /// Unlock a service account and print its new token (shown only once)
    Unlock {
        /// The service account's ID
        #[arg(short, long)]
        id: String,
    },
    /// Delete a service account
    Delete {
        /// The service account's ID
        #[arg(short, long)]
        id: String,
        /// Do not ask for confirmation
        #[arg(short, long)]
        yes: bool,
    },
}

/// `mizzen service-account ...`: `/v2/service-accounts`.
pub async fn service_account(command: ServiceAccountCommand) -> Result<(), Failure> {
    let api = Api::from_config()?;
    match command {
        ServiceAccountCommand::Create { id, description } => {
            let body = json!({
                "apiVersion": API_VERSION,
                "kind": "ServiceAccount",
                "metadata": {"id": id},
                "description": description,
            });
            let token = api
                .request(Method::POST, &["v2", "service-accounts"])
                .json(body)
                .send()
                .await?;
            print_token(&format!("Created service account {id:?}"), &token);
            Ok(())
        }
        ServiceAccountCommand::Get { id, output } => {
            let account = api.get(&["v2", "service-accounts", &id]).send().await?;
            print::emit(output.output, &account, |account| {
                accounts_table(std::slice::from_ref(account)).render()
            })
        }
        ServiceAccountCommand::List {
            continue_from,
            output,
        } => {
            let list = api
                .get(&["v2", "service-accounts"])
                .query_opt("continue", continue_from.as_deref())
                .send()
                .await?;
            print::emit(output.output, &list, |list| {
                print::list_table(list, "No service accounts found.", accounts_table)
            })
        }
        ServiceAccountCommand::Lock { id } => {
            api.request(Method::PUT, &["v2", "service-accounts", &id, "lock"])
                .send()
                .await?;
            out(format!("Locked service account {id:?}."));
            Ok(())
        }
        ServiceAccountCommand::Unlock { id } => {
            let token = api
                .request(Method::DELETE, &["v2", "service-accounts", &id, "lock"])
                .send()
                .await?;
            print_token(&format!("Unlocked service account {id:?}"), &token);
            Ok(())
        }
        ServiceAccountCommand::Delete { id, yes } => {
            if !confirm(yes, &format!("Delete service account {id:?}?"))? {
                return Ok(());
            }
            api.request(Method::DELETE, &["v2", "service-accounts", &id])
                .send()
                .await?;
            out(format!("Deleted service account {id:?}."));
            Ok(())
        }
    }
}

fn print_token(done: &str, token: &Value) {
    let value = field(token, &["value"]);
    out(format!(
        "{done}. Its token:\n\n\t{value}\n\nStore it somewhere safe: it cannot be shown again."
    ));
}

fn accounts_table(items: &[Value]) -> Table {
    let mut table = Table::new(&["ID", "DESCRIPTION", "AGE", "LOCKED"]);
    for item in items {
        let locked = !matches!(item.get("locked"), None | Some(Value::Null));
        table.row(vec![
            field(item, &["metadata", "id"]),
            field(item, &["description"]),
            age_of(item, &["metadata", "created"]),
            if locked { "yes" } else { "no" }.into(),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_are_named() {
        assert_eq!(
            principal_name(&json!({"type": "ROOT", "id": "root"})),
            "root"
        );
        assert_eq!(
            principal_name(&json!({"type": "SERVICE_ACCOUNT", "id": "gw"})),
            "SERVICE_ACCOUNT \"gw\""
        );
    }

    #[test]
    fn service_account_table() {
        let items = [
            json!({"metadata": {"id": "gw"}, "description": "GitHub gateway", "locked": "2024-01-01T00:00:00Z"}),
            json!({"metadata": {"id": "ci"}, "description": "CI", "locked": null}),
        ];
        let text = accounts_table(&items).render();
        assert_eq!(
            text,
            "ID   DESCRIPTION      AGE   LOCKED\n\
             gw   GitHub gateway         yes\n\
             ci   CI                     no\n"
        );
    }
}
