//! Parsed project definitions, kept between events: every event's fan-out
//! and every worker needs its project's rules, and parsing the definition
//! each time cost more than the rest of accepting the event. Likewise each
//! project's secret redactor, built once per version of its secrets.
//!
//! An event keeps a copy of its project's definition as it was when the
//! event was created. A compiled script given inline is megabytes of base64,
//! so that copy names it by its hash instead (`sha256:<hex>`, see
//! [`snapshot_of`]) and the store keeps each script once (`scripts`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use mizzen_runtime::dependencies::Dependencies;
use mizzen_runtime::project::{MODULE_SCRIPT, Project, ProjectError};
use mizzen_runtime::redact::Redactor;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

/// Projects parsed from their stored definitions, by id, and what prepares
/// their scripts' dependencies (once per version, for every event).
pub struct ProjectCache {
    parsed: Mutex<HashMap<String, Arc<Parsed>>>,
    redactors: Mutex<HashMap<String, (Secrets, BuiltOnce)>>,
    dependencies: Arc<Dependencies>,
}

impl Default for ProjectCache {
    /// Dependencies fetched from npm's registry, kept in memory only.
    fn default() -> Self {
        Self::new(Arc::new(Dependencies::new(None, None)))
    }
}

type Secrets = BTreeMap<String, String>;
/// A redactor, built by the first event that asks for it.
type BuiltOnce = Arc<OnceCell<Arc<Redactor>>>;

/// A version of a project: its definition, the copy of it its events
/// keep, and the project it defines.
pub struct Parsed {
    document: Value,
    /// The definition with an inline compiled script named by its hash.
    pub snapshot: Value,
    /// The project it defines.
    pub project: Arc<Project>,
}

/// Where a definition keeps an inline compiled script.
const MODULE_POINTER: [&str; 4] = [
    "spec",
    "workerTemplate",
    "defaultConfigFiles",
    MODULE_SCRIPT,
];

/// What names a compiled script by its hash in an event's copy.
const HASH_PREFIX: &str = "sha256:";

fn module_text(document: &Value) -> Option<&str> {
    MODULE_POINTER
        .iter()
        .try_fold(document, |value, key| value.get(key))?
        .as_str()
}

fn with_module_text(document: &Value, text: String) -> Value {
    let mut document = document.clone();
    if let Some(slot) = MODULE_POINTER
        .iter()
        .try_fold(&mut document, |value, key| value.get_mut(key))
    {
        *slot = Value::String(text);
    }
    document
}

/// The inline compiled script of a definition, with its hash: what the
/// store keeps when the project is saved.
pub fn module_script(document: &Value) -> Option<(String, &str)> {
    let text = module_text(document)?;
    let hash: String = Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Some((format!("{HASH_PREFIX}{hash}"), text))
}

/// The copy of a definition an event keeps: an inline compiled script is
/// named by its hash.
pub fn snapshot_of(document: &Value) -> Value {
    match module_script(document) {
        Some((hash, _)) => with_module_text(document, hash),
        None => document.clone(),
    }
}

/// The hash an event's copy names its compiled script by, if it does.
pub fn module_hash(snapshot: &Value) -> Option<&str> {
    module_text(snapshot).filter(|text| text.starts_with(HASH_PREFIX))
}

impl ProjectCache {
    /// An empty cache whose projects' dependencies `dependencies` prepares.
    pub fn new(dependencies: Arc<Dependencies>) -> Self {
        Self {
            parsed: Mutex::default(),
            redactors: Mutex::default(),
            dependencies,
        }
    }

    /// What prepares the projects' scripts' dependencies.
    pub fn dependencies(&self) -> &Arc<Dependencies> {
        &self.dependencies
    }

    /// The project `document` (a stored definition) defines, parsed once
    /// per version of it.
    pub fn parse(&self, id: &str, document: &Value) -> Result<Arc<Parsed>, ProjectError> {
        if let Some(parsed) = self.lock().get(id)
            && parsed.document == *document
        {
            return Ok(parsed.clone());
        }
        self.insert(id, document.clone(), snapshot_of(document))
    }

    /// The project an event's copy of its definition defines, when this
    /// version is parsed already.
    pub fn cached_snapshot(&self, id: &str, snapshot: &Value) -> Option<Arc<Project>> {
        self.lock()
            .get(id)
            .filter(|parsed| parsed.snapshot == *snapshot)
            .map(|parsed| parsed.project.clone())
    }

    /// Parses an event's copy of its definition, its compiled script put
    /// back in (`text`, from the store).
    pub fn parse_snapshot(
        &self,
        id: &str,
        snapshot: &Value,
        module_text: Option<String>,
    ) -> Result<Arc<Project>, ProjectError> {
        let document = match module_text {
            Some(text) => with_module_text(snapshot, text),
            None => snapshot.clone(),
        };
        Ok(self.insert(id, document, snapshot.clone())?.project.clone())
    }

