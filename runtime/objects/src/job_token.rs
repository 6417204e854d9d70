//! Job tokens: what a job's own helper (on Kubernetes, Mizzen's image beside
//! the job's containers) shows the server to restore and save that job's
//! artifacts and caches, and nothing else.
//!
//! A token is signed, not stored: `mzjob1.<claim>.<signature>`, the claim
//! (event, job, expiry) in base64url JSON and the signature an HMAC-SHA256
//! of it under the server's key, which every replica shares. So any replica
//! checks a token without a lookup, a token for one job opens nothing of
//! another job, event or project, and it expires on its own.
//!
//! A helper's save answers with a *receipt* under the same key: the tree it
//! stored, for which entry of which job. The executor, which alone knows
//! how the job ended, keeps the trees whose receipts check — so neither the
//! helper nor the job's own containers decide what is kept.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::Digest;

/// What every job token starts with (and its format's version).
const TOKEN_PREFIX: &str = "mzjob1.";

/// The longest token read: a claim names an event id (a UUID) and a job name
/// (at most 63 bytes), so a real token is under 300 bytes; anything far
/// longer is refused before it is decoded.
const MAX_TOKEN_BYTES: usize = 1024;

/// The key's length: HMAC-SHA256's block of 256 bits is all it can use.
pub const JOB_TOKEN_KEY_BYTES: usize = 32;

/// Who a token speaks for: one job of one event, until `expires`, with the
/// quotas its event's project has (signed with it, so that the server needs
/// no lookup of the project's limits to enforce them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobClaim {
    /// The event's id.
    #[serde(rename = "e")]
    pub event_id: String,
    /// The event's project: the scope of its caches.
    #[serde(rename = "p")]
    pub project_id: String,
    /// The job's name.
    #[serde(rename = "j")]
    pub job: String,
    /// Seconds since the Unix epoch after which the token is refused.
    #[serde(rename = "x")]
    pub expires: i64,
    /// Bytes the event's artifacts may hold in all.
    #[serde(rename = "a")]
    pub artifact_bytes: u64,
    /// Bytes the project's caches may hold in all.
    #[serde(rename = "c")]
    pub cache_bytes: u64,
}

/// A tree a helper stored for a job: for which of the job's saves (its
/// index in the job's `artifacts.save`, then its `caches`) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The save's index.
    pub save: usize,
    /// The tree's manifest.
    pub tree: Digest,
    /// Its bytes.
    pub bytes: u64,
    /// Its files.
    pub files: u64,
}

impl Receipt {
    /// The signed part, as one line: `save tree bytes files`. Plain text
    /// rather than JSON, as a helper hands its receipts on in its
    /// container's termination message, which Kubernetes cuts at 4 KiB: 24
    /// receipts (16 artifacts and 8 caches) of about 130 bytes fit.
    fn line(&self) -> String {
        format!("{} {} {} {}", self.save, self.tree, self.bytes, self.files)
    }
}

/// Why a token or receipt was refused. Deliberately terse towards the
/// caller: what was wrong, never the expected signature.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JobTokenError {
    /// Not a job token at all.
    #[error("not a Mizzen job token")]
    Malformed,
    /// The signature does not match the claim.
    #[error("the job token's signature does not match")]
    BadSignature,
    /// Past its expiry.
    #[error("the job token expired at {expires} (Unix time)")]
    Expired {
        /// When it expired.
        expires: i64,
    },
    /// A receipt for another job, or altered.
    #[error("a receipt does not match the job or its signature")]
    BadReceipt,
}

/// Signs and checks job tokens and receipts under the server's key.
#[derive(Clone)]
pub struct JobTokens {
    key: [u8; JOB_TOKEN_KEY_BYTES],
}

impl std::fmt::Debug for JobTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobTokens { key: <hidden> }")
    }
}

impl JobTokens {
    /// Tokens under `key` (the server keeps it in its store, made at first
    /// start, so that every replica has the same).
    pub fn new(key: [u8; JOB_TOKEN_KEY_BYTES]) -> Self {
        Self { key }
    }

