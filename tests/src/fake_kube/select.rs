//! Label and field selectors, as list and watch requests carry them.

use serde_json::Value;

use super::store::Resource;

enum LabelRequirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed `labelSelector`: every requirement must hold.
pub(crate) struct LabelSelector(Vec<LabelRequirement>);

impl LabelSelector {
    pub(crate) fn parse(text: &str) -> Result<LabelSelector, String> {
        let mut requirements = Vec::new();
        for term in split_outside_parentheses(text) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let error = || format!("unable to parse requirement: {term:?}");
            let key = |k: &str| {
                let k = k.trim();
                if k.is_empty() || k.contains(char::is_whitespace) {
                    Err(error())
                } else {
                    Ok(k.to_owned())
                }
            };
            let requirement = if let Some(k) = term.strip_prefix('!') {
                LabelRequirement::NotExists(key(k)?)
            } else if let Some((k, set)) = term.split_once(" notin ") {
                LabelRequirement::NotIn(key(k)?, parse_set(set).ok_or_else(error)?)
            } else if let Some((k, set)) = term.split_once(" in ") {
                LabelRequirement::In(key(k)?, parse_set(set).ok_or_else(error)?)
            } else if let Some((k, v)) = term.split_once("!=") {
                LabelRequirement::NotEquals(key(k)?, v.trim().to_owned())
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                LabelRequirement::Equals(key(k)?, v.trim().to_owned())
            } else {
                LabelRequirement::Exists(key(term)?)
            };
            requirements.push(requirement);
        }
        Ok(LabelSelector(requirements))
    }

    pub(crate) fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        let label = |k: &str| labels.get(k).and_then(Value::as_str);
        self.0.iter().all(|requirement| match requirement {
            LabelRequirement::Equals(k, v) => label(k) == Some(v.as_str()),
            LabelRequirement::NotEquals(k, v) => label(k) != Some(v.as_str()),
            LabelRequirement::In(k, set) => label(k).is_some_and(|l| set.iter().any(|v| v == l)),
            LabelRequirement::NotIn(k, set) => {
                !label(k).is_some_and(|l| set.iter().any(|v| v == l))
            }
            LabelRequirement::Exists(k) => label(k).is_some(),
            LabelRequirement::NotExists(k) => label(k).is_none(),
        })
    }
}

fn parse_set(text: &str) -> Option<Vec<String>> {
    let inner = text.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some(
        inner
            .split(',')
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .collect(),
    )
}

fn split_outside_parentheses(text: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let mut depth = 0_u32;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&text[start..]);
    terms
}

/// A parsed `fieldSelector`: `field=value`, `field==value`, `field!=value`
/// terms, on the fields the real API server allows for the resource.
pub(crate) struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    pub(crate) fn parse(text: &str, resource: Resource) -> Result<FieldSelector, String> {
        let mut terms = Vec::new();
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (f, true, v)
            } else {
                return Err(format!(
                    "invalid selector: '{text}'; can't understand '{term}'"
                ));
            };
            let field = field.trim();
            if !resource.selectable_fields().contains(&field) {
                return Err(format!("field label not supported: {field}"));
            }
            terms.push((field.to_owned(), equal, value.trim().to_owned()));
        }
        Ok(FieldSelector(terms))
    }

    /// Selects one object by name, as a watch on `.../pods/NAME` does.
    pub(crate) fn name(name: &str) -> FieldSelector {
        FieldSelector(vec![("metadata.name".to_owned(), true, name.to_owned())])
    }

    pub(crate) fn and(mut self, other: FieldSelector) -> FieldSelector {
        self.0.extend(other.0);
        self
    }

    pub(crate) fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            let pointer = format!("/{}", field.replace('.', "/"));
            // A missing field compares as the empty string, as in Kubernetes.
            let actual = match object.pointer(&pointer) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Number(n)) => n.to_string(),
                _ => String::new(),
            };
            (actual == *value) == *equal
        })
    }
}
