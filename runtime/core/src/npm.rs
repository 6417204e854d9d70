//! npm dependencies of a Brigade script: reading the script directory's
//! `package.json` with its `package-lock.json` (v2/v3) or `yarn.lock` (v1), or
//! resolving `package.json` alone against the registry; fetching the tarballs
//! from the registry (and nowhere else), checking their integrity, and
//! unpacking them into `dest/node_modules/...` in the layout Node's module
//! resolution expects. The bundler resolves `require`s against that tree.
//!
//! Nothing a package ships is run: no install scripts, no `bin` links. Only
//! regular files and directories are unpacked, inside the package's own
//! directory, within the size limits of [`NpmConfig`].

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use nodejs_semver::{Range, Version};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha512};
use url::Url;

/// Compressed size of one tarball. The largest packages a script plausibly
/// needs (an SDK, lodash, moment) are 1–5 MiB; 16 MiB leaves room while
/// keeping one download's memory (tarballs are held whole to be hashed) small.
pub const MAX_TARBALL_BYTES: u64 = 16 << 20;
/// Unpacked size of the whole tree (tar stream bytes, headers included, so a
/// flood of empty entries counts too). 64 MiB is far above a script's real
/// needs and bounds both the disk used per job and a gzip bomb.
pub const MAX_TREE_BYTES: u64 = 64 << 20;
/// Size of one packument. Abbreviated packuments of long-lived packages with
/// thousands of versions (typescript, aws-sdk) reach a few MiB.
const MAX_PACKUMENT_BYTES: u64 = 32 << 20;
/// Packages in one installation. Real trees of scripts have tens to hundreds;
/// the cap stops a dependency cycle between conflicting versions (which
/// nests ever deeper) and bounds the registry requests one job can cause.
const MAX_PACKAGES: usize = 4096;
const DEFAULT_REGISTRY: &str = "https://registry.npmjs.org/";
/// Tarball hosts of locks written against the public registry; their URLs
/// are moved onto the configured registry, as npm's `replace-registry-host`.
const PUBLIC_REGISTRIES: [&str; 2] = [
    "https://registry.npmjs.org/",
    "https://registry.yarnpkg.com/",
];
/// Provided by the sandbox itself; never fetched, nor what only they need.
pub const BUILTIN_PACKAGES: [&str; 2] = ["@brigadecore/brigadier", "brigadier"];
const PACKUMENT_ACCEPT: &str = "application/vnd.npm.install-v1+json";

/// Where packages come from and how much of them is accepted.
#[derive(Debug, Clone)]
pub struct NpmConfig {
    /// Registry base URL, default <https://registry.npmjs.org/>. Tarball URLs
    /// in locks that point at the public registries are rewritten onto it.
    pub registry: Url,
    /// Sent as `Authorization: Bearer <token>` to the registry (the project
    /// secret `npmToken`, for a private registry).
    pub token: Option<String>,
    /// See [`MAX_TARBALL_BYTES`].
    pub max_tarball_bytes: u64,
    /// See [`MAX_TREE_BYTES`].
    pub max_tree_bytes: u64,
}

impl Default for NpmConfig {
    fn default() -> Self {
        NpmConfig {
            registry: Url::parse(DEFAULT_REGISTRY).expect("the default registry is a valid URL"),
            token: None,
            max_tarball_bytes: MAX_TARBALL_BYTES,
            max_tree_bytes: MAX_TREE_BYTES,
        }
    }
}

/// Which file decided the versions installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockKind {
    /// `package-lock.json` (npm 7+, lockfileVersion 2 or 3).
    PackageLock,
    /// `yarn.lock` (yarn v1).
    YarnLock,
    /// No lock: ranges resolved against the registry now.
    PackageJson,
}

impl std::fmt::Display for LockKind {
    /// The file's name.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LockKind::PackageLock => "package-lock.json",
            LockKind::YarnLock => "yarn.lock",
            LockKind::PackageJson => "package.json",
        })
    }
}

/// What [`install`] installed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Installation {
    /// The file that decided the versions.
    pub lock: LockKind,
    /// The packages installed.
    ///
    /// Sorted by path, parents before what is nested in them.
    pub packages: Vec<InstalledPackage>,
}

/// One package installed under `dest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledPackage {
    /// The directory name `require` finds it by (an alias's, for aliases).
    pub name: String,
    /// The version installed.
    pub version: String,
    /// Relative to `dest`, e.g. `node_modules/a/node_modules/b`.
    pub path: String,
    /// The `sha512-...` integrity the download was checked against; `None`
    /// when the lock gave no sha512 (old yarn entries have only a sha1).
    pub integrity: Option<String>,
}

/// Why an installation failed. `package` is `name@version` (or the
/// dependent and the range, before a version is known).
#[derive(Debug, thiserror::Error)]
pub enum NpmError {
    /// A file of the package directory could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A lock or `package.json` could not be parsed.
    #[error("{file}:{line}: {message}")]
    Lock {
        /// The file's name.
        file: String,
        /// The 1-based line, or 0 when not known.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A `package-lock.json` older than npm 7's.
    #[error(
        "package-lock.json has lockfileVersion {version}; regenerate it with npm 7 or later (lockfileVersion 2 or 3)"
    )]
    UnsupportedLockVersion {
        /// The lock's `lockfileVersion`.
        version: u64,
    },
    /// The lock has no entry for a dependency.
    #[error("{package} depends on {dependency}, which {file} does not list; regenerate the lock")]
    MissingDependency {
        /// The dependent.
        package: String,
        /// The dependency, as `name@range`.
        dependency: String,
        /// The lock's file name.
        file: String,
    },
    /// The registry has no version of a dependency in its range.
    #[error("{package}: no version of {name} satisfies {range}")]
    NoMatchingVersion {
        /// The dependent.
        package: String,
        /// The dependency's name.
        name: String,
        /// The range asked for.
        range: String,
    },
    /// A package that does not come from the npm registry (git, file, link
    /// or URL).
    ///
    /// Field named `resolved`, not `source`: thiserror takes a field named
    /// `source` for the error's cause.
    #[error(
        "{package} comes from {resolved}; only packages from the npm registry can be installed"
    )]
    NonRegistrySource {
        /// The package.
        package: String,
        /// Where the lock or the range says it comes from.
        resolved: String,
    },
    /// A tarball's sha512 differs from the lock's integrity.
    #[error(
        "{package}: the downloaded tarball has integrity {actual}, the lock expects {expected}"
    )]
    IntegrityMismatch {
        /// The package, as `name@version`.
        package: String,
        /// The lock's integrity, `sha512-...`.
        expected: String,
        /// The downloaded tarball's integrity, `sha512-...`.
        actual: String,
    },
    /// A tarball is larger than [`NpmConfig::max_tarball_bytes`].
    #[error("{package}: the tarball is larger than the limit of {limit} bytes")]
    TarballTooLarge {
        /// The package, as `name@version`.
        package: String,
        /// The limit, in bytes.
        limit: u64,
    },
    /// A packument (the registry's metadata of a package) is too large.
    #[error("{package}: the registry's metadata is larger than the limit of {limit} bytes")]
    PackumentTooLarge {
        /// The package's name.
        package: String,
        /// The limit, in bytes.
        limit: u64,
    },
    /// The unpacked tree is larger than [`NpmConfig::max_tree_bytes`].
    #[error("the packages would take more than the limit of {limit} bytes unpacked")]
    TreeTooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// The installation has too many packages.
    #[error("more than {limit} packages to install")]
    TooManyPackages {
        /// The limit, in packages.
        limit: usize,
    },
    /// A tarball entry that is neither a file nor a directory.
    #[error("{package}: tarball entry {path} is a {kind}; only files and directories are unpacked")]
    UnsafeEntry {
        /// The package, as `name@version`.
        package: String,
        /// The entry's path in the tarball.
        path: String,
        /// The entry's type, e.g. `symlink`.
        kind: String,
    },
    /// A tarball entry whose path leads outside the package's directory.
    #[error("{package}: tarball entry {path} would be written outside the package's directory")]
    PathEscape {
        /// The package, as `name@version`.
        package: String,
        /// The entry's path in the tarball.
        path: String,
    },
    /// The registry answered a GET with an unsuccessful status.
    #[error("{package}: GET {url} answered {status}")]
    Http {
        /// The package fetched.
        package: String,
        /// The URL fetched.
        url: String,
        /// The HTTP status code.
        status: u16,
    },
    /// A GET failed before or while its response was read.
    #[error("{package}: GET {url} failed: {reason}")]
    Request {
        /// The package fetched.
        package: String,
        /// The URL fetched.
        url: String,
        /// The cause, with each of its own causes (a refused connection is
        /// three levels down in reqwest's errors).
        reason: String,
    },
    /// Anything else wrong with a package: a bad name, URL, metadata or
    /// tarball.
    #[error("{package}: {message}")]
    Invalid {
        /// The package.
        package: String,
        /// What is wrong.
        message: String,
    },
    /// A file or directory of the tree could not be written.
    #[error("{package}: cannot write {}: {source}", path.display())]
    Write {
        /// The package, as `name@version`.
        package: String,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// An error and its causes, one after another, each said once (reqwest's
/// errors repeat their cause in their own text only sometimes).
pub(crate) fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        next = cause.source();
    }
    text
}

