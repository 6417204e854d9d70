//! Trees on a real S3-compatible server: moto, which scripts/setup-s3
//! starts and scripts/test names in MIZZEN_TEST_S3_URL
//! (`http://HOST:PORT/BUCKET`). Each test works under a prefix of its own.

mod common;

use std::sync::Arc;

use common::{options, restore, sample_tree, tar_of, tar_stream};
use mizzen_objects::{Objects, ObjectsError};
use object_store::{ObjectStore, ObjectStoreExt};

/// The endpoint and bucket of the test server; `None` (and a note) when
/// none is configured.
fn server() -> Option<(String, String)> {
    let Ok(url) = std::env::var("MIZZEN_TEST_S3_URL") else {
        eprintln!("MIZZEN_TEST_S3_URL is not set (scripts/setup-s3 starts a server); skipped");
        return None;
    };
    let (endpoint, bucket) = url.rsplit_once('/').expect("http://HOST:PORT/BUCKET");
    Some((endpoint.to_string(), bucket.to_string()))
}

const OPTIONS: &str =
    "aws_allow_http=true&aws_region=us-east-1&aws_access_key_id=test&aws_secret_access_key=test";

/// Objects under a fresh prefix of the test bucket, and the raw bucket
/// (to tamper with what is stored).
fn objects(test: &str) -> Option<(Objects, Arc<dyn ObjectStore>, String)> {
    let (endpoint, bucket) = server()?;
    let prefix = format!("{test}-{}", std::process::id());
    let url = format!("s3://{bucket}/{prefix}?aws_endpoint={endpoint}&{OPTIONS}");
    let objects = Objects::open(&url).unwrap();
    let raw = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .build()
        .unwrap();
    Some((objects, Arc::new(raw), prefix))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tree_round_trips_through_s3_with_large_files_in_parts_and_is_stored_once() {
    let Some((objects, _, _)) = objects("round-trip") else {
        return;
    };
    let temp = tempfile::tempdir().unwrap();
    let source = temp.path().join("source");
    sample_tree(&source);
    // Past the in-memory size: staged and uploaded in parts.
    std::fs::write(source.join("huge.bin"), vec![9u8; 20 << 20]).unwrap();
    let saved = objects
        .save_tar(
            std::io::Cursor::new(tar_of(&source, "dist")),
            options("dist"),
        )
        .await
        .unwrap();
    assert_eq!(saved.files, 6);
    let out = temp.path().join("out");
    restore(&objects, &saved.manifest, &out, "dist").await;
    assert_eq!(
        std::fs::read(out.join("dist/huge.bin")).unwrap(),
        vec![9u8; 20 << 20]
    );
    assert_eq!(
        std::fs::read_to_string(out.join("dist/lib/copy.txt")).unwrap(),
        "alpha"
    );
    let again = objects
        .save_tar(
            std::io::Cursor::new(tar_of(&source, "dist")),
            options("dist"),
        )
        .await
        .unwrap();
    assert_eq!(again.manifest, saved.manifest);
    assert_eq!(again.written_bytes, 0, "nothing uploaded twice");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_object_altered_on_s3_is_detected_on_restore() {
    let Some((objects, raw, prefix)) = objects("corrupt") else {
        return;
    };
    let temp = tempfile::tempdir().unwrap();
    let source = temp.path().join("source");
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(source.join("a.txt"), "the original").unwrap();
    let saved = objects
        .save_tar(
            std::io::Cursor::new(tar_of(&source, "dist")),
            options("dist"),
        )
        .await
        .unwrap();
    let manifest = objects.manifest(&saved.manifest).await.unwrap();
    let digest = manifest.entry("a.txt").unwrap().digest.unwrap();
    let hex = digest.hex();
    let location = object_store::path::Path::from(format!("{prefix}/sha256/{}/{hex}", &hex[..2]));
    raw.put(&location, "the tampered".into()).await.unwrap();

    let (written, _) = tar_stream(&objects, manifest, "dist").await;
    let error = written.unwrap_err();
    assert!(matches!(error, ObjectsError::Corrupt { .. }), "{error}");
    assert!(error.to_string().contains("s3://"), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sweep_on_s3_deletes_what_no_kept_tree_names() {
    let Some((objects, _, _)) = objects("sweep") else {
        return;
    };
    let temp = tempfile::tempdir().unwrap();
    let mut saved = Vec::new();
    for text in ["kept", "dropped"] {
        let dir = temp.path().join(text);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("f"), text).unwrap();
        saved.push(
            objects
                .save_tar(std::io::Cursor::new(tar_of(&dir, "t")), options(text))
                .await
                .unwrap(),
        );
    }
    let sweep = objects
        .sweep(
            [saved[0].manifest],
            std::time::SystemTime::now() + std::time::Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(sweep.deleted, 2, "{sweep:?}");
    assert!(objects.contains(&saved[0].manifest).await.unwrap());
    assert!(!objects.contains(&saved[1].manifest).await.unwrap());
}

#[test]
fn an_s3_url_with_an_unknown_option_is_refused_by_name() {
    let error = Objects::open("s3://bucket/prefix?colour=blue").unwrap_err();
    assert!(
        error.to_string().contains("\"colour\" is not an S3 option"),
        "{error}"
    );
}
