//! What the trees' tests share: tar streams of directories, restores into
//! directories, a sample tree.

#![allow(dead_code, reason = "each test binary uses some of these")]

use std::path::Path;

use mizzen_objects::{Manifest, Objects, ObjectsError, SaveOptions, TarOwner};

/// A tar of `dir` as `docker cp` writes one: every entry beneath `name`.
pub fn tar_of(dir: &Path, name: &str) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder.append_dir_all(name, dir).unwrap();
    builder.into_inner().unwrap()
}

pub fn options(what: &str) -> SaveOptions {
    SaveOptions {
        what: what.into(),
        pattern: None,
        max_bytes: u64::MAX,
        limit_name: String::new(),
        max_entries: mizzen_objects::MAX_TREE_ENTRIES,
    }
}

/// Tree `manifest` written as a tar stream under `name`: how the write
/// ended, and the bytes it wrote.
pub async fn tar_stream(
    objects: &Objects,
    manifest: Manifest,
    name: &str,
) -> (Result<(), ObjectsError>, Vec<u8>) {
    let (writer, mut reader) = tokio::io::duplex(1 << 16);
    let writing = objects.write_tar(manifest, name.into(), TarOwner { uid: 0, gid: 0 }, writer);
    let mut bytes = Vec::new();
    let reading = tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut bytes);
    let (written, _) = tokio::join!(writing, reading);
    (written, bytes)
}

pub async fn restore(objects: &Objects, digest: &mizzen_objects::Digest, into: &Path, name: &str) {
    let manifest = objects.manifest(digest).await.unwrap();
    let (written, bytes) = tar_stream(objects, manifest, name).await;
    written.unwrap();
    tar::Archive::new(bytes.as_slice()).unpack(into).unwrap();
}

pub fn sample_tree(dir: &Path) {
    std::fs::create_dir_all(dir.join("lib/deep")).unwrap();
    std::fs::write(dir.join("a.txt"), "alpha").unwrap();
    std::fs::write(dir.join("lib/b.txt"), "beta").unwrap();
    std::fs::write(dir.join("lib/deep/report.xml"), "<ok/>").unwrap();
    std::fs::write(dir.join("lib/copy.txt"), "alpha").unwrap();
    std::fs::write(dir.join("big.bin"), vec![7u8; 5 << 20]).unwrap();
    std::os::unix::fs::symlink("a.txt", dir.join("link")).unwrap();
}
