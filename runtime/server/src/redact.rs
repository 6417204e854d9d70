//! Secret redaction: the values of a project's secrets never leave the
//! server in a log line or a summary; each is replaced by `***`.

use std::borrow::Cow;

use aho_corasick::{AhoCorasick, MatchKind};

/// What replaces a secret's value.
pub const MASK: &str = "***";

/// Replaces the values of a project's secrets in text.
#[derive(Debug, Default)]
pub struct Redactor {
    values: Values,
}

#[derive(Debug, Default)]
enum Values {
    /// The project has no secrets.
    #[default]
    None,
    /// Every value at once.
    Matcher(AhoCorasick),
    /// The values could not be compiled into a matcher (beyond its size
    /// limits): every line is hidden whole rather than shown unmasked.
    Unmatchable,
}

impl Redactor {
    /// A redactor for these secret values (empty ones are ignored: they
    /// would match everywhere and hide nothing).
    pub fn new<'a>(values: impl IntoIterator<Item = &'a String>) -> Self {
        let values: Vec<&str> = values
            .into_iter()
            .filter(|v| !v.is_empty())
            .map(String::as_str)
            .collect();
        if values.is_empty() {
            return Self::default();
        }
        // One pass over the text, the longest value winning where several
        // start at the same place: masking value by value re-read the masks
        // already written, so values such as "*" and "**" grew a line
        // exponentially (found by the `redactor` fuzz target).
        let values = match AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&values)
        {
            Ok(matcher) => Values::Matcher(matcher),
            Err(e) => {
                tracing::error!(error = %e, "secret values cannot be matched; every log line of the project is hidden");
                Values::Unmatchable
            }
        };
        Self { values }
    }

    /// `text` with every secret value replaced by [`MASK`].
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let values = match &self.values {
            Values::None => return Cow::Borrowed(text),
            Values::Unmatchable => return Cow::Borrowed(MASK),
            Values::Matcher(values) => values,
        };
        if !values.is_match(text) {
            return Cow::Borrowed(text);
        }
        let mut masked = String::with_capacity(text.len());
        values.replace_all_with(text, &mut masked, |_, _, masked| {
            masked.push_str(MASK);
            true
        });
        Cow::Owned(masked)
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

    #[test]
    fn values_that_spell_the_mask_do_not_grow_the_line() {
        // The `redactor` fuzz target's finding: each of these values used
        // to be masked in turn over the previous masks, tripling the line.
        let secrets: Vec<String> = (0..40).map(|i| "*".repeat(1 + i % 3)).collect();
        let redactor = Redactor::new(&secrets);
        assert_eq!(redactor.redact("a*b**c"), "a***b***c");
    }

    #[test]
    fn overlapping_values_are_masked_where_they_start_first() {
        let secrets = ["abc".to_string(), "bcd".to_string(), "cd".to_string()];
        let redactor = Redactor::new(&secrets);
        assert_eq!(redactor.redact("xabcdx bcd"), "x***dx ***");
    }
}
