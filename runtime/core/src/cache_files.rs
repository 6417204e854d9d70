//! Files kept in the cache directory between processes (prepared scripts,
//! npm trees, bytecode): each written whole under a temporary name and
//! renamed, marked when used, and swept least recently used first once a
//! directory passes its budget.

use std::path::{Path, PathBuf};

/// Marks a cache entry as used now (its modification time), for [`sweep`].
pub(crate) fn touch(path: &Path) {
    if let Ok(file) = std::fs::File::options().append(true).open(path) {
        let _ = file.set_modified(std::time::SystemTime::now());
    }
}

/// Removes the least recently used entries of a cache directory (its
/// `*.<extension>` files, and a directory of the same name beside each, as
/// an npm tree is beside its record) until
/// the rest fit in `budget` bytes, leaving alone any used within `grace`.
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
