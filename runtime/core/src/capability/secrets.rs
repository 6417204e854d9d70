//! `secret.get`: one of the project's secrets, if its script may read it
//! (`spec.workerTemplate.scriptSecrets`). A sandbox holds only those values;
//! of the others it knows the names, to say why one is refused.

use std::collections::{BTreeMap, BTreeSet};

use mizzen_host_api::types::{SecretRequest, SecretValue};
use mizzen_host_api::{ErrorCode, HostError, Op};

/// The operations this capability answers.
pub const OPS: &[Op] = &[Op::SecretGet];

/// The secrets of a worker's project as its script reaches them.
pub(crate) struct ScriptSecrets {
    project_id: String,
    readable: BTreeMap<String, String>,
    hidden: BTreeSet<String>,
}

impl ScriptSecrets {
    pub fn new(
        project_id: String,
        readable: BTreeMap<String, String>,
        hidden: BTreeSet<String>,
    ) -> Self {
        Self {
            project_id,
            readable,
            hidden,
        }
    }

    /// The reply to `secret.get`.
    pub fn get(&self, secret: &SecretRequest) -> Result<SecretValue, HostError> {
        if let Some(value) = self.readable.get(&secret.key) {
            return Ok(SecretValue {
                value: value.clone(),
            });
        }
        let key = &secret.key;
        Err(if self.hidden.contains(key) {
            HostError::new(
                ErrorCode::PermissionDenied,
                format!(
                    "project \"{}\" does not let its script read secret \"{key}\" (spec.workerTemplate.scriptSecrets); a job can still have it: environment: {{ NAME: \"${{{{ secrets.{key} }}}}\" }}",
                    self.project_id
                ),
            )
        } else {
            HostError::new(
                ErrorCode::NotFound,
                format!("project \"{}\" has no secret \"{key}\"", self.project_id),
            )
        })
    }
}
