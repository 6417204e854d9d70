//! The event's artifacts (Mizzen's addition): what its jobs saved
//! ([`Job::save_artifact`](crate::Job::save_artifact) and the like), as each
//! job ends, listed and read as brigadier.js's `artifacts` does. Paths are
//! within an artifact, `""` for an artifact that is a single file. On an
//! executor that keeps no artifacts (Kubernetes, for now) every function
//! answers `invalid_request`, saying so.
//!
//! Each function answers through a ticket, as [`Job::logs`](crate::Job::logs)
//! does: other futures, jobs among them, go on while it waits.
//!
//! ```no_run
//! # async fn f() -> brigadier::Result<()> {
//! use brigadier::{artifacts, info};
//!
//! for artifact in artifacts::list().await? {
//!     info!("{}: {} files from {}", artifact.name, artifact.files, artifact.job);
//! }
//! let report = artifacts::read_file("build-report", "build.txt").await?;
//! let binary: Vec<u8> = artifacts::read_file_bytes("dist", "app.wasm").await?;
//! info!("{report} ({} bytes of app.wasm)", binary.len());
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::panic::Location;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::executor::submit;
use crate::host::op;
use crate::workspace::base64_decode;

/// An artifact of the event.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ArtifactInfo {
    /// The name it was saved under.
    pub name: String,
    /// The job that saved it.
    pub job: String,
    /// The path in that job's container it was saved from.
    pub path: String,
    /// The bytes its files hold.
    pub size_bytes: u64,
    /// How many files it holds.
    pub files: u64,
}

#[derive(Serialize)]
struct ListRequest {}

#[derive(Deserialize)]
struct ArtifactList {
    artifacts: Vec<ArtifactInfo>,
}

#[derive(Serialize)]
struct FileRequest<'a> {
    name: &'a str,
    path: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    encoding: Option<&'static str>,
}

#[derive(Deserialize)]
struct File {
    contents: String,
    encoding: String,
}

/// The artifacts the event's jobs saved so far, by name (`artifact.list`).
#[track_caller]
pub fn list() -> impl Future<Output = Result<Vec<ArtifactInfo>>> {
    let at = Location::caller();
    async move {
        let ticket =
            submit(op::ARTIFACT_LIST, &ListRequest {}).map_err(|e| Error::host(e, Some(at)))?;
        let result = ticket.await.map_err(|e| Error::host(e, Some(at)))?;
        let list: ArtifactList = serde_json::from_value(result).map_err(|e| {
            Error::internal(format!("the event's artifacts could not be read: {e}")).located(at)
        })?;
        Ok(list.artifacts)
    }
}

/// A text file of the artifact `name` (`artifact.read`): `path` within it,
/// `""` for an artifact that is a single file. At most 8 MiB, checked against
/// its SHA-256 as the host reads it; a file that is not UTF-8 is an
/// `invalid_request` (read it with [`read_file_bytes`]), one that is not
/// there `not_found`.
#[track_caller]
pub fn read_file<'a>(name: &'a str, path: &'a str) -> impl Future<Output = Result<String>> + 'a {
    let at = Location::caller();
    async move {
        let file = read(name, path, Some("utf8"), at).await?;
        Ok(file.contents)
    }
}

/// A file of the artifact `name` as bytes, text or not (`artifact.read`), as
/// [`read_file`] reads it.
#[track_caller]
pub fn read_file_bytes<'a>(
    name: &'a str,
    path: &'a str,
) -> impl Future<Output = Result<Vec<u8>>> + 'a {
    let at = Location::caller();
    async move {
        let file = read(name, path, None, at).await?;
        match file.encoding.as_str() {
            "base64" => base64_decode(&file.contents).ok_or_else(|| {
                Error::internal(format!(
                    "the host's base64 for {path:?} of artifact \"{name}\" could not be decoded"
                ))
                .located(at)
            }),
            _ => Ok(file.contents.into_bytes()),
        }
    }
}

/// Reads a file of an artifact in `encoding` (the host's choice when `None`).
async fn read(
    name: &str,
    path: &str,
    encoding: Option<&'static str>,
    at: &'static Location<'static>,
) -> Result<File> {
    let request = FileRequest {
        name,
        path,
        encoding,
    };
    let ticket = submit(op::ARTIFACT_READ, &request).map_err(|e| Error::host(e, Some(at)))?;
    let result = ticket.await.map_err(|e| Error::host(e, Some(at)))?;
    serde_json::from_value(result).map_err(|e| {
        Error::internal(format!(
            "file {path:?} of artifact \"{name}\" could not be read: {e}"
        ))
        .located(at)
    })
}
