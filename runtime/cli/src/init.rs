//! `mizzen init`: a new project directory whose script builds and runs, in
//! JavaScript, TypeScript, Rust or Go.
//!
//! A Rust or Go project gets its SDK's sources beside its script
//! (`brigadier/`, as a vendored dependency: the SDKs are not published to a
//! registry) and a `build.sh` that makes `.brigade/brigade.wasm`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use std::io::Write as _;

/// The script's language.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Lang {
    /// .brigade/brigade.js
    Js,
    /// .brigade/brigade.ts
    Ts,
    /// script/ (Rust), built into .brigade/brigade.wasm
    Rust,
    /// script/ (Go), built into .brigade/brigade.wasm
    Go,
}

#[derive(Args)]
pub struct InitArgs {
    /// The directory to create the project in (created if missing; it must
    /// not hold a project already)
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// The script's language
    #[arg(long, value_enum, default_value = "js")]
    lang: Lang,
    /// The project's id (by default the directory's name, made valid)
    #[arg(long)]
    id: Option<String>,
}

/// The Rust SDK's files, as guest-sdk/rust has them (a test checks that
/// none is missing).
const RUST_SDK: [(&str, &str); 11] = [
    (
        "Cargo.toml",
        include_str!("../../../guest-sdk/rust/Cargo.toml"),
    ),
    (
        "README.md",
        include_str!("../../../guest-sdk/rust/README.md"),
    ),
    (
        "src/artifacts.rs",
        include_str!("../../../guest-sdk/rust/src/artifacts.rs"),
    ),
    (
        "src/error.rs",
        include_str!("../../../guest-sdk/rust/src/error.rs"),
    ),
    (
        "src/event.rs",
        include_str!("../../../guest-sdk/rust/src/event.rs"),
    ),
    (
        "src/executor.rs",
        include_str!("../../../guest-sdk/rust/src/executor.rs"),
    ),
    (
        "src/host.rs",
        include_str!("../../../guest-sdk/rust/src/host.rs"),
    ),
    (
        "src/job.rs",
        include_str!("../../../guest-sdk/rust/src/job.rs"),
    ),
    (
        "src/lib.rs",
        include_str!("../../../guest-sdk/rust/src/lib.rs"),
    ),
    (
        "src/logger.rs",
        include_str!("../../../guest-sdk/rust/src/logger.rs"),
    ),
    (
        "src/workspace.rs",
        include_str!("../../../guest-sdk/rust/src/workspace.rs"),
    ),
];

/// The Rust SDK's tests, which its lib.rs names (`mod tests`).
const RUST_SDK_TESTS: (&str, &str) = (
    "src/tests.rs",
    include_str!("../../../guest-sdk/rust/src/tests.rs"),
);

/// The operation numbers the Rust SDK includes from the host API's crate.
const OP_CODES: &str = include_str!("../../../host-api/src/op_codes.rs");
const OP_CODES_INCLUDE: &str = r#"include!("../../../host-api/src/op_codes.rs");"#;

/// The Go SDK's files, as guest-sdk/go has them (tests and build script
/// aside; a test checks that none is missing).
const GO_SDK: [(&str, &str); 12] = [
    ("go.mod", include_str!("../../../guest-sdk/go/go.mod")),
    ("README.md", include_str!("../../../guest-sdk/go/README.md")),
    (
        "artifacts.go",
        include_str!("../../../guest-sdk/go/artifacts.go"),
    ),
    ("doc.go", include_str!("../../../guest-sdk/go/doc.go")),
    ("events.go", include_str!("../../../guest-sdk/go/events.go")),
    ("host.go", include_str!("../../../guest-sdk/go/host.go")),
    (
        "host_other.go",
        include_str!("../../../guest-sdk/go/host_other.go"),
    ),
    (
        "host_wasip1.go",
        include_str!("../../../guest-sdk/go/host_wasip1.go"),
    ),
    ("jobs.go", include_str!("../../../guest-sdk/go/jobs.go")),
    ("logger.go", include_str!("../../../guest-sdk/go/logger.go")),
    (
        "tickets.go",
        include_str!("../../../guest-sdk/go/tickets.go"),
    ),
    (
        "workspace.go",
        include_str!("../../../guest-sdk/go/workspace.go"),
    ),
];

const RUST_SCRIPT_MANIFEST: &str = r#"[package]
name = "script"
version = "0.1.0"
edition = "2024"
publish = false

[dependencies]
brigadier = { package = "mizzen-brigadier", path = "../brigadier" }