/// Whether the directory has dependencies to install at all: a
/// `package.json` with a dependency other than [`BUILTIN_PACKAGES`].
pub fn needs_install(package_dir: &Path) -> Result<bool, NpmError> {
    Ok(!root_dependencies(package_dir)?.is_empty())
}

/// Installs the dependencies of `package_dir` into `dest/node_modules`.
/// `dest` is an existing empty directory.
///
/// Only `dependencies` are installed: not `devDependencies`, and not
/// `optionalDependencies` (nor lock entries marked optional), which are
/// mostly native or platform packages that cannot run in a WASI sandbox.
pub async fn install(
    client: &reqwest::Client,
    package_dir: &Path,
    dest: &Path,
    config: &NpmConfig,
) -> Result<Installation, NpmError> {
    let root = root_dependencies(package_dir)?;
    let (lock, mut planned) =
        if let Some(text) = read_optional(&package_dir.join("package-lock.json"))? {
            (LockKind::PackageLock, plan_package_lock(&text, &root)?)
        } else if let Some(text) = read_optional(&package_dir.join("yarn.lock"))? {
            let yarn = parse_yarn_lock(&text)?;
            (
                LockKind::YarnLock,
                hoist(&root, &mut Resolver::Yarn(&yarn)).await?,
            )
        } else {
            let mut registry = Resolver::Registry {
                client,
                config,
                packuments: HashMap::new(),
            };
            (LockKind::PackageJson, hoist(&root, &mut registry).await?)
        };
    planned.sort_by(|a, b| a.path.cmp(&b.path));
    // Every source is checked before anything is fetched.
    let urls = planned
        .iter()
        .map(|p| source_url(&p.package(), &p.resolved, &config.registry))
        .collect::<Result<Vec<_>, _>>()?;

    let mut used = 0;
    let mut packages = Vec::with_capacity(planned.len());
    for (p, url) in planned.into_iter().zip(urls) {
        let package = p.package();
        let bytes = fetch(client, &url, config, &package, Fetched::Tarball).await?;
        let integrity = check_integrity(&package, p.integrity.as_deref(), &bytes)?;
        let dir = dest.join(&p.path);
        let budget = config.max_tree_bytes.saturating_sub(used);
        let limit = config.max_tree_bytes;
        let name = package.clone();
        used += tokio::task::spawn_blocking(move || unpack(&name, &bytes, &dir, budget, limit))
            .await
            .map_err(|e| NpmError::Invalid {
                package,
                message: format!("unpacking failed: {e}"),
            })??;
        packages.push(InstalledPackage {
            name: p.name,
            version: p.version,
            path: p.path,
            integrity,
        });
    }
    Ok(Installation { lock, packages })
}

/// A package chosen and placed, not yet fetched.
struct Planned {
    name: String,
    version: String,
    path: String,
    resolved: String,
    integrity: Option<String>,
}

impl Planned {
    fn package(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

type Deps = BTreeMap<String, String>;

#[derive(Deserialize)]
struct PackageJson {
    #[serde(default)]
    dependencies: Deps,
}

fn root_dependencies(package_dir: &Path) -> Result<Deps, NpmError> {
    let Some(text) = read_optional(&package_dir.join("package.json"))? else {
        return Ok(Deps::new());
    };
    let mut deps = parse_json::<PackageJson>("package.json", &text)?.dependencies;
    deps.retain(|name, _| !is_builtin(name));
    Ok(deps)
}

fn is_builtin(name: &str) -> bool {
    BUILTIN_PACKAGES.contains(&name)
}

fn read_optional(path: &Path) -> Result<Option<String>, NpmError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(NpmError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(file: &str, text: &str) -> Result<T, NpmError> {
    serde_json::from_str(text.trim_start_matches('\u{feff}')).map_err(|e| NpmError::Lock {
        file: file.into(),
        line: e.line(),
        message: e.to_string(),
    })
}

/// A name becomes a directory and a URL path, so it must be one of npm's
/// URL-safe names (`name` or `@scope/name`), which also rules out `..`.
fn check_name(dependent: &str, name: &str) -> Result<(), NpmError> {
    let plain = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.!~*'()".contains(c))
    };
    let ok = match name.strip_prefix('@') {
        Some(scoped) => scoped
            .split_once('/')
            .is_some_and(|(s, n)| plain(s) && plain(n)),
        None => plain(name),
    };
    if ok {
        Ok(())
    } else {
        Err(NpmError::Invalid {
            package: dependent.into(),
            message: format!("`{name}` is not a valid package name"),
        })
    }
}

fn child(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        format!("node_modules/{name}")
    } else {
        format!("{parent}/node_modules/{name}")
    }
}

fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    Some(path.rfind("/node_modules/").map_or("", |i| &path[..i]))
}

/// What `require(name)` from the package at `from` finds, by Node's rule:
/// `from/node_modules/name`, then each parent's, then the top level's.
fn find<'m, V>(
    tree: &'m BTreeMap<String, V>,
    from: &str,
    name: &str,
) -> Option<(&'m String, &'m V)> {
    let mut at = Some(from);
    while let Some(path) = at {
        if let Some(found) = tree.get_key_value(&child(path, name)) {
            return Some(found);
        }
        at = parent(path);
    }
    None
}

