//! A script's dependencies, prepared once per project version: npm packages
//! fetched by the host ([`crate::npm`]), the script bundled with them and its
//! own modules ([`crate::bundle`]), the result kept in memory and on disk.
//!
//! Every event asks [`Dependencies::prepare`] for its script. The answer is
//! keyed by the script, `package.json` and the lock file; an entry also
//! lists the config directory's modules it was made from with their hashes,
//! checked on each use, so an edited module makes a new bundle. The npm tree
//! is cached apart, by `package.json`, the lock and the registry, so editing
//! a module never fetches again. A warm event reads three small files and
//! hashes the modules it lists; it never parses, resolves or fetches.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::bundle::{self, BundleError};
use crate::cache_files;
use crate::npm::{self, NpmConfig, NpmError};
use crate::script::ScriptSource;

/// The files npm dependencies are read from, in the config files directory.
const PACKAGE_FILES: [&str; 3] = ["package.json", "package-lock.json", "yarn.lock"];

/// Bundles kept in memory. A server runs many projects; each entry holds a
/// script of at most 8 MiB (most are kilobytes), and an evicted one is read
/// back from disk.
const MAX_MEMORY_ENTRIES: usize = 256;

/// A config file read to key or check a bundle. Package files and modules
/// are kilobytes; a file this large is refused rather than hashed on every
/// event.
const MAX_CONFIG_FILE_BYTES: u64 = 8 * 1024 * 1024;

/// How much of the cache directory prepared scripts may take: the oldest
/// (by last use) are removed past it. Entries used within `grace` are never
/// removed, so that another process sharing the cache (two `mizzen run`s)
/// never loses the tree it is bundling from.
#[derive(Debug, Clone, Copy)]
pub struct CacheBudget {
    /// Bundles (`bundles/`): a bundle is at most 8 MiB, most are under
    /// 100 KiB; 512 MiB keeps thousands of project versions.
    pub bundle_bytes: u64,
    /// Unpacked npm trees (`npm/`): a tree is at most 64 MiB (the
    /// installer's cap), most are a few MiB; 2 GiB keeps hundreds.
    pub package_bytes: u64,
    /// How long a used entry is safe from removal: far longer than any
    /// bundling takes.
    pub grace: std::time::Duration,
}

impl Default for CacheBudget {
    fn default() -> Self {
        Self {
            bundle_bytes: 512 * 1024 * 1024,
            package_bytes: 2 * 1024 * 1024 * 1024,
            grace: std::time::Duration::from_secs(300),
        }
    }
}

/// An npm tree's record beside it (`npm/<key>.json`).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct TreeRecord {
    installation: npm::Installation,
    /// The tree's unpacked size, counted against [`CacheBudget`].
    bytes: u64,
}

/// A registry that does not answer within this is down: the event fails
/// saying so rather than waiting on.
const REGISTRY_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// One request (a packument, or a tarball of at most 16 MiB): minutes even
/// on a slow link; a registry that trickles bytes cannot hold a worker
/// longer.
const REGISTRY_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// The name of the project secret that holds a private registry's token.
pub const NPM_TOKEN_SECRET: &str = "npmToken";

/// Why a script's dependencies could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum DependencyError {
    /// Fetching the npm packages failed. (Not a `source`: the message says
    /// it, and an error chain would say it twice.)
    #[error("installing the script's npm dependencies failed: {0}")]
    Npm(NpmError),
    /// Bundling failed.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// A config file could not be read or written.
    #[error("{path}: {message}")]
    Files {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
}

impl From<NpmError> for DependencyError {
    fn from(error: NpmError) -> Self {
        Self::Npm(error)
    }
}

/// Where an event's config files are: a directory (a checkout, or the
/// project directory of a local run) and the project's inline
/// `defaultConfigFiles` (a file in the directory wins, as in Brigade).
#[derive(Debug, Clone, Copy)]
pub struct ConfigFiles<'a> {
    /// The config files directory, when there is one.
    pub dir: Option<&'a Path>,
    /// The project's `defaultConfigFiles`.
    pub inline: &'a BTreeMap<String, String>,
}

