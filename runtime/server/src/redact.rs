//! Secret redaction: the values of a project's secrets never leave the
//! server in a log line or a summary; each is replaced by `***`.

use std::borrow::Cow;

/// What replaces a secret's value.
pub const MASK: &str = "***";

/// Replaces the values of a project's secrets in text.
#[derive(Debug, Default)]
pub struct Redactor {
    /// Longest first, so that a secret containing another is masked whole.
    values: Vec<String>,
}

impl Redactor {
    /// A redactor for these secret values (empty ones are ignored: they
    /// would match everywhere and hide nothing).
    pub fn new<'a>(values: impl IntoIterator<Item = &'a String>) -> Self {
        let mut values: Vec<String> = values
            .into_iter()
            .filter(|v| !v.is_empty())
            .cloned()
            .collect();
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        Self { values }
    }

    /// `text` with every secret value replaced by [`MASK`].
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut text = Cow::Borrowed(text);
        for value in &self.values {
            if text.contains(value.as_str()) {
                text = Cow::Owned(text.replace(value.as_str(), MASK));
            }
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_secret_value_is_masked() {
        let secrets = [
            "hunter2".to_string(),
            "hunter2-extended".to_string(),
            String::new(),
        ];
        let redactor = Redactor::new(&secrets);
        assert_eq!(
            redactor.redact("token hunter2-extended and hunter2 and hunter"),
            "token *** and *** and hunter"
        );
        assert!(matches!(redactor.redact("nothing here"), Cow::Borrowed(_)));
    }
}