    fn mac(&self, domain: &[u8], message: &[u8]) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes a key of any length");
        // Tokens and receipts are signed in separate domains, so that one
        // can never be passed off as the other.
        mac.update(domain);
        mac.update(b"\0");
        mac.update(message);
        mac
    }

    /// A token for `claim`.
    pub fn issue(&self, claim: &JobClaim) -> String {
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claim).expect("a claim serialises"));
        let signature = self.mac(b"token", body.as_bytes()).finalize().into_bytes();
        format!("{TOKEN_PREFIX}{body}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    /// The claim `token` carries, if its signature checks and it has not
    /// expired at `now` (seconds since the Unix epoch).
    pub fn verify(&self, token: &str, now: i64) -> Result<JobClaim, JobTokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(JobTokenError::Malformed);
        }
        let rest = token
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(JobTokenError::Malformed)?;
        let (body, signature) = rest.split_once('.').ok_or(JobTokenError::Malformed)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| JobTokenError::Malformed)?;
        self.mac(b"token", body.as_bytes())
            .verify_slice(&signature)
            .map_err(|_| JobTokenError::BadSignature)?;
        let claim: JobClaim = URL_SAFE_NO_PAD
            .decode(body)
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .ok_or(JobTokenError::Malformed)?;
        if now > claim.expires {
            return Err(JobTokenError::Expired {
                expires: claim.expires,
            });
        }
        Ok(claim)
    }

    fn receipt_message(event_id: &str, job: &str, receipt: &Receipt) -> Vec<u8> {
        // The event and job are signed, not carried: a receipt is only ever
        // checked for the job it is claimed for.
        serde_json::to_vec(&(event_id, job, receipt.line())).expect("strings serialise")
    }

    /// A signed receipt, one line of text: `save tree bytes files
    /// signature`, for what was stored for `claim`'s job.
    pub fn sign_receipt(&self, claim: &JobClaim, receipt: &Receipt) -> String {
        let signature = self
            .mac(
                b"receipt",
                &Self::receipt_message(&claim.event_id, &claim.job, receipt),
            )
            .finalize()
            .into_bytes();
        format!("{} {}", receipt.line(), URL_SAFE_NO_PAD.encode(signature))
    }

    /// The receipt `signed` carries, if it was signed for `event_id`'s job
    /// `job`.
    pub fn check_receipt(
        &self,
        event_id: &str,
        job: &str,
        signed: &str,
    ) -> Result<Receipt, JobTokenError> {
        let bad = || JobTokenError::BadReceipt;
        let mut fields = signed.split_ascii_whitespace();
        let mut next = || fields.next().ok_or_else(bad);
        let receipt = Receipt {
            save: next()?.parse().map_err(|_| bad())?,
            tree: next()?.parse().map_err(|_| bad())?,
            bytes: next()?.parse().map_err(|_| bad())?,
            files: next()?.parse().map_err(|_| bad())?,
        };
        let signature = URL_SAFE_NO_PAD.decode(next()?).map_err(|_| bad())?;
        if fields.next().is_some() {
            return Err(bad());
        }
        self.mac(b"receipt", &Self::receipt_message(event_id, job, &receipt))
            .verify_slice(&signature)
            .map_err(|_| bad())?;
        Ok(receipt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim() -> JobClaim {
        JobClaim {
            event_id: "0b5e1a8e-6f0e-4e55-9d59-5e2d3c1f7a10".into(),
            project_id: "web".into(),
            job: "build".into(),
            expires: 2_000,
            artifact_bytes: 1 << 30,
            cache_bytes: 1 << 30,
        }
    }

    #[test]
    fn a_token_opens_its_own_job_until_it_expires() {
        let tokens = JobTokens::new([7; 32]);
        let token = tokens.issue(&claim());
        assert!(token.starts_with("mzjob1."));
        assert_eq!(tokens.verify(&token, 1_999), Ok(claim()));
        assert_eq!(tokens.verify(&token, 2_000), Ok(claim()));
        assert_eq!(
            tokens.verify(&token, 2_001),
            Err(JobTokenError::Expired { expires: 2_000 })
        );
    }

    #[test]
    fn a_token_altered_or_signed_by_another_key_is_refused() {
        let tokens = JobTokens::new([7; 32]);
        let token = tokens.issue(&claim());
        assert_eq!(
            JobTokens::new([8; 32]).verify(&token, 0),
            Err(JobTokenError::BadSignature)
        );
        // Another job's claim with this job's signature.
        let other = tokens.issue(&JobClaim {
            job: "deploy".into(),
            ..claim()
        });
        let forged = format!(
            "{}.{}",
            other.rsplit_once('.').unwrap().0,
            token.rsplit_once('.').unwrap().1
        );
        assert_eq!(tokens.verify(&forged, 0), Err(JobTokenError::BadSignature));
        for bad in [
            "",
            "Bearer x",
            "mzjob1.",
            "mzjob1.a.b",
            &"mzjob1.".repeat(500),
        ] {
            assert!(tokens.verify(bad, 0).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_receipt_checks_only_for_the_job_it_was_signed_for() {
        let tokens = JobTokens::new([7; 32]);
        let receipt = Receipt {
            save: 2,
            tree: Digest::of(b"manifest"),
            bytes: 10,
            files: 1,
        };
        let signed = tokens.sign_receipt(&claim(), &receipt);
        assert!(signed.len() < 170, "{signed}");
        assert_eq!(
            tokens.check_receipt(&claim().event_id, "build", &signed),
            Ok(receipt.clone())
        );
        assert_eq!(
            tokens.check_receipt(&claim().event_id, "deploy", &signed),
            Err(JobTokenError::BadReceipt)
        );
        assert_eq!(
            tokens.check_receipt("another-event", "build", &signed),
            Err(JobTokenError::BadReceipt)
        );
        // Nothing of it can be changed: the save, the tree, the sizes.
        let signature = signed.rsplit_once(' ').unwrap().1;
        for altered in [
            Receipt {
                save: 0,
                ..receipt.clone()
            },
            Receipt {
                tree: Digest::of(b"another"),
                ..receipt.clone()
            },
            Receipt {
                bytes: 1,
                ..receipt.clone()
            },
        ] {
            let forged = format!("{} {signature}", altered.line());
            assert_eq!(
                tokens.check_receipt(&claim().event_id, "build", &forged),
                Err(JobTokenError::BadReceipt)
            );
        }
        // A token's signature is not a receipt's.
        let token = tokens.issue(&claim());
        let forged = format!("{} {}", receipt.line(), token.rsplit_once('.').unwrap().1);
        assert_eq!(
            tokens.check_receipt(&claim().event_id, "build", &forged),
            Err(JobTokenError::BadReceipt)
        );
    }
}