impl ConfigFiles<'_> {
    fn read(&self, name: &str) -> Result<Option<Vec<u8>>, DependencyError> {
        if let Some(dir) = self.dir {
            let path = dir.join(name);
            match std::fs::metadata(&path) {
                Ok(meta) if meta.is_file() => {
                    if meta.len() > MAX_CONFIG_FILE_BYTES {
                        return Err(DependencyError::Files {
                            path: name.into(),
                            message: format!(
                                "the file is {} bytes; the limit is {MAX_CONFIG_FILE_BYTES}",
                                meta.len()
                            ),
                        });
                    }
                    return std::fs::read(&path)
                        .map(Some)
                        .map_err(|e| DependencyError::Files {
                            path: name.into(),
                            message: e.to_string(),
                        });
                }
                _ => {}
            }
        }
        Ok(self.inline.get(name).map(|text| text.as_bytes().to_vec()))
    }
}

/// What [`Dependencies::prepare`] gives an event.
#[derive(Debug, Clone)]
pub struct PreparedScript {
    /// The script to run (bundled, or as it was when it needs nothing).
    pub script: ScriptSource,
    /// What the event's log should say about its dependencies.
    pub notes: Vec<String>,
}

/// One prepared script, as kept in memory and on disk.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Entry {
    /// The config directory's files the bundle was made from, with the
    /// SHA-256 of each.
    files: Vec<(String, String)>,
    script: ScriptSource,
    /// The packages installed, `name@version`, for the log.
    packages: Vec<String>,
    /// How the packages were chosen (`package-lock.json`, `yarn.lock`, or
    /// ranges resolved against the registry).
    lock: String,
}

/// Prepares scripts' dependencies; one per process, shared by its events.
pub struct Dependencies {
    /// Made at the first fetch: most scripts never fetch.
    client: std::sync::OnceLock<reqwest::Client>,
    registry: url::Url,
    cache_dir: Option<PathBuf>,
    budget: CacheBudget,
    memory: Mutex<HashMap<[u8; 32], Arc<Entry>>>,
    /// One preparation of each project version at a time: its first events
    /// arriving together fetch once, and the others find the entry it left.
    /// Different versions (other tenants) prepare side by side.
    preparing: Mutex<HashMap<[u8; 32], std::sync::Weak<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for Dependencies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dependencies")
            .field("registry", &self.registry.as_str())
            .field("cache_dir", &self.cache_dir)
            .finish()
    }
}

impl Dependencies {
    /// Fetches from `registry` (npm's public registry when `None`) and keeps
    /// packages and bundles under `cache_dir/npm` and `cache_dir/bundles`
    /// (nothing on disk when `None`).
    pub fn new(registry: Option<url::Url>, cache_dir: Option<PathBuf>) -> Self {
        let registry = registry.unwrap_or_else(|| NpmConfig::default().registry);
        Self {
            client: std::sync::OnceLock::new(),
            registry,
            cache_dir,
            budget: CacheBudget::default(),
            memory: Mutex::new(HashMap::new()),
            preparing: Mutex::new(HashMap::new()),
        }
    }

    /// The same, keeping the cache within `budget`.
    pub fn with_budget(mut self, budget: CacheBudget) -> Self {
        self.budget = budget;
        self
    }

    /// The registry in `$MIZZEN_NPM_REGISTRY`, if it is set.
    pub fn registry_from_env() -> Result<Option<url::Url>, String> {
        match std::env::var("MIZZEN_NPM_REGISTRY") {
            Ok(text) if !text.is_empty() => url::Url::parse(&text)
                .map(Some)
                .map_err(|e| format!("MIZZEN_NPM_REGISTRY={text:?} is not a URL: {e}")),
            _ => Ok(None),
        }
    }

