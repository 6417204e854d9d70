//! Secrets and a line of text (the input split at `\u{1}`: every part but
//! the last is a secret value): after redaction no secret value is left in
//! the line. Values containing the mask's `*` are left out of the check, as
//! the mask itself may spell them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mizzen_runtime::redact::Redactor;

fuzz_target!(|input: &str| {
    let mut parts: Vec<String> = input.split('\u{1}').map(str::to_string).collect();
    let text = parts.pop().unwrap_or_default();
    let redactor = Redactor::new(&parts);
    let redacted = redactor.redact(&text);
    for secret in parts.iter().filter(|s| !s.is_empty() && !s.contains('*')) {
        assert!(
            !redacted.contains(secret.as_str()),
            "secret {secret:?} survived in {redacted:?}"
        );
    }
});
