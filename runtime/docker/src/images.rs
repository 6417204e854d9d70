//! Images: present or pulled as the pull policy says, and the pod helper's
//! image, imported from the binary this crate embeds.

use bollard::Docker;
use bollard::query_parameters::CreateImageOptionsBuilder;
use futures_util::StreamExt;
use mizzen_host_api::types::ImagePullPolicy;
use mizzen_runtime::executor::PullSecret;
use sha2::{Digest, Sha256};

use crate::credentials::{self, CredentialError, Credentials};

/// The pod helper (helper/mizzen-pause.c), built statically by build.rs.
const POD_HELPER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/mizzen-pause"));

/// The helper's path inside its image.
pub(crate) const POD_HELPER_PATH: &str = "/mizzen-pause";

/// Why an image a job needs is not there. The engine's words are what users
/// see: they name the registry's or the engine's own reason.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ImageError {
    /// The credentials for the image's registry could not be read.
    #[error("image {image:?} could not be pulled: {source}")]
    Credentials {
        /// The image asked for.
        image: String,
        /// Why.
        #[source]
        source: CredentialError,
    },
    /// The engine's pull request failed.
    #[error(
        "image {image:?} could not be pulled: {} ({provenance})",
        engine_message(source)
    )]
    Pull {
        /// The image asked for.
        image: String,
        /// Which credentials went with the pull, or where none was found.
        provenance: String,
        /// Why.
        #[source]
        source: bollard::errors::Error,
    },
    /// The engine reported an error in the pull's progress.
    #[error("image {image:?} could not be pulled: {message} ({provenance})")]
    PullRefused {
        /// The image asked for.
        image: String,
        /// Which credentials went with the pull, or where none was found.
        provenance: String,
        /// The engine's message.
        message: String,
    },
    /// The pull ended without an error, but the engine does not have the
    /// image.
    #[error(
        "image {image:?} is not available after pulling: {} ({provenance})",
        engine_message(source)
    )]
    Missing {
        /// The image asked for.
        image: String,
        /// Which credentials went with the pull, or where none was found.
        provenance: String,
        /// Why it could not be inspected.
        #[source]
        source: bollard::errors::Error,
    },
    /// The pod helper is not embedded: it is built only when this crate is
    /// built for Linux.
    #[error("jobs with sidecars need the pod helper, which is built only on Linux hosts")]
    NoPodHelper,
    /// The pod helper's image archive could not be written.
    #[error("packing the pod helper failed: {0}")]
    PackHelper(#[source] std::io::Error),
    /// The engine's import request failed.
    #[error("importing the pod helper failed: {}", engine_message(.0))]
    ImportHelper(#[source] bollard::errors::Error),
    /// The engine reported an error in the import's progress.
    #[error("importing the pod helper failed: {0}")]
    ImportRefused(String),
}

/// Makes `image` available as `policy` says: `IfNotPresent` uses a local copy
/// when there is one, `Always` pulls, with the registry's credentials from
/// the project's pull secrets or the host's files ([`credentials`]).
pub(crate) async fn ensure(
    docker: &Docker,
    image: &str,
    policy: ImagePullPolicy,
    pull_secrets: &[PullSecret],
) -> Result<(), ImageError> {
    if policy == ImagePullPolicy::IfNotPresent && docker.inspect_image(image).await.is_ok() {
        return Ok(());
    }
    let Credentials {
        credentials,
        provenance,
    } = credentials::for_image(image, pull_secrets)
        .await
        .map_err(|source| ImageError::Credentials {
            image: image.to_string(),
            source,
        })?;
    let (from_image, tag) = split_tag(image);
    let mut options = CreateImageOptionsBuilder::default().from_image(from_image);
    if let Some(tag) = tag {
        options = options.tag(tag);
    }
    let mut progress = docker.create_image(Some(options.build()), None, credentials);
    while let Some(item) = progress.next().await {
        match item {
            Err(source) => {
                return Err(ImageError::Pull {
                    image: image.to_string(),
                    provenance,
                    source,
                });
            }
            Ok(info) => {
                if let Some(message) = info.error_detail.and_then(|d| d.message) {
                    return Err(ImageError::PullRefused {
                        image: image.to_string(),
                        provenance,
                        message,
                    });
                }
            }
        }
    }
    // Some engines end a failed pull without an error item; a missing image
    // afterwards is the same failure.
    docker
        .inspect_image(image)
        .await
        .map(|_| ())
        .map_err(|source| ImageError::Missing {
            image: image.to_string(),
            provenance,
            source,
        })
}

/// `repo` and its tag for the pull API, which pulls every tag when none is
/// given: `debian` becomes `debian` + `latest`; a digest stays in the name.
fn split_tag(image: &str) -> (&str, Option<&str>) {
    if image.contains('@') {
        return (image, None);
    }
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_slash..].rfind(':') {
        Some(i) => (&image[..last_slash + i], Some(&image[last_slash + i + 1..])),
        None => (image, Some("latest")),
    }
}