#[derive(Deserialize)]
struct PackageLock {
    #[serde(rename = "lockfileVersion")]
    lockfile_version: Option<u64>,
    #[serde(default)]
    packages: BTreeMap<String, LockEntry>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct LockEntry {
    name: Option<String>,
    version: Option<String>,
    resolved: Option<String>,
    integrity: Option<String>,
    dev: bool,
    optional: bool,
    dev_optional: bool,
    link: bool,
    in_bundle: bool,
    dependencies: Deps,
    peer_dependencies: Deps,
    peer_dependencies_meta: BTreeMap<String, PeerMeta>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct PeerMeta {
    optional: bool,
}

/// The lock's packages reachable from the root's dependencies. npm 7+
/// installs peers too, so a non-optional peer found in the tree is followed.
fn plan_package_lock(text: &str, root: &Deps) -> Result<Vec<Planned>, NpmError> {
    const FILE: &str = "package-lock.json";
    let lock: PackageLock = parse_json(FILE, text)?;
    match lock.lockfile_version {
        Some(2 | 3) => {}
        version => {
            return Err(NpmError::UnsupportedLockVersion {
                version: version.unwrap_or(1),
            });
        }
    }
    let mut planned = Vec::new();
    let mut seen = HashSet::new();
    let root_deps = root
        .iter()
        .map(|(name, range)| (name.clone(), range.clone(), true))
        .collect();
    // A dependent's path and name@version, and its (name, range, required)s.
    type Edges = Vec<(String, String, bool)>;
    let mut queue: VecDeque<(String, String, Edges)> =
        VecDeque::from([(String::new(), "package.json".to_string(), root_deps)]);
    while let Some((from, dependent, deps)) = queue.pop_front() {
        for (name, range, required) in deps {
            if is_builtin(&name) {
                continue;
            }
            check_name(&dependent, &name)?;
            let Some((path, entry)) = find(&lock.packages, &from, &name) else {
                if !required {
                    continue;
                }
                return Err(NpmError::MissingDependency {
                    package: dependent,
                    dependency: format!("{name}@{range}"),
                    file: FILE.into(),
                });
            };
            if !seen.insert(path.clone()) || entry.dev || entry.optional || entry.dev_optional {
                continue;
            }
            let version = entry.version.clone().unwrap_or_default();
            let package = format!("{name}@{version}");
            if entry.link {
                let resolved = entry.resolved.clone().unwrap_or_else(|| "a link".into());
                return Err(NpmError::NonRegistrySource { package, resolved });
            }
            // Bundled packages arrive inside their parent's tarball.
            if entry.in_bundle {
                continue;
            }
            if version.is_empty() {
                return Err(NpmError::Lock {
                    file: FILE.into(),
                    line: 0,
                    message: format!("{path} has no version"),
                });
            }
            // npm leaves `resolved` out for registry packages when told to
            // (omit-lockfile-registry-resolved); it then fetches by name.
            let resolved = entry.resolved.clone().unwrap_or_else(|| {
                let real = entry.name.as_deref().unwrap_or(&name);
                let base = real.rsplit('/').next().unwrap_or(real);
                format!("{}{real}/-/{base}-{version}.tgz", PUBLIC_REGISTRIES[0])
            });
            let mut next: Vec<_> = entry
                .dependencies
                .iter()
                .map(|(n, r)| (n.clone(), r.clone(), true))
                .collect();
            next.extend(
                entry
                    .peer_dependencies
                    .iter()
                    .filter(|(n, _)| {
                        !entry
                            .peer_dependencies_meta
                            .get(*n)
                            .is_some_and(|m| m.optional)
                    })
                    .map(|(n, r)| (n.clone(), r.clone(), false)),
            );
            queue.push_back((path.clone(), package, next));
            planned.push(Planned {
                name,
                version,
                path: path.clone(),
                resolved,
                integrity: entry.integrity.clone(),
            });
        }
    }
    Ok(planned)
}

#[derive(Default)]
struct YarnEntry {
    version: String,
    resolved: Option<String>,
    integrity: Option<String>,
    dependencies: Deps,
    line: usize,
}

#[derive(Default)]
struct YarnLock {
    entries: Vec<YarnEntry>,
    /// `name@range` (each of an entry's keys) to its index in `entries`.
    by_spec: HashMap<String, usize>,
}

fn unquote(s: &str) -> &str {
    s.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(s)
}

/// `name@range`, the name possibly scoped (`@scope/name@range`).
fn split_spec(spec: &str) -> Option<(&str, &str)> {
    let at = spec.get(1..)?.find('@')? + 1;
    Some((&spec[..at], &spec[at + 1..]))
}

/// `key value`, either possibly quoted.
fn split_field(body: &str) -> Option<(&str, &str)> {
    let (key, rest) = match body.strip_prefix('"') {
        Some(quoted) => quoted.split_once('"')?,
        None => body.split_once(' ')?,
    };
    Some((key, unquote(rest.trim())))
}

/// yarn v1's format: unindented `"a@^1", a@^1.2:` keys, then fields indented
/// by two spaces, then the `dependencies:` block's entries by four.
fn parse_yarn_lock(text: &str) -> Result<YarnLock, NpmError> {
    let error = |line, message: String| NpmError::Lock {
        file: "yarn.lock".into(),
        line,
        message,
    };
    let mut lock = YarnLock::default();
    let mut in_dependencies = None;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let body = raw.trim();
        if body.is_empty() || body.starts_with('#') {
            continue;
        }
        let indent = raw.len() - raw.trim_start().len();
        let current = lock.entries.len().checked_sub(1);
        match (indent, current) {
            (0, _) => {
                let keys = body
                    .strip_suffix(':')
                    .ok_or_else(|| error(line, "expected `name@range:`".into()))?;
                for key in keys.split(',') {
                    let spec = unquote(key.trim());
                    split_spec(spec)
                        .ok_or_else(|| error(line, format!("`{spec}` is not name@range")))?;
                    lock.by_spec.insert(spec.to_string(), lock.entries.len());
                }
                lock.entries.push(YarnEntry {
                    line,
                    ..Default::default()
                });
                in_dependencies = None;
            }
            (2, Some(current)) => {
                if let Some(block) = body.strip_suffix(':') {
                    in_dependencies = Some(block == "dependencies");
                    continue;
                }
                in_dependencies = None;
                let (field, value) = split_field(body).ok_or_else(|| {
                    error(line, format!("expected `field value`, found `{body}`"))
                })?;
                let entry = &mut lock.entries[current];
                match field {
                    "version" => entry.version = value.into(),
                    "resolved" => entry.resolved = Some(value.into()),
                    "integrity" => entry.integrity = Some(value.into()),
                    _ => {}
                }
            }
            (4, Some(current)) if in_dependencies.is_some() => {
                let (name, range) = split_field(body)
                    .ok_or_else(|| error(line, format!("expected `name range`, found `{body}`")))?;
                if in_dependencies == Some(true) {
                    lock.entries[current]
                        .dependencies
                        .insert(name.into(), range.into());
                }
            }
            _ => return Err(error(line, "unexpected indentation".into())),
        }
    }
    if let Some(entry) = lock.entries.iter().find(|e| e.version.is_empty()) {
        return Err(error(entry.line, "entry has no version".into()));
    }
    Ok(lock)
}

/// A package version a dependency resolved to.
struct Node {
    /// Same id, same package: found again, it is not placed twice.
    id: String,
    version: String,
    resolved: String,
    integrity: Option<String>,
    dependencies: Deps,
}

#[derive(Deserialize)]
struct Packument {
    #[serde(default, rename = "dist-tags")]
    dist_tags: BTreeMap<String, String>,
    #[serde(default)]
    versions: BTreeMap<String, PackumentVersion>,
}

#[derive(Deserialize)]
struct PackumentVersion {
    #[serde(default)]
    dependencies: Deps,
    dist: Dist,
}

#[derive(Deserialize)]
struct Dist {
    tarball: String,
    integrity: Option<String>,
}

/// Where versions come from when there is no layout to follow.
enum Resolver<'a> {
    Yarn(&'a YarnLock),
    Registry {
        client: &'a reqwest::Client,
        config: &'a NpmConfig,
        packuments: HashMap<String, Packument>,
    },
}

impl Resolver<'_> {
    async fn resolve(
        &mut self,
        dependent: &str,
        name: &str,
        range: &str,
    ) -> Result<Node, NpmError> {
        match self {
            Resolver::Yarn(lock) => {
                let spec = format!("{name}@{range}");
                let Some(&index) = lock.by_spec.get(&spec) else {
                    return Err(NpmError::MissingDependency {
                        package: dependent.into(),
                        dependency: spec,
                        file: "yarn.lock".into(),
                    });
                };
                let entry = &lock.entries[index];
                let resolved =
                    entry
                        .resolved
                        .clone()
                        .ok_or_else(|| NpmError::NonRegistrySource {
                            package: format!("{name}@{}", entry.version),
                            resolved: spec,
                        })?;
                Ok(Node {
                    id: index.to_string(),
                    version: entry.version.clone(),
                    resolved,
                    integrity: entry.integrity.clone(),
                    dependencies: entry.dependencies.clone(),
                })
            }
            Resolver::Registry {
                client,
                config,
                packuments,
            } => {
                let (real, range) = match range.strip_prefix("npm:") {
                    Some(alias) => split_spec(alias).unwrap_or((alias, "latest")),
                    None => (name, range),
                };
                let wanted = format!("{name}@{range}");
                // Ranges never hold `:` or `/`; git, file, URL and GitHub specs do.
                if range.contains([':', '/']) {
                    return Err(NpmError::NonRegistrySource {
                        package: wanted,
                        resolved: range.into(),
                    });
                }
                check_name(dependent, real)?;
                if !packuments.contains_key(real) {
                    let url = format!(
                        "{}{}",
                        registry_base(&config.registry),
                        real.replace('/', "%2f")
                    );
                    let url = Url::parse(&url).map_err(|e| NpmError::Invalid {
                        package: wanted.clone(),
                        message: e.to_string(),
                    })?;
                    let bytes = fetch(client, &url, config, real, Fetched::Packument).await?;
                    let packument =
                        serde_json::from_slice(&bytes).map_err(|e| NpmError::Invalid {
                            package: real.into(),
                            message: format!("bad registry metadata: {e}"),
                        })?;
                    packuments.insert(real.into(), packument);
                }
                let packument = &packuments[real];
                let version = match packument.dist_tags.get(range) {
                    Some(tagged) => Some(tagged.clone()),
                    // The highest match, by the packument's own key (which
                    // may differ from `Version`'s rendering, e.g. `+build`).
                    None => Range::parse(if range.is_empty() { "*" } else { range })
                        .ok()
                        .and_then(|wanted| {
                            let versions = packument.versions.keys();
                            versions
                                .filter_map(|key| Some((Version::parse(key).ok()?, key)))
                                .filter(|(version, _)| wanted.satisfies(version))
                                .max_by(|a, b| a.0.cmp(&b.0))
                                .map(|(_, key)| key.clone())
                        }),
                };
                let Some((version, found)) =
                    version.and_then(|v| packument.versions.get_key_value(&v))
                else {
                    return Err(NpmError::NoMatchingVersion {
                        package: dependent.into(),
                        name: real.into(),
                        range: range.into(),
                    });
                };
                Ok(Node {
                    id: format!("{real}@{version}"),
                    version: version.clone(),
                    resolved: found.dist.tarball.clone(),
                    integrity: found.dist.integrity.clone(),
                    dependencies: found.dependencies.clone(),
                })
            }
        }
    }
}

