//! Parsed project definitions, kept between events: every event's fan-out
//! and every worker needs its project's rules, and parsing the definition
//! each time cost more than the rest of accepting the event.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use mizzen_runtime::project::{Project, ProjectError};
use serde_json::Value;

/// Projects parsed from their stored definitions, by id.
#[derive(Default)]
pub struct ProjectCache {
    parsed: Mutex<HashMap<String, (Value, Arc<Project>)>>,
}

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

    /// Forgets a deleted project.
    pub fn forget(&self, id: &str) {
        self.lock().remove(id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Value, Arc<Project>)>> {
        self.parsed.lock().unwrap_or_else(|e| e.into_inner())
    }
}
