//! Files kept in the cache directory between processes (prepared scripts,
//! npm trees, bytecode, compiled modules): each written whole under a
//! temporary name and renamed, marked when used, and swept least recently
//! used first once a directory passes its budget.

use std::path::{Path, PathBuf};

/// Writes `path` whole: aside under a temporary name, then renamed, so that
/// a reader (another process) never sees half a file.
pub(crate) fn write_whole(path: &Path, parts: &[&[u8]]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .expect("cache files are inside the cache directory");
    std::fs::create_dir_all(dir)?;
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    for part in parts {
        std::io::Write::write_all(&mut file, part)?;
    }
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// A file's size, for [`sweep`] to count entries that are single files.
pub(crate) fn file_size(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.len())
}

/// Marks a cache entry as used now (its modification time), for [`sweep`].
pub(crate) fn touch(path: &Path) {
    if let Ok(file) = std::fs::File::options().append(true).open(path) {
        let _ = file.set_modified(std::time::SystemTime::now());
    }
}

/// Removes the least recently used entries of a cache directory (its
/// `*.<extension>` files, and a directory of the same name beside each, as
/// an npm tree is beside its record) until the rest fit in `budget` bytes,
/// leaving alone the newest and any used within `grace`. Files a process
/// left half-written (`.tmp*`) go once they are older than `grace`.
pub(crate) fn sweep(
    dir: &Path,
    extension: &str,
    budget: u64,
    grace: std::time::Duration,
    size_of: impl Fn(&Path) -> Option<u64>,
) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let now = std::time::SystemTime::now();
    let age = |modified: std::time::SystemTime| now.duration_since(modified).unwrap_or_default();
    let mut entries: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .map(|e| e.path())
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .filter(|(modified, p)| {
            // What a process that died while writing left behind.
            let abandoned = p
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".tmp"));
            if abandoned && age(*modified) >= grace {
                let _ = std::fs::remove_file(p);
                let _ = std::fs::remove_dir_all(p);
            }
            p.extension().is_some_and(|e| e == extension)
        })
        .collect();
    entries.sort_by_key(|entry| std::cmp::Reverse(entry.0));
    let mut used = 0u64;
    for (index, (modified, path)) in entries.into_iter().enumerate() {
        used += size_of(&path).unwrap_or(0);
        // The newest stays whatever its size: it was just made for use.
        if index == 0 || used <= budget || age(modified) < grace {
            continue;
        }
        // The record goes first: without it, the tree is never used again.
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_dir_all(path.with_extension(""));
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    /// A file of `bytes` bytes last used `age` ago.
    fn entry(dir: &Path, name: &str, bytes: usize, age: Duration) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, vec![0u8; bytes]).unwrap();
        let file = std::fs::File::options().append(true).open(&path).unwrap();
        file.set_modified(SystemTime::now() - age).unwrap();
        path
    }

    fn left(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn the_least_recently_used_go_first_and_the_recent_stay() {
        let dir = tempfile::tempdir().unwrap();
        let hour = Duration::from_secs(3600);
        entry(dir.path(), "newest.json", 400, Duration::ZERO);
        entry(dir.path(), "recent.json", 400, Duration::from_secs(10));
        entry(dir.path(), "old.json", 400, hour);
        entry(dir.path(), "older.json", 400, 2 * hour);
        // A tree beside its record goes with it; other files are not entries.
        std::fs::create_dir(dir.path().join("older")).unwrap();
        entry(&dir.path().join("older"), "index.js", 10, 2 * hour);
        entry(dir.path(), "notes.txt", 10_000, 3 * hour);
        // 1,000 bytes fit two entries; the recent one is kept all the same.
        sweep(dir.path(), "json", 1_000, Duration::from_secs(60), |p| {
            std::fs::metadata(p).ok().map(|m| m.len())
        });
        assert_eq!(
            left(dir.path()),
            ["newest.json", "notes.txt", "recent.json"]
        );
    }

    #[test]
    fn the_newest_stays_whatever_its_size_and_abandoned_writes_go() {
        let dir = tempfile::tempdir().unwrap();
        entry(dir.path(), "big.json", 5_000, Duration::ZERO);
        entry(dir.path(), ".tmpAbCd", 100, Duration::from_secs(3600));
        entry(dir.path(), ".tmpNew1", 100, Duration::ZERO);
        sweep(dir.path(), "json", 1, Duration::from_secs(60), |p| {
            std::fs::metadata(p).ok().map(|m| m.len())
        });
        assert_eq!(left(dir.path()), [".tmpNew1", "big.json"]);
    }

    #[test]
    fn touching_makes_an_entry_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let day = Duration::from_secs(86_400);
        let used = entry(dir.path(), "used.json", 400, 2 * day);
        entry(dir.path(), "unused.json", 400, day);
        touch(&used);
        sweep(dir.path(), "json", 500, Duration::ZERO, |p| {
            std::fs::metadata(p).ok().map(|m| m.len())
        });
        assert_eq!(left(dir.path()), ["used.json"]);
    }
}