    /// The script an event runs: `script` bundled with its modules and npm
    /// packages, from the cache when this project version was prepared
    /// before. `token` is the project's `npmToken` secret.
    pub async fn prepare(
        &self,
        files: ConfigFiles<'_>,
        script: ScriptSource,
        token: Option<&str>,
    ) -> Result<PreparedScript, DependencyError> {
        if script.language() == crate::script::Language::Wasm {
            return Ok(PreparedScript {
                script,
                notes: vec![],
            });
        }
        let mut key = Sha256::new();
        key.update(script.key());
        key.update(self.registry.as_str().as_bytes());
        let mut package_files = BTreeMap::new();
        for name in PACKAGE_FILES {
            let bytes = files.read(name)?;
            key.update([u8::from(bytes.is_some())]);
            if let Some(bytes) = &bytes {
                key.update((bytes.len() as u64).to_le_bytes());
                key.update(bytes);
                package_files.insert(name, bytes.clone());
            }
        }
        let key: [u8; 32] = key.finalize().into();
        if let Some(entry) = self.cached(&key, &files)? {
            return Ok(entry_notes(&entry, true));
        }
        let lock = {
            let mut preparing = self.preparing.lock().expect("not poisoned");
            preparing.retain(|_, lock| lock.strong_count() > 0);
            match preparing.get(&key).and_then(std::sync::Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    let lock = Arc::new(tokio::sync::Mutex::new(()));
                    preparing.insert(key, Arc::downgrade(&lock));
                    lock
                }
            }
        };
        let _one = lock.lock().await;
        if let Some(entry) = self.cached(&key, &files)? {
            return Ok(entry_notes(&entry, true));
        }
        let entry = self
            .make(files, &package_files, script, token)
            .await
            .map(Arc::new)?;
        self.keep(key, entry.clone());
        Ok(entry_notes(&entry, false))
    }

    /// The entry for `key`, from memory or disk, when the files it was
    /// made from are unchanged.
    fn cached(
        &self,
        key: &[u8; 32],
        files: &ConfigFiles<'_>,
    ) -> Result<Option<Arc<Entry>>, DependencyError> {
        let remembered = self.memory.lock().expect("not poisoned").get(key).cloned();
        let entry = match remembered {
            Some(entry) => entry,
            None => {
                let Some(path) = self.entry_path(key) else {
                    return Ok(None);
                };
                let Some(entry) = std::fs::read(&path)
                    .ok()
                    .and_then(|bytes| serde_json::from_slice::<Entry>(&bytes).ok())
                else {
                    return Ok(None);
                };
                cache_files::touch(&path);
                let entry = Arc::new(entry);
                self.remember(*key, entry.clone());
                entry
            }
        };
        for (name, hash) in &entry.files {
            let now = files
                .read(name)?
                .map(|bytes| hex::encode(Sha256::digest(bytes)));
            if now.as_deref() != Some(hash.as_str()) {
                return Ok(None);
            }
        }
        Ok(Some(entry))
    }

    fn remember(&self, key: [u8; 32], entry: Arc<Entry>) {
        let mut memory = self.memory.lock().expect("not poisoned");
        if memory.len() >= MAX_MEMORY_ENTRIES {
            // Any one: a dropped entry is read back from disk.
            if let Some(victim) = memory.keys().next().copied() {
                memory.remove(&victim);
            }
        }
        memory.insert(key, entry);
    }

    fn entry_path(&self, key: &[u8; 32]) -> Option<PathBuf> {
        let dir = self.cache_dir.as_ref()?;
        Some(
            dir.join("bundles")
                .join(format!("{}.json", hex::encode(key))),
        )
    }

    fn keep(&self, key: [u8; 32], entry: Arc<Entry>) {
        if let Some(path) = self.entry_path(&key) {
            // Written aside and renamed, so a reader never sees half a file;
            // a failure only costs the next process a bundling.
            let written = serde_json::to_vec(&*entry).ok().and_then(|bytes| {
                let dir = path.parent()?;
                std::fs::create_dir_all(dir).ok()?;
                let mut file = tempfile::NamedTempFile::new_in(dir).ok()?;
                std::io::Write::write_all(&mut file, &bytes).ok()?;
                file.persist(&path).ok()
            });
            if written.is_none() {
                tracing::warn!(path = %path.display(), "could not keep a prepared script on disk");
            }
            if let Some(dir) = path.parent() {
                cache_files::sweep(
                    dir,
                    "json",
                    self.budget.bundle_bytes,
                    self.budget.grace,
                    |entry| std::fs::metadata(entry).ok().map(|m| m.len()),
                );
            }
        }
        self.remember(key, entry);
    }

    /// Installs the packages and bundles the script.
    async fn make(
        &self,
        files: ConfigFiles<'_>,
        package_files: &BTreeMap<&str, Vec<u8>>,
        script: ScriptSource,
        token: Option<&str>,
    ) -> Result<Entry, DependencyError> {
        // The bundler resolves on a real directory: the config directory, or
        // the inline files written out.
        let scratch;
        let config_dir = match files.dir {
            Some(dir) => dir.to_path_buf(),
            None => {
                scratch = tempfile::tempdir().map_err(|e| DependencyError::Files {
                    path: "(scratch directory)".into(),
                    message: e.to_string(),
                })?;
                write_inline(scratch.path(), files.inline)?;
                scratch.path().to_path_buf()
            }
        };
        let mut installed = None;
        let mut packages = vec![];
        let mut lock = String::new();
        let mut _installed_scratch = None;
        if package_files.contains_key("package.json") && npm::needs_install(&config_dir)? {
            let (dir, installation) = self
                .install(&config_dir, package_files, token, &mut _installed_scratch)
                .await?;
            packages = installation
                .packages
                .iter()
                .map(|p| format!("{}@{}", p.name, p.version))
                .collect();
            lock = installation.lock.to_string();
            installed = Some(dir);
        }
        let bundled = tokio::task::spawn_blocking({
            let config_dir = config_dir.clone();
            let script = script.clone();
            move || bundle::bundle(&config_dir, installed.as_deref(), &script)
        })
        .await
        .map_err(|e| DependencyError::Files {
            path: "(bundler)".into(),
            message: e.to_string(),
        })??;
        let (script, used) = match bundled {
            Some(bundled) => (bundled.script, bundled.files),
            None => (script, vec![]),
        };
        let mut manifest = vec![];
        for name in used {
            let hash = files
                .read(&name)?
                .map(|bytes| hex::encode(Sha256::digest(bytes)))
                .unwrap_or_default();
            manifest.push((name, hash));
        }
        Ok(Entry {
            files: manifest,
            script,
            packages,
            lock,
        })
    }

    fn client(&self) -> &reqwest::Client {
        self.client.get_or_init(|| {
            // reqwest is built without a TLS provider of its own (no C
            // build); ring is the one the CLI installs too. Installing twice
            // is harmless.
            let _ = rustls::crypto::ring::default_provider().install_default();
            reqwest::Client::builder()
                .connect_timeout(REGISTRY_CONNECT_TIMEOUT)
                .timeout(REGISTRY_REQUEST_TIMEOUT)
                .build()
                .unwrap_or_default()
        })
    }

    /// The npm tree for these package files: from the cache, or installed
    /// into it (or into a scratch directory kept in `scratch` when there
    /// is no cache).
    async fn install(
        &self,
        config_dir: &Path,
        package_files: &BTreeMap<&str, Vec<u8>>,
        token: Option<&str>,
        scratch: &mut Option<tempfile::TempDir>,
    ) -> Result<(PathBuf, npm::Installation), DependencyError> {
        let mut key = Sha256::new();
        key.update(self.registry.as_str().as_bytes());
        for (name, bytes) in package_files {
            key.update(name.as_bytes());
            key.update((bytes.len() as u64).to_le_bytes());
            key.update(bytes);
        }
        let key = hex::encode(key.finalize());
        let config = NpmConfig {
            registry: self.registry.clone(),
            token: token.map(str::to_string),
            ..NpmConfig::default()
        };
        let files_error = |e: std::io::Error| DependencyError::Files {
            path: "(npm cache)".into(),
            message: e.to_string(),
        };
        let Some(cache) = &self.cache_dir else {
            let dir = tempfile::tempdir().map_err(files_error)?;
            let installation = npm::install(self.client(), config_dir, dir.path(), &config).await?;
            let path = dir.path().to_path_buf();
            *scratch = Some(dir);
            return Ok((path, installation));
        };
        let root = cache.join("npm");
        let done = root.join(&key);
        let record = root.join(format!("{key}.json"));
        if let Some(kept) = std::fs::read(&record)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<TreeRecord>(&bytes).ok())
            .filter(|_| done.is_dir())
        {
            cache_files::touch(&record);
            return Ok((done, kept.installation));
        }
        std::fs::create_dir_all(&root).map_err(files_error)?;
        let staging = tempfile::tempdir_in(&root).map_err(files_error)?;
        let installation = npm::install(self.client(), config_dir, staging.path(), &config).await?;
        // Another process may have finished the same tree first; either
        // copy is whole.
        let staged = staging.keep();
        if std::fs::rename(&staged, &done).is_err() {
            let _ = std::fs::remove_dir_all(&staged);
        }
        let kept = TreeRecord {
            bytes: tree_bytes(&done),
            installation,
        };
        let bytes = serde_json::to_vec(&kept).expect("serialisable");
        std::fs::write(&record, bytes).map_err(files_error)?;
        cache_files::sweep(
            &root,
            "json",
            self.budget.package_bytes,
            self.budget.grace,
            |record| {
                let kept: TreeRecord = serde_json::from_slice(&std::fs::read(record).ok()?).ok()?;
                Some(kept.bytes)
            },
        );
        Ok((done, kept.installation))
    }
}