/// The pod helper's image, imported from the embedded binary when the engine
/// does not have it yet. Its tag is the binary's hash, so a new helper gets a
/// new image.
pub(crate) async fn pod_helper(docker: &Docker) -> Result<String, ImageError> {
    if POD_HELPER.is_empty() {
        return Err(ImageError::NoPodHelper);
    }
    let hash = Sha256::digest(POD_HELPER);
    let tag: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
    let image = format!("localhost/mizzen-pause:{tag}");
    if docker.inspect_image(&image).await.is_ok() {
        return Ok(image);
    }
    let archive = helper_archive().map_err(ImageError::PackHelper)?;
    // The tag goes in `repo`: Podman ignores `tag` when importing.
    let options = CreateImageOptionsBuilder::default()
        .from_src("-")
        .repo(&image)
        .build();
    let mut progress = docker.create_image(
        Some(options),
        Some(bollard::body_full(archive.into())),
        None,
    );
    while let Some(item) = progress.next().await {
        let info = item.map_err(ImageError::ImportHelper)?;
        if let Some(message) = info.error_detail.and_then(|d| d.message) {
            return Err(ImageError::ImportRefused(message));
        }
    }
    Ok(image)
}

/// A tar archive holding the helper, executable, at the root.
fn helper_archive() -> std::io::Result<Vec<u8>> {
    let mut archive = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(POD_HELPER.len() as u64);
    header.set_mode(0o755);
    header.set_cksum();
    archive.append_data(
        &mut header,
        POD_HELPER_PATH.trim_start_matches('/'),
        POD_HELPER,
    )?;
    archive.into_inner()
}

/// The engine's own words for an error, without the client's wrapping.
pub(crate) fn engine_message(error: &bollard::errors::Error) -> String {
    match error {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untagged_images_pull_latest() {
        assert_eq!(split_tag("debian"), ("debian", Some("latest")));
        assert_eq!(split_tag("debian:12"), ("debian", Some("12")));
        assert_eq!(
            split_tag("localhost:5000/app"),
            ("localhost:5000/app", Some("latest"))
        );
        assert_eq!(
            split_tag("localhost:5000/app:v1"),
            ("localhost:5000/app", Some("v1"))
        );
        let pinned = "app@sha256:0123456789abcdef0123456789abcdef";
        assert_eq!(split_tag(pinned), (pinned, None));
    }

    /// The reasons users see: the engine's words, then which credentials
    /// went with the pull.
    #[test]
    fn image_errors_name_the_engines_reason_and_the_credentials() {
        let engine_error = || bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            message: "manifest unknown".into(),
        };
        let image = || "localhost/app:v0".to_string();
        let provenance = || "no credentials for localhost in /root/.docker/config.json".to_string();
        let reasons = [
            (
                ImageError::Pull {
                    image: image(),
                    provenance: provenance(),
                    source: engine_error(),
                },
                "image \"localhost/app:v0\" could not be pulled: manifest unknown (no credentials for localhost in /root/.docker/config.json)",
            ),
            (
                ImageError::PullRefused {
                    image: image(),
                    provenance: provenance(),
                    message: "denied".into(),
                },
                "image \"localhost/app:v0\" could not be pulled: denied (no credentials for localhost in /root/.docker/config.json)",
            ),
            (
                ImageError::Missing {
                    image: image(),
                    provenance: provenance(),
                    source: engine_error(),
                },
                "image \"localhost/app:v0\" is not available after pulling: manifest unknown (no credentials for localhost in /root/.docker/config.json)",
            ),
            (
                ImageError::PackHelper(std::io::Error::other("full")),
                "packing the pod helper failed: full",
            ),
            (
                ImageError::ImportHelper(engine_error()),
                "importing the pod helper failed: manifest unknown",
            ),
            (
                ImageError::ImportRefused("bad archive".into()),
                "importing the pod helper failed: bad archive",
            ),
        ];
        for (error, reason) in reasons {
            assert_eq!(error.to_string(), reason);
        }
    }

    #[test]
    fn the_helper_is_built_and_packed() {
        assert!(
            POD_HELPER.starts_with(b"\x7fELF"),
            "a static Linux executable"
        );
        let archive = helper_archive().unwrap();
        let mut entries = tar::Archive::new(&archive[..]);
        let entry = entries.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(entry.path().unwrap().to_str(), Some("mizzen-pause"));
        assert_eq!(entry.header().mode().unwrap(), 0o755);
    }
}
