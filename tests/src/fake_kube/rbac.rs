//! RBAC as the fake enforces it: one Role's rules, applied in every one of
//! the fake's namespaces, and nothing cluster-wide.

use serde::Deserialize;

/// One rule of an RBAC Role: `verbs` allowed on `resources` (with
/// subresources written `pods/log`) of the `apiGroups`, optionally only on
/// the `resourceNames`. `"*"` matches anything, as in Kubernetes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleRule {
    /// API groups; the core group is `""`.
    #[serde(default)]
    pub api_groups: Vec<String>,
    /// Resources such as `pods`, `pods/log`, `secrets`.
    #[serde(default)]
    pub resources: Vec<String>,
    /// Verbs such as `get`, `list`, `watch`, `create`, `update`, `patch`,
    /// `delete`.
    #[serde(default)]
    pub verbs: Vec<String>,
    /// If not empty, the rule only covers requests naming these objects.
    #[serde(default)]
    pub resource_names: Vec<String>,
}

#[derive(Deserialize)]
struct Manifest {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    rules: Vec<RoleRule>,
}

impl RoleRule {
    /// A rule for the core API group.
    pub fn new(verbs: &[&str], resources: &[&str]) -> RoleRule {
        RoleRule {
            api_groups: vec![String::new()],
            resources: resources.iter().map(|r| (*r).to_owned()).collect(),
            verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
            resource_names: Vec::new(),
        }
    }

    /// The rules of every `kind: Role` document in a YAML manifest (which
    /// may hold several documents separated by `---`, e.g. a ServiceAccount,
    /// a Role and a RoleBinding).
    ///
    /// # Panics
    ///
    /// If the YAML does not parse or holds no Role: the manifest is the
    /// test's input, and a silently empty rule set would deny everything.
    pub fn from_role_yaml(text: &str) -> Vec<RoleRule> {
        let mut rules = Vec::new();
        let mut roles = 0;
        for document in serde_norway::Deserializer::from_str(text) {
            let manifest = match Option::<Manifest>::deserialize(document) {
                Ok(manifest) => manifest,
                Err(e) => panic!("the Role manifest is not valid YAML: {e}"),
            };
            if let Some(manifest) = manifest.filter(|m| m.kind == "Role") {
                roles += 1;
                rules.extend(manifest.rules);
            }
        }
        assert!(roles > 0, "the manifest holds no document of kind Role");
        rules
    }

    /// Whether this rule allows `verb` on `resource` (`pods/log` for a
    /// subresource) of the API `group` (`""` for the core group), on the
    /// object `name` if any.
    pub fn allows(&self, verb: &str, group: &str, resource: &str, name: Option<&str>) -> bool {
        let any = |list: &[String], wanted: &str| list.iter().any(|x| x == "*" || x == wanted);
        let resource_matches = self.resources.iter().any(|r| {
            r == "*"
                || r == resource
                // "*/log" covers the log subresource of every resource.
                || r.strip_prefix("*/").is_some_and(|sub| {
                    resource.split_once('/').is_some_and(|(_, s)| s == sub)
                })
        });
        any(&self.api_groups, group)
            && any(&self.verbs, verb)
            && resource_matches
            && (self.resource_names.is_empty()
                || name.is_some_and(|n| self.resource_names.iter().any(|x| x == n)))
    }
}

/// Kubernetes' words for a refusal (k8s.io/apiserver's forbiddenMessage and
/// NewForbidden), so a client's error handling sees the real thing.
pub(crate) fn forbidden_message(
    user: &str,
    verb: &str,
    group: &str,
    resource: &str,
    subresource: Option<&str>,
    namespace: Option<&str>,
    name: Option<&str>,
) -> String {
    let full = match subresource {
        Some(sub) => format!("{resource}/{sub}"),
        None => resource.to_owned(),
    };
    let scope = match namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_owned(),
    };
    let reason = format!(
        "User \"{user}\" cannot {verb} resource \"{full}\" in API group \"{group}\" {scope}"
    );
    let qualified = if group.is_empty() {
        resource.to_owned()
    } else {
        format!("{resource}.{group}")
    };
    match name {
        Some(name) => format!("{qualified} \"{name}\" is forbidden: {reason}"),
        None => format!("{qualified} is forbidden: {reason}"),
    }
}

/// The refusal of a path that names no resource (e.g. `/healthz`).
pub(crate) fn forbidden_path_message(user: &str, verb: &str, path: &str) -> String {
    format!("forbidden: User \"{user}\" cannot {verb} path \"{path}\"")
}