# Small modules: a script is compiled by the host once, and instantiated for
# every event.
[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
panic = "abort"
strip = "debuginfo"

[workspace]
"#;

const GO_SCRIPT_MODULE: &str = "module script\n\ngo 1.24\n\nrequire mizzen.dev/brigadier v0.0.0\n\nreplace mizzen.dev/brigadier => ../brigadier\n";

/// Creates the project and says what to do next.
pub fn init(args: InitArgs) -> anyhow::Result<()> {
    let dir = &args.dir;
    if dir.join("project.yaml").exists() {
        bail!(
            "{} already holds a project (project.yaml); choose another directory",
            dir.display()
        );
    }
    let id = match args.id {
        Some(id) => id,
        None => project_id(dir)?,
    };
    let mut files: Vec<(String, String)> =
        vec![("project.yaml".into(), project_yaml(&id, args.lang))];
    match args.lang {
        Lang::Js => files.push((
            ".brigade/brigade.js".into(),
            include_str!("init/brigade.js").into(),
        )),
        Lang::Ts => files.push((
            ".brigade/brigade.ts".into(),
            include_str!("init/brigade.ts").into(),
        )),
        Lang::Rust => {
            for (name, text) in RUST_SDK.iter().chain([&RUST_SDK_TESTS]) {
                let text = text.replace(OP_CODES_INCLUDE, r#"include!("op_codes.rs");"#);
                files.push((format!("brigadier/{name}"), text));
            }
            files.push(("brigadier/src/op_codes.rs".into(), OP_CODES.into()));
            files.push(("script/Cargo.toml".into(), RUST_SCRIPT_MANIFEST.into()));
            files.push((
                "script/src/main.rs".into(),
                include_str!("init/main.rs").into(),
            ));
            files.push(("build.sh".into(), include_str!("init/build-rust.sh").into()));
            files.push((".gitignore".into(), "target/\n".into()));
        }
        Lang::Go => {
            for (name, text) in GO_SDK {
                files.push((format!("brigadier/{name}"), text.into()));
            }
            files.push(("script/go.mod".into(), GO_SCRIPT_MODULE.into()));
            files.push(("script/main.go".into(), include_str!("init/main.go").into()));
            files.push(("build.sh".into(), include_str!("init/build-go.sh").into()));
        }
    }
    for (name, text) in &files {
        write(&dir.join(name), text)?;
    }
    let shown = dir.display();
    let next = match args.lang {
        Lang::Js | Lang::Ts => format!("run it:  mizzen run {shown}"),
        Lang::Rust | Lang::Go => {
            format!("build it: {shown}/build.sh\nrun it:   mizzen run {shown}")
        }
    };
    // Like every command's output, a closed pipe is not worth reporting.
    let _ = writeln!(
        std::io::stdout(),
        "created project {id:?} in {shown}\n{next}"
    );
    Ok(())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "sh") {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot make {} executable", path.display()))?;
    }
    Ok(())
}

/// The directory's name as a project id: lower case, letters, digits and
/// dashes (Brigade's rule for ids).
fn project_id(dir: &Path) -> anyhow::Result<String> {
    let absolute =
        std::path::absolute(dir).with_context(|| format!("cannot resolve {}", dir.display()))?;
    let name = absolute
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let mut id = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            id.push(c);
        } else if !id.is_empty() && !id.ends_with('-') {
            id.push('-');
        }
    }
    let id = id.trim_matches('-').to_string();
    if id.is_empty() || !id.starts_with(|c: char| c.is_ascii_lowercase()) {
        bail!(
            "cannot make a project id from the directory name {name:?}; give one with --id (lower-case letters, digits and dashes, starting with a letter)"
        );
    }
    Ok(id)
}

fn project_yaml(id: &str, lang: Lang) -> String {
    let script = match lang {
        Lang::Js => "its script is .brigade/brigade.js",
        Lang::Ts => "its script is .brigade/brigade.ts",
        Lang::Rust => "its script is script/ (Rust), built by build.sh into .brigade/brigade.wasm",
        Lang::Go => "its script is script/ (Go), built by build.sh into .brigade/brigade.wasm",
    };
    format!(
        "# A Brigade v2 project for Mizzen; {script}.\n\
apiVersion: brigade.sh/v2\n\
kind: Project\n\
metadata:\n  id: {id}\n\
description: Made by mizzen init\n\
spec:\n  eventSubscriptions:\n  - source: brigade.sh/cli\n    types:\n    - exec\n  workerTemplate:\n    logLevel: INFO\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files_in(dir: &str, skip: &[&str]) -> Vec<String> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(dir);
        let mut found = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(at) = stack.pop() {
            for entry in std::fs::read_dir(&at).unwrap() {
                let path = entry.unwrap().path();
                let name = path
                    .strip_prefix(&root)
                    .unwrap()
                    .to_string_lossy()
                    .to_string();
                if skip
                    .iter()
                    .any(|s| name == *s || name.starts_with(&format!("{s}/")))
                {
                    continue;
                }
                if path.is_dir() {
                    stack.push(path);
                } else {
                    found.push(name);
                }
            }
        }
        found.sort();
        found
    }

    /// A new SDK file that `mizzen init` does not copy would leave every
    /// scaffolded project unable to build.
    #[test]
    fn the_scaffolds_carry_every_file_of_their_sdk() {
        let mut rust: Vec<String> = RUST_SDK
            .iter()
            .chain([&RUST_SDK_TESTS])
            .map(|(name, _)| name.to_string())
            .collect();
        rust.sort();
        let skip = ["target", ".gitignore", "Cargo.lock", "build.sh"];
        assert_eq!(rust, files_in("guest-sdk/rust", &skip));
        let mut go: Vec<String> = GO_SDK.iter().map(|(name, _)| name.to_string()).collect();
        go.sort();
        assert_eq!(
            go,
            files_in("guest-sdk/go", &["build.sh", "brigadier_test.go"])
        );
        assert!(
            RUST_SDK
                .iter()
                .any(|(_, text)| text.contains(OP_CODES_INCLUDE)),
            "the Rust SDK no longer includes op_codes.rs as init expects"
        );
    }

    #[test]
    fn directory_names_become_valid_ids() {
        assert_eq!(
            project_id(Path::new("/tmp/My Project_2")).unwrap(),
            "my-project-2"
        );
        assert!(project_id(Path::new("/tmp/42")).is_err());
    }
}