/// A hoisted layout, breadth first from the root's dependencies: a package
/// goes where its dependent's `require` would find it, the top level when
/// nothing there shadows it, else under the dependent.
async fn hoist(root: &Deps, resolver: &mut Resolver<'_>) -> Result<Vec<Planned>, NpmError> {
    let mut placed: BTreeMap<String, Node> = BTreeMap::new();
    let mut queue = VecDeque::from([(String::new(), "package.json".to_string(), root.clone())]);
    while let Some((from, dependent, deps)) = queue.pop_front() {
        for (name, range) in deps {
            if is_builtin(&name) {
                continue;
            }
            check_name(&dependent, &name)?;
            let node = resolver.resolve(&dependent, &name, &range).await?;
            let path = match find(&placed, &from, &name) {
                Some((_, found)) if found.id == node.id => continue,
                Some(_) => child(&from, &name),
                None => child("", &name),
            };
            if placed.len() >= MAX_PACKAGES {
                return Err(NpmError::TooManyPackages {
                    limit: MAX_PACKAGES,
                });
            }
            queue.push_back((
                path.clone(),
                format!("{name}@{}", node.version),
                node.dependencies.clone(),
            ));
            placed.insert(path, node);
        }
    }
    Ok(placed
        .into_iter()
        .map(|(path, node)| Planned {
            name: path
                .rsplit_once("node_modules/")
                .map_or("", |(_, n)| n)
                .to_string(),
            version: node.version,
            path,
            resolved: node.resolved,
            integrity: node.integrity,
        })
        .collect())
}

fn registry_base(registry: &Url) -> String {
    let base = registry.as_str();
    if base.ends_with('/') {
        base.to_string()
    } else {
        format!("{base}/")
    }
}

/// The URL to fetch `resolved` from: under the configured registry, or under
/// a public one and moved onto the configured registry. Nothing else.
fn source_url(package: &str, resolved: &str, registry: &Url) -> Result<Url, NpmError> {
    let refuse = || NpmError::NonRegistrySource {
        package: package.into(),
        resolved: resolved.into(),
    };
    let mut url = Url::parse(resolved).map_err(|_| refuse())?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(refuse());
    }
    // yarn appends the sha1 as a fragment.
    url.set_fragment(None);
    let base = registry_base(registry);
    if url.as_str().starts_with(&base) {
        return Ok(url);
    }
    PUBLIC_REGISTRIES
        .iter()
        .find_map(|public| url.as_str().strip_prefix(public))
        .and_then(|rest| Url::parse(&format!("{base}{rest}")).ok())
        .ok_or_else(refuse)
}

#[derive(Clone, Copy)]
enum Fetched {
    Tarball,
    Packument,
}

