//! Trees saved from tar streams and restored as tar streams, on a local
//! store: contents, links, patterns, limits, deduplication and corruption.

mod common;

use std::path::Path;

use common::{options, restore, sample_tree, tar_of, tar_stream};
use mizzen_objects::{EntryKind, Objects, ObjectsError};

#[tokio::test(flavor = "multi_thread")]
async fn a_tree_comes_back_as_it_was_and_identical_files_are_stored_once() {
    let temp = tempfile::tempdir().unwrap();
    let source = temp.path().join("source");
    sample_tree(&source);
    let objects = Objects::local(&temp.path().join("objects")).unwrap();

    let saved = objects
        .save_tar(
            std::io::Cursor::new(tar_of(&source, "dist")),
            options("artifact \"dist\""),
        )
        .await
        .unwrap();
    assert_eq!(saved.files, 5);
    assert_eq!(saved.bytes, 5 + 4 + 5 + 5 + (5 << 20));
    // "alpha" twice is one object.
    assert!(saved.written_bytes < saved.bytes - 5 + 4096);

    let out = temp.path().join("out");
    restore(&objects, &saved.manifest, &out, "build").await;
    assert_eq!(
        std::fs::read_to_string(out.join("build/a.txt")).unwrap(),
        "alpha"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("build/lib/copy.txt")).unwrap(),
        "alpha"
    );
    assert_eq!(
        std::fs::read(out.join("build/big.bin")).unwrap(),
        vec![7u8; 5 << 20]
    );
    assert_eq!(
        std::fs::read_link(out.join("build/link")).unwrap(),
        Path::new("a.txt")
    );

    // Saving it again writes its manifest at most.
    let again = objects
        .save_tar(
            std::io::Cursor::new(tar_of(&source, "dist")),
            options("again"),
        )
        .await
        .unwrap();
    assert_eq!(again.manifest, saved.manifest);
    assert_eq!(again.written_bytes, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pattern_keeps_matching_files_and_the_directories_leading_to_them() {
    let temp = tempfile::tempdir().unwrap();
    let source = temp.path().join("source");
    sample_tree(&source);
    let objects = Objects::local(&temp.path().join("objects")).unwrap();
    let mut options = options("reports");
    options.pattern = Some(glob::Pattern::new("**/*.xml").unwrap());
    let saved = objects
        .save_tar(std::io::Cursor::new(tar_of(&source, "reports")), options)
        .await
        .unwrap();
    let manifest = objects.manifest(&saved.manifest).await.unwrap();
    let paths: Vec<(&str, EntryKind)> = manifest
        .entries
        .iter()
        .map(|e| (e.path.as_str(), e.kind))
        .collect();
    assert_eq!(
        paths,
        [
            ("", EntryKind::Directory),
            ("lib", EntryKind::Directory),
            ("lib/deep", EntryKind::Directory),
            ("lib/deep/report.xml", EntryKind::File)
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tree_over_its_limit_is_refused_by_name() {
    let temp = tempfile::tempdir().unwrap();
    let source = temp.path().join("source");
    sample_tree(&source);
    let objects = Objects::local(&temp.path().join("objects")).unwrap();
    let mut options = options("cache \"npm-1\"");
    options.max_bytes = 1 << 20;
    options.limit_name = " (the project's cacheSize limit)".into();
    let error = objects
        .save_tar(std::io::Cursor::new(tar_of(&source, "npm")), options)
        .await
        .unwrap_err();
    assert!(matches!(error, ObjectsError::TooLarge { .. }));
    assert_eq!(
        error.to_string(),
        "cache \"npm-1\" holds more than 1048576 bytes (the project's cacheSize limit)"
    );
}

/// A tree of more entries than allowed is refused by its count, at the
/// first entry past it, however many follow: 10 and 100 times the limit
/// cost the same to refuse.
#[tokio::test(flavor = "multi_thread")]
async fn a_tree_of_too_many_entries_is_refused_by_their_count() {
    let temp = tempfile::tempdir().unwrap();
    let objects = Objects::local(&temp.path().join("objects")).unwrap();
    for files in [200, 2_000] {
        let source = temp.path().join(format!("many-{files}"));
        std::fs::create_dir_all(&source).unwrap();
        for i in 0..files {
            std::fs::write(source.join(format!("f{i}")), i.to_string()).unwrap();
        }
        let mut options = options("cache \"many\"");
        options.max_entries = 100;
        let error = objects
            .save_tar(std::io::Cursor::new(tar_of(&source, "many")), options)
            .await
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "cache \"many\" has more than 100 files and directories"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_object_is_detected_on_restore_and_never_handed_out() {
    let temp = tempfile::tempdir().unwrap();
    let source = temp.path().join("source");
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(source.join("a.txt"), "the original").unwrap();
    let store = temp.path().join("objects");
    let objects = Objects::local(&store).unwrap();
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
    let file = store.join("sha256").join(&hex[..2]).join(&hex);
    // Same length, other bytes: only the hash tells.
    std::fs::write(&file, "the tampered").unwrap();

    let (written, _) = tar_stream(&objects, manifest, "dist").await;
    let error = written.unwrap_err();
    assert!(matches!(error, ObjectsError::Corrupt { .. }), "{error}");
    assert!(error.to_string().contains(&digest.to_string()), "{error}");
    // Deleted once found corrupt: missing from then on, and the next save
    // of that content stores it anew instead of naming the damaged object.
    assert!(!file.exists());
    let error = objects.read(&digest, 1 << 20).await.unwrap_err();
    assert!(matches!(error, ObjectsError::Missing { .. }), "{error}");
    let again = objects
        .save_tar(
            std::io::Cursor::new(tar_of(&source, "dist")),
            options("dist"),
        )
        .await
        .unwrap();
    assert_eq!(again.manifest, saved.manifest);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "the original");
}

#[tokio::test(flavor = "multi_thread")]
async fn entries_leading_out_of_the_tree_are_refused() {
    let temp = tempfile::tempdir().unwrap();
    let objects = Objects::local(&temp.path().join("objects")).unwrap();
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(2);
    header.set_entry_type(tar::EntryType::Regular);
    // `append_data` refuses `..`; the raw name field does not.
    header.as_gnu_mut().unwrap().name[..17].copy_from_slice(b"dist/../../escape");
    header.set_cksum();
    builder.append(&header, &b"hi"[..]).unwrap();
    let bytes = builder.into_inner().unwrap();
    let error = objects
        .save_tar(std::io::Cursor::new(bytes), options("dist"))
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("leads out of the tree"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn entries_beneath_a_link_are_refused() {
    // A tree read from a filesystem has nothing beneath a link; a crafted
    // one would write through it when restored.
    let temp = tempfile::tempdir().unwrap();
    let objects = Objects::local(&temp.path().join("objects")).unwrap();
    let mut builder = tar::Builder::new(Vec::new());
    let mut link = tar::Header::new_gnu();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_size(0);
    builder.append_link(&mut link, "dist/etc", "/etc").unwrap();
    let mut file = tar::Header::new_gnu();
    file.set_entry_type(tar::EntryType::Regular);
    file.set_size(2);
    file.set_mode(0o644);
    builder
        .append_data(&mut file, "dist/etc/passwd", &b"hi"[..])
        .unwrap();
    let bytes = builder.into_inner().unwrap();
    let error = objects
        .save_tar(std::io::Cursor::new(bytes), options("dist"))
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains(r#"entry "etc/passwd" lies beneath the symbolic link "etc""#),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sweep_deletes_only_old_objects_no_kept_tree_names() {
    let temp = tempfile::tempdir().unwrap();
    let objects = Objects::local(&temp.path().join("objects")).unwrap();
    let save = |text: &'static str| {
        let objects = objects.clone();
        let dir = temp.path().join(text);
        async move {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("f"), text).unwrap();
            objects
                .save_tar(std::io::Cursor::new(tar_of(&dir, "t")), options(text))
                .await
                .unwrap()
        }
    };
    let kept = save("kept").await;
    let dropped = save("dropped").await;
    // What a process killed mid-write leaves: a staging file, never listed.
    let staging = temp.path().join("objects/sha256/00/0000#1");
    std::fs::create_dir_all(staging.parent().unwrap()).unwrap();
    std::fs::write(&staging, "half").unwrap();
    // Written after the sweep's start: a save in progress; kept.
    let started = std::time::SystemTime::now();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let young = save("young").await;

    let sweep = objects.sweep([kept.manifest], started).await.unwrap();
    // Dropped's manifest and file, and the staging file.
    assert_eq!(sweep.deleted, 3, "{sweep:?}");
    assert!(!staging.exists());
    assert!(objects.manifest(&kept.manifest).await.is_ok());
    assert!(objects.manifest(&young.manifest).await.is_ok());
    assert!(!objects.contains(&dropped.manifest).await.unwrap());
}

/// A save that reuses an old object no kept tree names, while a sweep that
/// started before it runs (in another process: nothing holds them apart),
/// keeps the object: reusing it made it as young as the save.
#[tokio::test(flavor = "multi_thread")]
async fn a_save_reusing_an_unreferenced_object_during_a_sweep_keeps_it() {
    let temp = tempfile::tempdir().unwrap();
    let objects = Objects::local(&temp.path().join("objects")).unwrap();
    let dir = temp.path().join("tree");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("f"), "shared content").unwrap();
    let old = objects
        .save_tar(std::io::Cursor::new(tar_of(&dir, "old")), options("old"))
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let started = std::time::SystemTime::now();
    let new = objects
        .save_tar(std::io::Cursor::new(tar_of(&dir, "new")), options("new"))
        .await
        .unwrap();
    assert_eq!(new.written_bytes, 0, "the file is reused, its manifest too");
    // The sweep knew of no kept tree when it started.
    objects.sweep([], started).await.unwrap();
    let manifest = objects.manifest(&new.manifest).await.unwrap();
    let (written, _) = tar_stream(&objects, manifest, "new").await;
    written.unwrap();
    let _ = old;
}