    fn insert(
        &self,
        id: &str,
        document: Value,
        snapshot: Value,
    ) -> Result<Arc<Parsed>, ProjectError> {
        let project = Arc::new(Project::parse(
            Path::new(&format!("project \"{id}\"")),
            &document.to_string(),
        )?);
        let parsed = Arc::new(Parsed {
            document,
            snapshot,
            project,
        });
        self.lock().insert(id.to_string(), parsed.clone());
        Ok(parsed)
    }

    /// The redactor for project `id` with these secrets: built once per
    /// version of them, on a blocking thread (its cost is linear in the
    /// values, up to `MAX_PROJECT_SECRETS_BYTES`, too long for a thread that
    /// serves others), and shared by the events that ask meanwhile.
    pub async fn redactor(&self, id: &str, secrets: &Secrets) -> Arc<Redactor> {
        let cell = {
            let mut redactors = self.lock_redactors();
            match redactors.get(id) {
                Some((cached, cell)) if cached == secrets => cell.clone(),
                _ => {
                    let cell = Arc::new(OnceCell::new());
                    redactors.insert(id.to_string(), (secrets.clone(), cell.clone()));
                    cell
                }
            }
        };
        cell.get_or_init(|| async {
            let values: Vec<String> = secrets.values().cloned().collect();
            let build = tokio::task::spawn_blocking(move || Redactor::new(&values));
            // A panic while building is a bug; the worker's task ends with it
            // as it would had it built the redactor itself.
            Arc::new(
                build
                    .await
                    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())),
            )
        })
        .await
        .clone()
    }

    /// Forgets a deleted project.
    pub fn forget(&self, id: &str) {
        self.lock().remove(id);
        self.lock_redactors().remove(id);
    }

    fn lock_redactors(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Secrets, BuiltOnce)>> {
        self.redactors.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Parsed>>> {
        self.parsed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event's copy of a definition names its inline module by hash, and
    /// the module put back from the store gives the project the definition
    /// gives; a definition without one is its own copy.
    #[test]
    fn an_events_copy_names_its_module_by_hash() {
        // (module (memory (export "memory") 1) (func (export "_start")))
        let module = "AGFzbQEAAAABBAFgAAADAgEABQMBAAEHEwIGbWVtb3J5AgAGX3N0YXJ0AAAKBAECAAs=";
        let document = serde_json::json!({
            "apiVersion": "brigade.sh/v2", "kind": "Project",
            "metadata": {"id": "wasm"},
            "spec": {"workerTemplate": {"defaultConfigFiles": {"brigade.wasm": module}}},
        });
        let cache = ProjectCache::default();
        let parsed = cache.parse("wasm", &document).unwrap();
        let hash = module_hash(&parsed.snapshot)
            .expect("named by hash")
            .to_string();
        assert!(
            hash.starts_with("sha256:") && hash.len() == 7 + 64,
            "{hash}"
        );
        assert!(!parsed.snapshot.to_string().contains(module));
        assert_eq!(module_script(&document), Some((hash.clone(), module)));
        // A worker that finds the version parsed already.
        let cached = cache.cached_snapshot("wasm", &parsed.snapshot).unwrap();
        assert!(Arc::ptr_eq(&cached, &parsed.project));
        // One in another process: the module put back.
        let fresh = ProjectCache::default();
        let project = fresh
            .parse_snapshot("wasm", &parsed.snapshot, Some(module.to_string()))
            .unwrap();
        assert_eq!(*project, *parsed.project);
        let plain = serde_json::json!({"apiVersion": "brigade.sh/v2", "kind": "Project",
            "metadata": {"id": "js"}, "spec": {"workerTemplate": {}}});
        assert_eq!(snapshot_of(&plain), plain);
        assert_eq!(module_hash(&plain), None);
    }

    #[tokio::test]
    async fn a_redactor_is_built_once_per_version_of_a_projects_secrets() {
        let cache = ProjectCache::default();
        let one = BTreeMap::from([("token".to_string(), "hunter2".to_string())]);
        let first = cache.redactor("vault", &one).await;
        assert_eq!(first.redact("a hunter2"), "a ***");
        // The same secrets: the same redactor, concurrently too.
        let (a, b) = tokio::join!(cache.redactor("vault", &one), cache.redactor("vault", &one));
        assert!(Arc::ptr_eq(&first, &a) && Arc::ptr_eq(&first, &b));
        // Changed secrets: a new one, which masks the new value.
        let two = BTreeMap::from([("token".to_string(), "swordfish".to_string())]);
        let second = cache.redactor("vault", &two).await;
        assert!(!Arc::ptr_eq(&first, &second));
        assert_eq!(second.redact("hunter2 swordfish"), "hunter2 ***");
        // Another project with the same secrets has its own.
        assert!(!Arc::ptr_eq(&second, &cache.redactor("other", &two).await));
        // A deleted project's is forgotten.
        cache.forget("vault");
        assert!(!Arc::ptr_eq(&second, &cache.redactor("vault", &two).await));
    }
}