/// The bytes of the files under `dir`.
fn tree_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => pending.push(entry.path()),
                Ok(_) => total += entry.metadata().map_or(0, |m| m.len()),
                Err(_) => {}
            }
        }
    }
    total
}

/// The inline config files, written into `dir` where it has no file of
/// that name (a repository's own files win, as in Brigade). Names that would
/// leave `dir` are refused by the project's own checks; they are skipped
/// here too.
pub(crate) fn write_inline(
    dir: &Path,
    inline: &BTreeMap<String, String>,
) -> Result<(), DependencyError> {
    for (name, text) in inline {
        let relative = Path::new(name);
        if relative.is_absolute()
            || relative
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            continue;
        }
        let path = dir.join(relative);
        if path.symlink_metadata().is_ok() {
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| DependencyError::Files {
                path: name.clone(),
                message: e.to_string(),
            })?;
        }
        std::fs::write(&path, text).map_err(|e| DependencyError::Files {
            path: name.clone(),
            message: e.to_string(),
        })?;
    }
    Ok(())
}

fn entry_notes(entry: &Entry, cached: bool) -> PreparedScript {
    let mut notes = vec![];
    if !entry.packages.is_empty() {
        let cached = if cached { " (cached)" } else { "" };
        let packages = entry.packages.join(", ");
        let count = entry.packages.len();
        notes.push(if entry.lock == npm::LockKind::PackageJson.to_string() {
            format!(
                "npm: {count} package(s) resolved from package.json's ranges{cached} (pin them with a package-lock.json): {packages}"
            )
        } else {
            format!("npm: {count} package(s) from {}{cached}: {packages}", entry.lock)
        });
    }
    PreparedScript {
        script: entry.script.clone(),
        notes,
    }
}
