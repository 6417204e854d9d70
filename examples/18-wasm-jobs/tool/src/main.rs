//! A small WASI tool, run by example 18 as a Wasm job:
//!
//! - `checksum write DIR MANIFEST`: one line `<crc32> <bytes> <name>` per file of DIR;
//! - `checksum verify MANIFEST FILE`: exits 1 unless FILE's line in MANIFEST matches it.
//!
//! It can open only the directories its job preopens (workspaceMountPath).

use std::path::Path;
use std::process::ExitCode;

/// CRC-32 (IEEE), bit by bit: small, and plenty fast for a manifest.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for byte in bytes {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn line_for(path: &Path) -> std::io::Result<String> {
    let bytes = std::fs::read(path)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    Ok(format!("{:08x} {} {name}", crc32(&bytes), bytes.len()))
}

fn write(dir: &str, manifest: &str) -> std::io::Result<()> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    paths.sort();
    let mut lines = String::new();
    for path in paths.iter().filter(|p| p.is_file()) {
        let line = line_for(path)?;
        println!("{line}");
        lines.push_str(&line);
        lines.push('\n');
    }
    std::fs::write(manifest, lines)
}

fn verify(manifest: &str, file: &str) -> std::io::Result<bool> {
    let expected = line_for(Path::new(file))?;
    let listed = std::fs::read_to_string(manifest)?
        .lines()
        .any(|line| line == expected);
    println!(
        "{file}: {}",
        if listed {
            "OK"
        } else {
            "does not match the manifest"
        }
    );
    Ok(listed)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[1..] {
        ["write", dir, manifest] => write(dir, manifest).map(|()| true),
        ["verify", manifest, file] => verify(manifest, file),
        _ => {
            eprintln!("usage: checksum write DIR MANIFEST | checksum verify MANIFEST FILE");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("checksum: {e}");
            ExitCode::FAILURE
        }
    }
}