/// GETs `url` with the token, holding at most the kind's limit in memory.
async fn fetch(
    client: &reqwest::Client,
    url: &Url,
    config: &NpmConfig,
    package: &str,
    kind: Fetched,
) -> Result<Vec<u8>, NpmError> {
    let (limit, too_large) = match kind {
        Fetched::Tarball => (
            config.max_tarball_bytes,
            NpmError::TarballTooLarge {
                package: package.into(),
                limit: config.max_tarball_bytes,
            },
        ),
        Fetched::Packument => (
            MAX_PACKUMENT_BYTES,
            NpmError::PackumentTooLarge {
                package: package.into(),
                limit: MAX_PACKUMENT_BYTES,
            },
        ),
    };
    let failed = |error: reqwest::Error| NpmError::Request {
        package: package.into(),
        url: url.to_string(),
        reason: causes(&error),
    };
    let mut request = client.get(url.clone());
    if let Fetched::Packument = kind {
        request = request.header(reqwest::header::ACCEPT, PACKUMENT_ACCEPT);
    }
    if let Some(token) = &config.token {
        request = request.bearer_auth(token);
    }
    let mut response = request.send().await.map_err(failed)?;
    if !response.status().is_success() {
        return Err(NpmError::Http {
            package: package.into(),
            url: url.to_string(),
            status: response.status().as_u16(),
        });
    }
    if response.content_length().is_some_and(|n| n > limit) {
        return Err(too_large);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(failed)? {
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(too_large);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Checks the sha512 of `integrity` (one of its space-separated hashes);
/// returns the integrity checked.
fn check_integrity(
    package: &str,
    integrity: Option<&str>,
    bytes: &[u8],
) -> Result<Option<String>, NpmError> {
    let Some(expected) =
        integrity.and_then(|i| i.split_whitespace().find(|h| h.starts_with("sha512-")))
    else {
        return Ok(None);
    };
    // Subresource-integrity options follow a `?`.
    let expected = expected.split('?').next().unwrap_or(expected);
    let actual = format!("sha512-{}", BASE64.encode(Sha512::digest(bytes)));
    if actual != expected {
        return Err(NpmError::IntegrityMismatch {
            package: package.into(),
            expected: expected.into(),
            actual,
        });
    }
    Ok(Some(actual))
}

/// Counts the decompressed bytes and fails past the budget, so a gzip bomb
/// stops there rather than at its end.
struct Budgeted<'a, R> {
    inner: R,
    used: &'a Cell<u64>,
    budget: u64,
}

impl<R: Read> Read for Budgeted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.used.set(self.used.get() + n as u64);
        if self.used.get() > self.budget {
            return Err(io::Error::other("over the unpacked size limit"));
        }
        Ok(n)
    }
}

/// The entry's path inside the package's directory (its first component,
/// `package/` in npm's tarballs, stripped), or `None` for that directory.
fn entry_path(raw: &[u8]) -> Result<Option<PathBuf>, ()> {
    let text = std::str::from_utf8(raw).map_err(|_| ())?;
    if text.starts_with('/') || text.contains('\\') {
        return Err(());
    }
    let mut parts = text
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .peekable();
    if parts.peek() == Some(&"..") {
        return Err(());
    }
    parts.next();
    let mut path = PathBuf::new();
    for part in parts {
        if part == ".." {
            return Err(());
        }
        path.push(part);
    }
    Ok((!path.as_os_str().is_empty()).then_some(path))
}

