//! Parsed project definitions, kept between events: every event's fan-out
//! and every worker needs its project's rules, and parsing the definition
//! each time cost more than the rest of accepting the event. Likewise each
//! project's secret redactor, built once per version of its secrets.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use mizzen_runtime::project::{Project, ProjectError};
use mizzen_runtime::redact::Redactor;
use serde_json::Value;
use tokio::sync::OnceCell;

/// Projects parsed from their stored definitions, by id.
#[derive(Default)]
pub struct ProjectCache {
    parsed: Mutex<HashMap<String, (Value, Arc<Project>)>>,
    redactors: Mutex<HashMap<String, (Secrets, BuiltOnce)>>,
}

type Secrets = BTreeMap<String, String>;
/// A redactor, built by the first event that asks for it.
type BuiltOnce = Arc<OnceCell<Arc<Redactor>>>;

impl ProjectCache {
    /// The project `document` defines, parsed once per version of it.
    pub fn parse(&self, id: &str, document: &Value) -> Result<Arc<Project>, ProjectError> {
        if let Some((cached, project)) = self.lock().get(id)
            && cached == document
        {
            return Ok(project.clone());
        }
        let project = Arc::new(Project::parse(
            Path::new(&format!("project \"{id}\"")),
            &document.to_string(),
        )?);
        self.lock()
            .insert(id.to_string(), (document.clone(), project.clone()));
        Ok(project)
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Value, Arc<Project>)>> {
        self.parsed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
