//! A small npm registry served by a test: packuments (`GET /name`) and
//! tarballs (`GET /name/-/file.tgz`) of the packages it is given, with
//! their real sha512 integrity, an optional token it insists on, and a count
//! of the requests it answered (a warm event must make none).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use sha2::{Digest, Sha512};

/// One version of a package.
#[derive(Debug, Clone)]
pub struct Package {
    /// Its name (`@scope/name` for a scoped one).
    pub name: String,
    /// Its version.
    pub version: String,
    /// Its dependencies (name → range).
    pub dependencies: BTreeMap<String, String>,
    /// Its tarball.
    pub tarball: Vec<u8>,
}

impl Package {
    /// `npm`'s integrity string of the tarball.
    pub fn integrity(&self) -> String {
        format!(
            "sha512-{}",
            base64::engine::general_purpose::STANDARD.encode(Sha512::digest(&self.tarball))
        )
    }

    fn file(&self) -> String {
        let base = self.name.rsplit('/').next().unwrap_or(&self.name);
        format!("{base}-{}.tgz", self.version)
    }
}

/// What a test tarball entry is.
#[derive(Debug, Clone, Copy)]
pub enum Entry<'a> {
    /// A regular file with this content.
    File(&'a [u8]),
    /// A symbolic link to this target.
    Symlink(&'a str),
    /// A hard link to this target.
    HardLink(&'a str),
}

/// A gzipped tarball of `entries` (path → entry), its headers written raw
/// so that hostile paths (`../x`, `/etc/x`) go in as they are.
pub fn tarball(entries: &[(&str, Entry<'_>)]) -> Vec<u8> {
    use flate2::{Compression, write::GzEncoder};
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
    for (path, entry) in entries {
        let mut header = tar::Header::new_gnu();
        header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        let data: &[u8] = match entry {
            Entry::File(data) => {
                header.set_entry_type(tar::EntryType::Regular);
                data
            }
            Entry::Symlink(target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_link_name_literal(target).unwrap();
                b""
            }
            Entry::HardLink(target) => {
                header.set_entry_type(tar::EntryType::Link);
                header.set_link_name_literal(target).unwrap();
                b""
            }
        };
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append(&header, data).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

/// A package whose `index.js` is `index` and whose package.json names it.
pub fn package(name: &str, version: &str, index: &str) -> Package {
    let manifest = format!(r#"{{"name":"{name}","version":"{version}","main":"index.js"}}"#);
    Package {
        name: name.into(),
        version: version.into(),
        dependencies: BTreeMap::new(),
        tarball: tarball(&[
            ("package/package.json", Entry::File(manifest.as_bytes())),
            ("package/index.js", Entry::File(index.as_bytes())),
        ]),
    }
}

/// The real packages Brigade's examples 09, 10, 12 and 13 use, from
/// `tests/fixtures/npm` (as the public registry serves them).
pub fn brigade_example_packages() -> Vec<Package> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/npm");
    let read = |file: &str| std::fs::read(dir.join(file)).expect("fixture tarball");
    let package = |name: &str, version: &str, deps: &[(&str, &str)], file: &str| Package {
        name: name.into(),
        version: version.into(),
        dependencies: deps
            .iter()
            .map(|(n, r)| (n.to_string(), r.to_string()))
            .collect(),
        tarball: read(file),
    };
    vec![
        package(
            "unique-names-generator",
            "4.4.0",
            &[],
            "unique-names-generator-4.4.0.tgz",
        ),
        package(
            "unique-names-generator",
            "4.6.0",
            &[],
            "unique-names-generator-4.6.0.tgz",
        ),
        package(
            "is-thirteen",
            "2.0.0",
            &[("noop3", "^13.7.2")],
            "is-thirteen-2.0.0.tgz",
        ),
        package("noop3", "13.8.1", &[], "noop3-13.8.1.tgz"),
    ]
}

struct Registry {
    base: String,
    packages: Vec<Package>,
    token: Option<String>,
    /// A package whose requests are never answered.
    stalled: Option<String>,
    requests: AtomicUsize,
}

/// A running registry; it stops when dropped.
pub struct NpmRegistry {
    /// Its base URL, ending in `/`.
    pub url: String,
    state: Arc<Registry>,
    _server: tokio::task::JoinHandle<()>,
}

impl NpmRegistry {
    /// Serves `packages` on a free loopback port, answering only requests
    /// that carry `token` when one is given.
    pub async fn start(packages: Vec<Package>, token: Option<&str>) -> Self {
        Self::start_stalling(packages, token, None).await
    }

    /// [`NpmRegistry::start`], never answering requests about package
    /// `stalled` (a registry that hangs for one tenant's package).
    pub async fn start_stalling(
        packages: Vec<Package>,
        token: Option<&str>,
        stalled: Option<&str>,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let state = Arc::new(Registry {
            base: url.clone(),
            packages,
            token: token.map(str::to_string),
            stalled: stalled.map(str::to_string),
            requests: AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .route("/{*path}", axum::routing::get(serve))
            .with_state(state.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url,
            state,
            _server: server,
        }
    }

    /// The requests answered so far.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }
}

async fn serve(
    State(registry): State<Arc<Registry>>,
    UrlPath(path): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    registry.requests.fetch_add(1, Ordering::SeqCst);
    if let Some(token) = &registry.token {
        let expected = format!("Bearer {token}");
        let sent = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if sent != Some(expected.as_str()) {
            return (StatusCode::UNAUTHORIZED, "a token is required").into_response();
        }
    }
    let path = percent_decode(&path);
    if let Some(stalled) = &registry.stalled
        && (path == *stalled || path.starts_with(&format!("{stalled}/")))
    {
        std::future::pending::<()>().await;
    }
    if let Some((name, file)) = path.split_once("/-/") {
        return match registry
            .packages
            .iter()
            .find(|p| p.name == name && p.file() == file)
        {
            Some(p) => Bytes::from(p.tarball.clone()).into_response(),
            None => StatusCode::NOT_FOUND.into_response(),
        };
    }
    let versions: BTreeMap<&str, serde_json::Value> = registry
        .packages
        .iter()
        .filter(|p| p.name == path)
        .map(|p| {
            (
                p.version.as_str(),
                serde_json::json!({
                    "name": p.name,
                    "version": p.version,
                    "dependencies": p.dependencies,
                    "dist": {
                        "tarball": format!("{}{}/-/{}", registry.base, p.name, p.file()),
                        "integrity": p.integrity(),
                    },
                }),
            )
        })
        .collect();
    if versions.is_empty() {
        return (StatusCode::NOT_FOUND, "no such package").into_response();
    }
    let latest = versions.keys().last().copied().unwrap_or_default();
    axum::Json(serde_json::json!({
        "name": path,
        "dist-tags": { "latest": latest },
        "versions": versions,
    }))
    .into_response()
}

/// `@scope%2fname` → `@scope/name`.
fn percent_decode(path: &str) -> String {
    path.replace("%2f", "/").replace("%2F", "/")
}