/// Unpacks a `.tgz` into `dir`; returns the decompressed bytes read. Files
/// and directories are created here, never through tar's `unpack`; no link
/// is ever made, so no path under `dir` can lead elsewhere.
fn unpack(package: &str, tgz: &[u8], dir: &Path, budget: u64, limit: u64) -> Result<u64, NpmError> {
    let used = Cell::new(0);
    let mut archive = tar::Archive::new(Budgeted {
        inner: flate2::read::GzDecoder::new(tgz),
        used: &used,
        budget,
    });
    let bad = |e: io::Error| {
        if used.get() > budget {
            NpmError::TreeTooLarge { limit }
        } else {
            NpmError::Invalid {
                package: package.into(),
                message: format!("bad tarball: {e}"),
            }
        }
    };
    let write_error = |path: &Path, source| NpmError::Write {
        package: package.into(),
        path: path.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|e| write_error(dir, e))?;
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let relative = entry_path(&raw).map_err(|()| NpmError::PathEscape {
            package: package.into(),
            path: shown.clone(),
        })?;
        let kind = entry.header().entry_type();
        let unsafe_kind = match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::Directory => {
                None
            }
            // git-archive's comment header: metadata, nothing to write.
            tar::EntryType::XGlobalHeader => continue,
            tar::EntryType::Symlink => Some("symlink"),
            tar::EntryType::Link => Some("hard link"),
            tar::EntryType::Char => Some("character device"),
            tar::EntryType::Block => Some("block device"),
            tar::EntryType::Fifo => Some("fifo"),
            _ => Some("special entry"),
        };
        if let Some(kind) = unsafe_kind {
            return Err(NpmError::UnsafeEntry {
                package: package.into(),
                path: shown,
                kind: kind.into(),
            });
        }
        let Some(relative) = relative else { continue };
        let path = dir.join(relative);
        if kind.is_dir() {
            std::fs::create_dir_all(&path).map_err(|e| write_error(&path, e))?;
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| write_error(parent, e))?;
        }
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o644);
        let mut file = options.open(&path).map_err(|e| write_error(&path, e))?;
        let mut buf = [0; 16 * 1024];
        loop {
            let n = entry.read(&mut buf).map_err(bad)?;
            if n == 0 {
                break;
            }
            file.write_all(&buf[..n])
                .map_err(|e| write_error(&path, e))?;
        }
    }
    Ok(used.get())
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::extract::{Request, State};
    use axum::http::StatusCode;
    use flate2::Compression;
    use flate2::write::GzEncoder;
    use serde_json::json;
    use tar::EntryType;

    use super::*;

    const TOKEN: &str = "s3cret";

    /// Serves `files` by path; every request must carry the token, and
    /// packument requests npm's abbreviated-metadata `Accept`.
    struct TestRegistry {
        files: HashMap<String, Vec<u8>>,
        requests: Mutex<Vec<String>>,
    }

    async fn answer(
        State(registry): State<Arc<TestRegistry>>,
        request: Request,
    ) -> (StatusCode, Vec<u8>) {
        let path = request.uri().path().to_string();
        registry.requests.lock().unwrap().push(path.clone());
        let header = |name| request.headers().get(name).and_then(|v| v.to_str().ok());
        if header("authorization") != Some(&format!("Bearer {TOKEN}")) {
            return (StatusCode::UNAUTHORIZED, Vec::new());
        }
        if !path.ends_with(".tgz") && header("accept") != Some(PACKUMENT_ACCEPT) {
            return (StatusCode::NOT_ACCEPTABLE, Vec::new());
        }
        match registry.files.get(&path) {
            Some(body) => (StatusCode::OK, body.clone()),
            None => (StatusCode::NOT_FOUND, Vec::new()),
        }
    }

    struct Run {
        result: Result<Installation, NpmError>,
        /// Holds `dest`, `root/dest`.
        root: tempfile::TempDir,
        requests: Vec<String>,
    }

    impl Run {
        fn dest(&self, path: &str) -> PathBuf {
            self.root.path().join("dest").join(path)
        }
        fn read(&self, path: &str) -> String {
            std::fs::read_to_string(self.dest(path)).unwrap()
        }
        fn exists(&self, path: &str) -> bool {
            self.dest(path).exists()
        }
    }

    /// Installs the script directory `dir` against a registry serving
    /// `files`, with the token unless `configure` removes it.
    async fn install_in(
        dir: &[(&str, String)],
        files: Vec<(String, Vec<u8>)>,
        configure: impl FnOnce(&mut NpmConfig),
    ) -> Run {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let registry = Arc::new(TestRegistry {
            files: files.into_iter().collect(),
            requests: Mutex::default(),
        });
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(registry.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

        let package_dir = tempfile::tempdir().unwrap();
        for (name, text) in dir {
            std::fs::write(package_dir.path().join(name), text).unwrap();
        }
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("dest");
        std::fs::create_dir(&dest).unwrap();
        let mut config = NpmConfig {
            registry: Url::parse(&format!("http://{address}/")).unwrap(),
            token: Some(TOKEN.into()),
            ..NpmConfig::default()
        };
        configure(&mut config);
        let _ = rustls::crypto::ring::default_provider().install_default();
        let result = install(&reqwest::Client::new(), package_dir.path(), &dest, &config).await;
        // Nothing may land beside `dest`.
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1);
        let requests = registry.requests.lock().unwrap().clone();
        Run {
            result,
            root,
            requests,
        }
    }

    fn tgz(entries: &[(&str, EntryType, &str)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
        for (path, kind, data) in entries {
            // Written raw: tar's `set_path` would refuse the bad paths tested.
            let mut header = tar::Header::new_gnu();
            header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
            header.set_entry_type(*kind);
            header.set_size(data.len() as u64);
            header.set_mode(0o755);
            if matches!(kind, EntryType::Symlink | EntryType::Link) {
                header.set_link_name_literal("/etc/passwd").unwrap();
            }
            header.set_cksum();
            builder.append(&header, data.as_bytes()).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap()
    }

    /// A package whose `index.js` says which it is.
    fn package(id: &str) -> Vec<u8> {
        let index = format!("module.exports = '{id}';");
        tgz(&[
            ("package", EntryType::Directory, ""),
            ("package/index.js", EntryType::Regular, &index),
        ])
    }

    fn sri(bytes: &[u8]) -> String {
        format!("sha512-{}", BASE64.encode(Sha512::digest(bytes)))
    }

    fn installed(name: &str, version: &str, path: &str, tarball: &[u8]) -> InstalledPackage {
        let integrity = Some(sri(tarball));
        InstalledPackage {
            name: name.into(),
            version: version.into(),
            path: path.into(),
            integrity,
        }
    }

    fn package_json(deps: serde_json::Value) -> (&'static str, String) {
        (
            "package.json",
            json!({ "dependencies": deps, "devDependencies": { "devonly": "^1.0.0" } }).to_string(),
        )
    }

    #[tokio::test]
    async fn package_lock_v3_nests_conflicts_and_skips_brigadier() {
        let (a1, c1, c2) = (package("a@1.0.0"), package("c@1.0.0"), package("c@2.0.0"));
        let entry = |name: &str, version: &str, tarball: &[u8]| {
            json!({ "version": version, "integrity": sri(tarball),
                    "resolved": format!("https://registry.npmjs.org/{name}/-/{name}-{version}.tgz") })
        };
        let mut a = entry("a", "1.0.0", &a1);
        a["dependencies"] = json!({ "c": "^1.0.0" });
        let lock = json!({ "lockfileVersion": 3, "packages": {
            "": { "dependencies": { "@brigadecore/brigadier": "^2.5.0", "a": "^1.0.0", "c": "^2.0.0" } },
            "node_modules/@brigadecore/brigadier": { "version": "2.5.0",
                "resolved": "https://registry.npmjs.org/@brigadecore/brigadier/-/brigadier-2.5.0.tgz",
                "dependencies": { "@types/node": "^16.10.3", "typescript": "4.4.3" } },
            "node_modules/@types/node": entry("@types/node", "16.18.0", b"x"),
            "node_modules/typescript": entry("typescript", "4.4.3", b"x"),
            "node_modules/a": a,
            "node_modules/a/node_modules/c": entry("c", "1.0.0", &c1),
            "node_modules/c": entry("c", "2.0.0", &c2),
            "node_modules/devonly": { "version": "1.0.0", "dev": true, "resolved": "file:../devonly" },
        }});
        let deps = json!({ "@brigadecore/brigadier": "^2.5.0", "a": "^1.0.0", "c": "^2.0.0" });
        let files = vec![
            ("/a/-/a-1.0.0.tgz".to_string(), a1.clone()),
            ("/c/-/c-1.0.0.tgz".to_string(), c1.clone()),
            ("/c/-/c-2.0.0.tgz".to_string(), c2.clone()),
        ];
        let run = install_in(
            &[package_json(deps), ("package-lock.json", lock.to_string())],
            files,
            |_| {},
        )
        .await;

        let installation = run.result.as_ref().unwrap();
        assert_eq!(installation.lock, LockKind::PackageLock);
        assert_eq!(
            installation.packages,
            [
                installed("a", "1.0.0", "node_modules/a", &a1),
                installed("c", "1.0.0", "node_modules/a/node_modules/c", &c1),
                installed("c", "2.0.0", "node_modules/c", &c2),
            ]
        );
        assert_eq!(
            run.read("node_modules/a/index.js"),
            "module.exports = 'a@1.0.0';"
        );
        assert_eq!(
            run.read("node_modules/a/node_modules/c/index.js"),
            "module.exports = 'c@1.0.0';"
        );
        assert_eq!(
            run.read("node_modules/c/index.js"),
            "module.exports = 'c@2.0.0';"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(run.dest("node_modules/c/index.js")).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o644);
        }
        assert!(!run.exists("node_modules/typescript") && !run.exists("node_modules/@brigadecore"));
        assert_eq!(
            run.requests,
            ["/a/-/a-1.0.0.tgz", "/c/-/c-1.0.0.tgz", "/c/-/c-2.0.0.tgz"]
        );
    }

    #[tokio::test]
    async fn yarn_lock_v1_is_hoisted() {
        let (names, c1, c2) = (package("ung@4.6.0"), package("c@1.0.0"), package("c@2.1.0"));
        let yarn_lock = format!(
            r#"# yarn lockfile v1


"@brigadecore/brigadier@^2.5.0":
  version "2.5.0"
  resolved "https://registry.yarnpkg.com/@brigadecore/brigadier/-/brigadier-2.5.0.tgz#926dc00479a6f92816dec63f3c5270c98e6e6c86"
  integrity sha512-xJyY4Kq+9Spbl8gMTvXWDvyBYBaK7inExpcHYmKKKZxGZIFrVj6XXfTS9kyeRXo0iTJKWLfImdSz8x4c2aOzaQ==
  dependencies:
    "@types/node" "^16.10.3"
    typescript "4.4.3"

unique-names-generator@^4.4.0:
  version "4.6.0"
  resolved "https://registry.yarnpkg.com/unique-names-generator/-/unique-names-generator-4.6.0.tgz#852c1db8149815d6cf665a601820fe80ec2fbc37"
  integrity {}
  dependencies:
    "@scope/c" "^1.0.0"

"@scope/c@^1.0.0":
  version "1.0.0"
  resolved "https://registry.yarnpkg.com/@scope/c/-/c-1.0.0.tgz#0123"
  integrity "sha1-AAAA {}"

"@scope/c@^2.0.0", "@scope/c@^2.1.0":
  version "2.1.0"
  resolved "https://registry.yarnpkg.com/@scope/c/-/c-2.1.0.tgz#4567"
  integrity {}
  optionalDependencies:
    fsevents "^2.0.0"
"#,
            sri(&names),
            sri(&c1),
            sri(&c2)
        );
        let deps = json!({ "@brigadecore/brigadier": "^2.5.0", "unique-names-generator": "^4.4.0", "@scope/c": "^2.1.0" });
        let files = vec![
            (
                "/unique-names-generator/-/unique-names-generator-4.6.0.tgz".to_string(),
                names.clone(),
            ),
            ("/@scope/c/-/c-1.0.0.tgz".to_string(), c1.clone()),
            ("/@scope/c/-/c-2.1.0.tgz".to_string(), c2.clone()),
        ];
        let run = install_in(
            &[package_json(deps), ("yarn.lock", yarn_lock)],
            files,
            |_| {},
        )
        .await;

        let installation = run.result.as_ref().unwrap();
        assert_eq!(installation.lock, LockKind::YarnLock);
        let nested = "node_modules/unique-names-generator/node_modules/@scope/c";
        assert_eq!(
            installation.packages,
            [
                installed("@scope/c", "2.1.0", "node_modules/@scope/c", &c2),
                installed(
                    "unique-names-generator",
                    "4.6.0",
                    "node_modules/unique-names-generator",
                    &names
                ),
                installed("@scope/c", "1.0.0", nested, &c1),
            ]
        );
        assert_eq!(
            run.read("node_modules/@scope/c/index.js"),
            "module.exports = 'c@2.1.0';"
        );
        assert_eq!(
            run.read(&format!("{nested}/index.js")),
            "module.exports = 'c@1.0.0';"
        );
        assert_eq!(
            run.read("node_modules/unique-names-generator/index.js"),
            "module.exports = 'ung@4.6.0';"
        );
        assert!(
            !run.requests
                .iter()
                .any(|r| r.contains("brigadier") || r.contains("typescript"))
        );
        assert_eq!(run.requests.len(), 3);
    }

    #[tokio::test]
    async fn package_json_alone_resolves_against_the_registry() {
        let tarball = |name: &str, version: &str| {
            let base = name.rsplit('/').next().unwrap();
            format!("https://registry.npmjs.org/{name}/-/{base}-{version}.tgz")
        };
        let tarballs: BTreeMap<&str, Vec<u8>> = [
            ("lib-1.2.0", "lib@1.2.0"),
            ("lib-2.0.0", "lib@2.0.0"),
            ("dep-0.9.0", "dep@0.9.0"),
        ]
        .into_iter()
        .map(|(file, id)| (file, package(id)))
        .collect();
        let version = |name: &str, version: &str, file: &str, deps: serde_json::Value| {
            let integrity = tarballs.get(file).map(|t| sri(t)).unwrap_or_default();
            json!({ "version": version, "dependencies": deps, "dist": { "tarball": tarball(name, version), "integrity": integrity } })
        };
        let lib = json!({ "name": "@scope/lib", "dist-tags": { "latest": "2.0.0" }, "versions": {
            "1.0.0": version("@scope/lib", "1.0.0", "", json!({})),
            "1.2.0": version("@scope/lib", "1.2.0", "lib-1.2.0", json!({ "dep": "latest" })),
            "1.3.0-beta.1": version("@scope/lib", "1.3.0-beta.1", "", json!({})),
            "2.0.0": version("@scope/lib", "2.0.0", "lib-2.0.0", json!({})),
        }});
        // `latest` is not the highest version: the tag must be what decides.
        let dep = json!({ "name": "dep", "dist-tags": { "latest": "0.9.0" }, "versions": {
            "0.9.0": version("dep", "0.9.0", "dep-0.9.0", json!({ "@scope/lib": "^2.0.0", "brigadier": "*" })),
            "1.0.0": version("dep", "1.0.0", "", json!({})),
        }});
        let files = vec![
            ("/@scope%2flib".to_string(), lib.to_string().into_bytes()),
            ("/dep".to_string(), dep.to_string().into_bytes()),
            (
                "/@scope/lib/-/lib-1.2.0.tgz".to_string(),
                tarballs["lib-1.2.0"].clone(),
            ),
            (
                "/@scope/lib/-/lib-2.0.0.tgz".to_string(),
                tarballs["lib-2.0.0"].clone(),
            ),
            (
                "/dep/-/dep-0.9.0.tgz".to_string(),
                tarballs["dep-0.9.0"].clone(),
            ),
        ];
        let deps = json!({ "@scope/lib": "^1.0.0", "@brigadecore/brigadier": "^2" });
        let run = install_in(&[package_json(deps)], files, |_| {}).await;

        let installation = run.result.as_ref().unwrap();
        assert_eq!(installation.lock, LockKind::PackageJson);
        assert_eq!(
            installation.packages,
            [
                installed(
                    "@scope/lib",
                    "1.2.0",
                    "node_modules/@scope/lib",
                    &tarballs["lib-1.2.0"]
                ),
                installed("dep", "0.9.0", "node_modules/dep", &tarballs["dep-0.9.0"]),
                installed(
                    "@scope/lib",
                    "2.0.0",
                    "node_modules/dep/node_modules/@scope/lib",
                    &tarballs["lib-2.0.0"]
                ),
            ]
        );
        assert_eq!(
            run.read("node_modules/dep/node_modules/@scope/lib/index.js"),
            "module.exports = 'lib@2.0.0';"
        );
        // Packuments are fetched once each, and nothing for brigadier.
        assert_eq!(
            run.requests,
            [
                "/@scope%2flib",
                "/dep",
                "/@scope/lib/-/lib-1.2.0.tgz",
                "/dep/-/dep-0.9.0.tgz",
                "/@scope/lib/-/lib-2.0.0.tgz"
            ]
        );
    }

    /// A script depending on `evil@1.0.0`, locked to `resolved`.
    fn evil_lock(resolved: &str, integrity: &str) -> Vec<(&'static str, String)> {
        let lock = json!({ "lockfileVersion": 2, "packages": {
            "node_modules/evil": { "version": "1.0.0", "resolved": resolved, "integrity": integrity },
        }});
        vec![
            package_json(json!({ "evil": "^1.0.0" })),
            ("package-lock.json", lock.to_string()),
        ]
    }

    async fn run_evil(tarball: Vec<u8>, configure: impl FnOnce(&mut NpmConfig)) -> Run {
        let dir = evil_lock(
            "https://registry.npmjs.org/evil/-/evil-1.0.0.tgz",
            &sri(&tarball),
        );
        install_in(
            &dir,
            vec![("/evil/-/evil-1.0.0.tgz".into(), tarball)],
            configure,
        )
        .await
    }

    #[tokio::test]
    async fn unsafe_tarball_entries_are_refused() {
        let cases = [
            ("package/../../../escaped", EntryType::Regular, None),
            ("../escaped", EntryType::Regular, None),
            ("/tmp/escaped", EntryType::Regular, None),
            ("package/link", EntryType::Symlink, Some("symlink")),
            ("package/hard", EntryType::Link, Some("hard link")),
            ("package/fifo", EntryType::Fifo, Some("fifo")),
        ];
        for (path, kind, refused_kind) in cases {
            let tarball = tgz(&[
                ("package/index.js", EntryType::Regular, "ok"),
                (path, kind, "x"),
            ]);
            let run = run_evil(tarball, |_| {}).await;
            match (&run.result, refused_kind) {
                (Err(NpmError::PathEscape { package, path: p }), None) => {
                    assert_eq!((package.as_str(), p.as_str()), ("evil@1.0.0", path))
                }
                (
                    Err(NpmError::UnsafeEntry {
                        package,
                        path: p,
                        kind,
                    }),
                    Some(expected),
                ) => {
                    assert_eq!(
                        (package.as_str(), p.as_str(), kind.as_str()),
                        ("evil@1.0.0", path, expected)
                    )
                }
                (other, _) => panic!("{path}: {other:?}"),
            }
            assert!(!run.dest("escaped").exists() && !run.dest("node_modules/escaped").exists());
        }
    }

    #[tokio::test]
    async fn integrity_mismatch_is_refused() {
        let dir = evil_lock(
            "https://registry.npmjs.org/evil/-/evil-1.0.0.tgz",
            &format!("sha1-AAAA {}", sri(b"other")),
        );
        let tarball = package("evil@1.0.0");
        let run = install_in(
            &dir,
            vec![("/evil/-/evil-1.0.0.tgz".into(), tarball.clone())],
            |_| {},
        )
        .await;
        match &run.result {
            Err(NpmError::IntegrityMismatch {
                package,
                expected,
                actual,
            }) => {
                assert_eq!(
                    (package, expected, actual),
                    (&"evil@1.0.0".into(), &sri(b"other"), &sri(&tarball))
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(!run.exists("node_modules/evil"));
    }

    #[tokio::test]
    async fn tarball_over_the_cap_is_refused() {
        let run = run_evil(package("evil@1.0.0"), |config| {
            config.max_tarball_bytes = 100
        })
        .await;
        assert!(
            matches!(&run.result, Err(NpmError::TarballTooLarge { package, limit: 100 }) if package == "evil@1.0.0"),
            "{:?}",
            run.result
        );
    }

    #[tokio::test]
    async fn gzip_bomb_stops_at_the_tree_cap() {
        let bomb = tgz(&[("package/bomb", EntryType::Regular, &"a".repeat(8 << 20))]);
        assert!(bomb.len() < 64 << 10);
        let run = run_evil(bomb, |config| config.max_tree_bytes = 1 << 20).await;
        assert!(
            matches!(run.result, Err(NpmError::TreeTooLarge { limit: 0x10_0000 })),
            "{:?}",
            run.result
        );
        let written = std::fs::metadata(run.dest("node_modules/evil/bomb")).map_or(0, |m| m.len());
        assert!(written <= 1 << 20, "{written}");
    }

    #[tokio::test]
    async fn non_registry_sources_are_refused() {
        let sources = [
            "git+https://github.com/evil/evil.git#abc",
            "file:../x",
            "http://evil.example/x.tgz",
        ];
        for resolved in sources {
            let run = install_in(&evil_lock(resolved, ""), Vec::new(), |_| {}).await;
            assert!(
                matches!(&run.result, Err(NpmError::NonRegistrySource { package, resolved: r }) if package == "evil@1.0.0" && r == resolved),
                "{resolved}: {:?}",
                run.result
            );
            assert!(run.requests.is_empty());
        }
        let link = json!({ "lockfileVersion": 3, "packages": {
            "node_modules/evil": { "resolved": "../evil", "link": true },
        }});
        let dir = [
            package_json(json!({ "evil": "^1.0.0" })),
            ("package-lock.json", link.to_string()),
        ];
        let run = install_in(&dir, Vec::new(), |_| {}).await;
        assert!(
            matches!(&run.result, Err(NpmError::NonRegistrySource { resolved, .. }) if resolved == "../evil"),
            "{:?}",
            run.result
        );
        let dir = [(
            "package.json",
            json!({ "dependencies": { "evil": "github:evil/evil" } }).to_string(),
        )];
        let run = install_in(&dir, Vec::new(), |_| {}).await;
        assert!(
            matches!(&run.result, Err(NpmError::NonRegistrySource { resolved, .. }) if resolved == "github:evil/evil"),
            "{:?}",
            run.result
        );
    }

    #[test]
    fn source_urls_are_moved_onto_the_registry() {
        let registry = Url::parse("https://npm.example.com/api/npm").unwrap();
        let url = |resolved| {
            source_url("p@1", resolved, &registry)
                .map(|u| u.to_string())
                .map_err(|e| e.to_string())
        };
        assert_eq!(
            url("https://npm.example.com/api/npm/a/-/a-1.tgz").unwrap(),
            "https://npm.example.com/api/npm/a/-/a-1.tgz"
        );
        assert_eq!(
            url("https://registry.yarnpkg.com/@s/a/-/a-1.tgz#ab12").unwrap(),
            "https://npm.example.com/api/npm/@s/a/-/a-1.tgz"
        );
        assert_eq!(
            url("https://registry.npmjs.org/a/-/a-1.tgz").unwrap(),
            "https://npm.example.com/api/npm/a/-/a-1.tgz"
        );
        for refused in [
            "https://registry.npmjs.org.evil.com/a.tgz",
            "https://npm.example.com/api/other/a.tgz",
            "ftp://npm.example.com/api/npm/a",
        ] {
            assert_eq!(
                url(refused).unwrap_err(),
                format!(
                    "p@1 comes from {refused}; only packages from the npm registry can be installed"
                )
            );
        }
    }

    #[tokio::test]
    async fn the_token_is_required_by_the_test_registry() {
        let run = run_evil(package("evil@1.0.0"), |config| config.token = None).await;
        match run.result {
            Err(NpmError::Http {
                package,
                url,
                status,
            }) => {
                assert_eq!((package.as_str(), status), ("evil@1.0.0", 401));
                assert!(url.ends_with("/evil/-/evil-1.0.0.tgz"), "{url}");
            }
            other => panic!("{other:?}"),
        }
        let run = run_evil(package("evil@1.0.0"), |_| {}).await;
        assert_eq!(
            run.read("node_modules/evil/index.js"),
            "module.exports = 'evil@1.0.0';"
        );
    }

    #[tokio::test]
    async fn bad_locks_are_reported() {
        let v1 = json!({ "lockfileVersion": 1, "dependencies": {} }).to_string();
        let run = install_in(
            &[package_json(json!({ "a": "1" })), ("package-lock.json", v1)],
            Vec::new(),
            |_| {},
        )
        .await;
        let error = run.result.unwrap_err();
        assert!(matches!(
            error,
            NpmError::UnsupportedLockVersion { version: 1 }
        ));
        assert!(error.to_string().contains("npm 7"), "{error}");

        let yarn = "# yarn lockfile v1\n\na@^1:\n  version \"1.0.0\"\n      resolved \"x\"\n";
        let run = install_in(
            &[
                package_json(json!({ "a": "^1" })),
                ("yarn.lock", yarn.into()),
            ],
            Vec::new(),
            |_| {},
        )
        .await;
        assert!(
            matches!(&run.result, Err(NpmError::Lock { file, line: 5, .. }) if file == "yarn.lock"),
            "{:?}",
            run.result
        );

        let run = install_in(
            &[(
                "package.json",
                "{\n \"dependencies\": {\n  \"a\": 1 }}".into(),
            )],
            Vec::new(),
            |_| {},
        )
        .await;
        assert!(
            matches!(&run.result, Err(NpmError::Lock { file, line: 3, .. }) if file == "package.json"),
            "{:?}",
            run.result
        );
    }

    #[test]
    fn needs_install_ignores_builtins_and_dev_dependencies() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!needs_install(dir.path()).unwrap());
        let write = |value: serde_json::Value| {
            std::fs::write(dir.path().join("package.json"), value.to_string()).unwrap()
        };
        write(
            json!({ "dependencies": { "@brigadecore/brigadier": "^2", "brigadier": "^1" }, "devDependencies": { "x": "1" } }),
        );
        assert!(!needs_install(dir.path()).unwrap());
        write(json!({ "dependencies": { "@brigadecore/brigadier": "^2", "left-pad": "^1" } }));
        assert!(needs_install(dir.path()).unwrap());
    }
}
