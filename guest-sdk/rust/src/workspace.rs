//! The event's workspace (Mizzen's addition): the directory its jobs mount at
//! `workspace_mount_path`, for projects with `spec.workerTemplate.useWorkspace:
//! true`. Paths are relative to it and `/`-separated; the host refuses
//! anything that would lead out of it (`invalid_request`,
//! `permission_denied`). Without a workspace every function answers
//! `not_configured`.

use std::panic::Location;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::host::{self, op};

/// An entry of a workspace directory.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct Entry {
    /// The entry's name (not its path).
    pub name: String,
    /// Whether it is a directory.
    pub directory: bool,
    /// Its size in bytes; 0 for a directory.
    pub size: u64,
}

#[derive(Serialize)]
struct PathRequest<'a> {
    path: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    encoding: Option<&'static str>,
}

#[derive(Serialize, Deserialize)]
struct File {
    path: String,
    contents: String,
    encoding: String,
}

#[derive(Deserialize)]
struct Listing {
    entries: Vec<Entry>,
}

/// A text file's contents (at most 8 MiB); a file that is not UTF-8 is an
/// `invalid_request`.
#[track_caller]
pub fn read(path: &str) -> Result<String> {
    let at = Location::caller();
    let file: File = host::call(
        op::WORKSPACE_READ,
        &PathRequest {
            path,
            encoding: Some("utf8"),
        },
    )
    .map_err(|e| Error::host(e, Some(at)))?;
    Ok(file.contents)
}

/// A file's contents as bytes, text or not (at most 8 MiB).
#[track_caller]
pub fn read_bytes(path: &str) -> Result<Vec<u8>> {
    let at = Location::caller();
    let file: File = host::call(
        op::WORKSPACE_READ,
        &PathRequest {
            path,
            encoding: None,
        },
    )
    .map_err(|e| Error::host(e, Some(at)))?;
    match file.encoding.as_str() {
        "base64" => base64_decode(&file.contents).ok_or_else(|| {
            Error::internal(format!("the host's base64 for {path} could not be decoded"))
                .located(at)
        }),
        _ => Ok(file.contents.into_bytes()),
    }
}

/// Creates or replaces a file, and the directories above it. Text travels as
/// it is, anything else in base64.
#[track_caller]
pub fn write(path: &str, contents: impl AsRef<[u8]>) -> Result<()> {
    let at = Location::caller();
    let bytes = contents.as_ref();
    let (contents, encoding) = match std::str::from_utf8(bytes) {
        Ok(text) => (text.to_string(), "utf8"),
        Err(_) => (base64_encode(bytes), "base64"),
    };
    host::call_unit(
        op::WORKSPACE_WRITE,
        &File {
            path: path.to_string(),
            contents,
            encoding: encoding.into(),
        },
    )
    .map_err(|e| Error::host(e, Some(at)))
}

/// A directory's entries, sorted by name; `""` (or `"."`) is the workspace
/// itself.
#[track_caller]
pub fn list(path: &str) -> Result<Vec<Entry>> {
    let at = Location::caller();
    let listing: Listing = host::call(
        op::WORKSPACE_LIST,
        &PathRequest {
            path,
            encoding: None,
        },
    )
    .map_err(|e| Error::host(e, Some(at)))?;
    Ok(listing.entries)
}

/// Removes a file, or a directory with everything in it.
#[track_caller]
pub fn remove(path: &str) -> Result<()> {
    let at = Location::caller();
    host::call_unit(
        op::WORKSPACE_REMOVE,
        &PathRequest {
            path,
            encoding: None,
        },
    )
    .map_err(|e| Error::host(e, Some(at)))
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64, padded.
pub(crate) fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64 (padding optional); `None` when it is not.
pub(crate) fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut buffer = 0u32;
    let mut bits = 0;
    for c in text.bytes() {
        let value = ALPHABET.iter().position(|&a| a == c)? as u32;
        buffer = (buffer << 6) | value;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    Some(out)
}
