//! `mizzen run` as users run it: the binary, the examples, exit codes and
//! messages.

mod common;
use common::{Ran, repo};

use std::path::Path;
use std::process::{Command, Output};

fn mizzen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mizzen"))
        .args(args)
        .current_dir(repo())
        .env(
            "MIZZEN_CACHE_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("mizzen-cache"),
        )
        .output()
        .expect("mizzen runs")
}

fn run(args: &[&str]) -> Ran {
    Ran::from(mizzen(args))
}

/// A project directory with `project.yaml` and optional files.
fn project(yaml: &str, files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("project.yaml"), yaml).unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

fn inline_project(script: &str) -> tempfile::TempDir {
    let indented: String = script.lines().map(|l| format!("        {l}\n")).collect();
    project(
        &format!(
            "apiVersion: brigade.sh/v2\nkind: Project\nmetadata:\n  id: cli-test\nspec:\n  eventSubscriptions:\n  - source: brigade.sh/cli\n    types: [exec]\n  workerTemplate:\n    defaultConfigFiles:\n      brigade.js: |\n{indented}"
        ),
        &[],
    )
}

fn path(dir: &tempfile::TempDir) -> &str {
    dir.path().to_str().unwrap()
}

#[test]
fn first_event_prints_hello_world_and_its_summary() {
    let ran = run(&["run", "examples/02-first-event"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert!(
        lines[0].ends_with(" INFO: brigade-worker version: mizzen 0.1.0"),
        "{ran:?}"
    );
    assert_eq!(
        lines[1..],
        ["Hello, World!", "Summary: All done."],
        "{ran:?}"
    );
}

#[test]
fn hello_world_runs_a_plain_script() {
    let ran = run(&["run", "examples/01-hello-world/project.yaml"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.stdout.ends_with("Hello, World!\n"), "{ran:?}");
}

#[test]
fn first_payload_greets_the_payload_and_names_the_project() {
    let ran = run(&["run", "examples/07-first-payload", "--payload", "Brigade"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(
        ran.stdout
            .contains("Project: first-payload\nHello, Brigade!\n"),
        "{ran:?}"
    );
}

#[test]
fn the_typescript_example_runs() {
    let ran = run(&["run", "examples/11-typescript", "--payload", "Mizzen"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.stdout.contains("Hello, Mizzen!\n"), "{ran:?}");
    assert!(ran.stdout.contains("DEBUG: handled event "), "{ran:?}");
    assert!(ran.stdout.contains("Summary: Greeted Mizzen."), "{ran:?}");
}

#[test]
fn secrets_from_flags_and_files_reach_the_script() {
    let dir = inline_project(
        // Reversed, since the values themselves are masked in the output.
        "const { events } = require(\"brigadier\");\nevents.on(\"brigade.sh/cli\", \"exec\", (e) => {\n  const s = e.project.secrets;\n  console.log(JSON.stringify(Object.keys(s).map((k) => [k, [...s[k]].reverse().join(\"\")])));\n  console.log(JSON.stringify(s));\n});\nevents.process();",
    );
    std::fs::write(
        dir.path().join("secrets.yaml"),
        "fromFile: file-value\nnumber: 42\n",
    )
    .unwrap();
    let secrets = dir.path().join("secrets.yaml");
    let ran = run(&[
        "run",
        path(&dir),
        "--secrets-file",
        secrets.to_str().unwrap(),
        "--secret",
        "fromFlag=a=b",
    ]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(
        ran.stdout
            .contains(r#"[["fromFile","eulav-elif"],["fromFlag","b=a"],["number","24"]]"#),
        "{ran:?}"
    );
    assert!(
        ran.stdout
            .contains(r#"{"fromFile":"***","fromFlag":"***","number":"***"}"#),
        "{ran:?}"
    );
}

#[test]
fn the_log_level_flag_overrides_the_projects() {
    let dir = inline_project("require(\"brigadier\").logger.debug(\"a debug line\");");
    let quiet = run(&["run", path(&dir)]);
    assert!(!quiet.stdout.contains("a debug line"), "{quiet:?}");
    let loud = run(&["run", path(&dir), "--log-level", "debug"]);
    assert!(loud.stdout.contains("DEBUG: a debug line"), "{loud:?}");
}

#[test]
fn a_failing_script_exits_1_and_says_where() {
    let dir = inline_project("console.log(\"start\");\nthrow new Error(\"boom\");");
    let ran = run(&["run", path(&dir)]);
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(
        ran.stderr.contains("worker FAILED: brigade.js:2:"),
        "{ran:?}"
    );
    assert!(ran.stderr.contains("Error: boom"), "{ran:?}");
}

#[test]
fn a_javascript_syntax_error_exits_1_with_file_and_line() {
    let dir = inline_project("const x = ;");
    let ran = run(&["run", path(&dir)]);
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(
        ran.stderr
            .contains("worker FAILED: brigade.js:1:11: SyntaxError"),
        "{ran:?}"
    );
}

#[test]
fn a_runaway_loop_is_stopped_by_the_cpu_limit() {
    let dir = inline_project("while (true) {}");
    let ran = run(&["run", path(&dir), "--cpu-limit", "200ms"]);
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(
        ran.stderr
            .contains("worker FAILED: CPU time limit of 200ms exceeded"),
        "{ran:?}"
    );
}

#[test]
fn a_memory_bomb_is_stopped_by_the_memory_limit() {
    let dir = inline_project("const a = [];\nfor (;;) a.push(new Array(1e6).fill(1));");
    let ran = run(&["run", path(&dir), "--memory-limit", "48Mi"]);
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(
        ran.stderr
            .contains("worker FAILED: memory limit of 48 MiB exceeded"),
        "{ran:?}"
    );
    // The flag takes quantities, as project files do; a bare number is
    // bytes, and one too small says what was likely meant.
    let small = run(&["run", path(&dir), "--memory-limit", "48"]);
    assert_eq!(small.code, 2, "{small:?}");
    assert!(
        small.stderr.contains("\"48\" is 48 bytes") && small.stderr.contains("did you mean 48Mi?"),
        "{small:?}"
    );
    let wrong = run(&["run", path(&dir), "--memory-limit", "48MB"]);
    assert!(
        wrong
            .stderr
            .contains("\"48MB\" is not a size such as 512Mi or 2Gi"),
        "{wrong:?}"
    );
}

#[test]
fn a_project_timeout_ends_the_worker_timed_out() {
    let dir = project(
        "apiVersion: brigade.sh/v2\nkind: Project\nmetadata:\n  id: slow-one\nspec:\n  eventSubscriptions:\n  - source: brigade.sh/cli\n    types: [exec]\n  workerTemplate:\n    timeoutDuration: 300ms\n    defaultConfigFiles:\n      brigade.js: setTimeout(() => {}, 60000);\n",
        &[],
    );
    let ran = run(&["run", path(&dir)]);
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(
        ran.stderr
            .contains("worker TIMED_OUT: timed out after 300ms"),
        "{ran:?}"
    );
}

#[test]
fn an_invalid_project_file_exits_2_naming_the_field() {
    let dir = project(
        "apiVersion: brigade.sh/v2\nkind: Project\nmetadata:\n  id: Not_Valid\nspec:\n  workerTemplate: {}\n",
        &[],
    );
    let ran = run(&["run", path(&dir)]);
    assert_eq!(ran.code, 2, "{ran:?}");
    assert!(
        ran.stderr
            .contains("project.yaml: metadata.id: \"Not_Valid\" must match"),
        "{ran:?}"
    );

    let typo = project(
        "apiVersion: brigade.sh/v2\nkind: Project\nmetadata:\n  id: typo\nspec:\n  workerTemplate:\n    useWorkspce: true\n",
        &[],
    );
    let ran = run(&["run", path(&typo)]);
    assert_eq!(ran.code, 2, "{ran:?}");
    assert!(
        ran.stderr.contains("unknown field `useWorkspce`"),
        "{ran:?}"
    );
    assert!(ran.stderr.contains("line 7"), "{ran:?}");

    let missing = run(&["run", "/nonexistent/project"]);
    assert_eq!(missing.code, 2, "{missing:?}");
    assert!(
        missing.stderr.contains("/nonexistent/project: cannot read the project: No such file or directory (os error 2)\n"),
        "{missing:?}"
    );
}

#[test]
fn a_missing_script_fails_the_worker_saying_what_was_looked_for() {
    let dir = project(
        "apiVersion: brigade.sh/v2\nkind: Project\nmetadata:\n  id: no-script\nspec:\n  eventSubscriptions:\n  - source: brigade.sh/cli\n    types: [exec]\n  workerTemplate: {}\n",
        &[],
    );
    let ran = run(&["run", path(&dir)]);
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(
        ran.stderr.contains(
            "found nothing to run: none of brigade.wasm, brigade.ts and brigade.js is in"
        ),
        "{ran:?}"
    );
}

#[test]
fn a_script_in_the_config_files_directory_wins_over_an_inline_one() {
    let dir = project(
        "apiVersion: brigade.sh/v2\nkind: Project\nmetadata:\n  id: from-files\nspec:\n  eventSubscriptions:\n  - source: brigade.sh/cli\n    types: [exec]\n  workerTemplate:\n    configFilesDirectory: scripts\n    defaultConfigFiles:\n      brigade.js: console.log(\"inline\")\n",
        &[(
            "scripts/brigade.js",
            "console.log(\"from the repository\")\n",
        )],
    );
    let ran = run(&["run", path(&dir)]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.stdout.contains("from the repository\n"), "{ran:?}");
    assert!(!ran.stdout.contains("inline"), "{ran:?}");
}

#[test]
fn an_unreadable_payload_file_exits_2() {
    let ran = run(&[
        "run",
        "examples/07-first-payload",
        "--payload-file",
        "/nonexistent/payload.json",
    ]);
    assert_eq!(ran.code, 2, "{ran:?}");
    assert!(
        ran.stderr
            .contains("cannot read the payload file /nonexistent/payload.json: No such file"),
        "{ran:?}"
    );
}

#[test]
fn a_payload_file_is_the_payload() {
    let dir = tempfile::tempdir().unwrap();
    let payload = dir.path().join("payload.txt");
    std::fs::write(&payload, "from a file").unwrap();
    let ran = run(&[
        "run",
        "examples/07-first-payload",
        "--payload-file",
        payload.to_str().unwrap(),
    ]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.stdout.contains("Hello, from a file!"), "{ran:?}");
}

#[test]
fn bad_secrets_exit_2_naming_the_problem() {
    let dir = inline_project("console.log(1);");
    let ran = run(&["run", path(&dir), "--secret", "no-equals-sign"]);
    assert_eq!(ran.code, 2, "{ran:?}");
    assert!(
        ran.stderr.contains("must have the form KEY=VALUE"),
        "{ran:?}"
    );
    let ran = run(&["run", path(&dir), "--secret", "1bad=x"]);
    assert_eq!(ran.code, 2, "{ran:?}");
    assert!(ran.stderr.contains("secret key \"1bad\""), "{ran:?}");
    std::fs::write(dir.path().join("nested.yaml"), "outer:\n  inner: value\n").unwrap();
    let nested = dir.path().join("nested.yaml");
    let ran = run(&[
        "run",
        path(&dir),
        "--secrets-file",
        nested.to_str().unwrap(),
    ]);
    assert_eq!(ran.code, 2, "{ran:?}");
    assert!(
        ran.stderr.contains("secret \"outer\" must be a string"),
        "{ran:?}"
    );
    // A value past 48 KiB, from a flag or a file.
    let long = "v".repeat(48 * 1024 + 1);
    let ran = run(&["run", path(&dir), "--secret", &format!("big={long}")]);
    assert_eq!(ran.code, 2, "{ran:?}");
    assert!(
        ran.stderr.contains("secret \"big\"") && ran.stderr.contains("at most 49152 bytes"),
        "{ran:?}"
    );
    std::fs::write(dir.path().join("big.yaml"), format!("big: {long}\n")).unwrap();
    let big = dir.path().join("big.yaml");
    let ran = run(&["run", path(&dir), "--secrets-file", big.to_str().unwrap()]);
    assert_eq!(ran.code, 2, "{ran:?}");
    assert!(
        ran.stderr.contains("big.yaml") && ran.stderr.contains("at most 49152 bytes"),
        "{ran:?}"
    );
}

/// A Brigade CI project subscribes to GitHub's synthetic events of one
/// repository: `mizzen run` gives the qualifier and labels such an event
/// carries, and without them says which flags the subscription asks for.
#[test]
fn qualifiers_and_labels_reach_a_project_subscribed_to_them() {
    let dir = project(
        r#"apiVersion: brigade.sh/v2
kind: Project
metadata:
  id: brigade-ci
spec:
  eventSubscriptions:
  - source: brigade.sh/github
    types: [ci:job_requested]
    qualifiers:
      repo: brigadecore/brigade
  workerTemplate:
    defaultConfigFiles:
      brigade.js: |
        const { events } = require("@brigadecore/brigadier");
        events.on("brigade.sh/github", "ci:job_requested", async (event) => {
          console.log(`repo ${event.qualifiers.repo}, job ${event.labels.job}`);
        });
        events.process();
"#,
        &[],
    );
    let github = [
        "--source",
        "brigade.sh/github",
        "--type",
        "ci:job_requested",
    ];
    let with = |extra: &[&str]| {
        let mut args = vec!["run", path(&dir)];
        args.extend(github);
        args.extend(extra);
        run(&args)
    };
    let ran = with(&[
        "--qualifier",
        "repo=brigadecore/brigade",
        "--label",
        "job=test-unit",
    ]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(
        ran.stdout
            .contains("repo brigadecore/brigade, job test-unit\n"),
        "{ran:?}"
    );

    let ran = with(&["--label", "job=test-unit"]);
    assert_eq!(ran.code, 3, "{ran:?}");
    assert!(
        ran.stderr.contains(
            "project \"brigade-ci\" does not subscribe to events of source \"brigade.sh/github\" and type \"ci:job_requested\" with labels job=test-unit; no worker ran (its subscription asks for --qualifier repo=brigadecore/brigade)"
        ),
        "{ran:?}"
    );
    // Qualifiers match exactly: one more is another event.
    let ran = with(&[
        "--qualifier",
        "repo=brigadecore/brigade",
        "--qualifier",
        "extra=x",
    ]);
    assert_eq!(ran.code, 3, "{ran:?}");

    for (flag, value, error) in [
        (
            "--qualifier",
            "repo",
            "\"repo\" must have the form KEY=VALUE",
        ),
        ("--qualifier", "=x", "\"=x\" has an empty key"),
        ("--label", "job=a b", "the value of \"job\" contains ' '"),
    ] {
        let ran = with(&[flag, value]);
        assert_eq!(ran.code, 2, "{ran:?}");
        assert!(ran.stderr.contains(error), "{flag} {value}: {ran:?}");
    }
    let long = format!("job={}", "x".repeat(256));
    let ran = with(&["--label", &long]);
    assert_eq!(ran.code, 2, "{ran:?}");
    assert!(
        ran.stderr.contains("256 characters long; at most 255"),
        "{ran:?}"
    );
}

#[test]
fn an_event_the_project_does_not_subscribe_to_runs_nothing() {
    let ran = run(&["run", "examples/02-first-event", "--type", "push"]);
    assert_eq!(ran.code, 3, "{ran:?}");
    assert!(
        ran.stderr.contains("project \"first-event\" does not subscribe to events of source \"brigade.sh/cli\" and type \"push\"; no worker ran"),
        "{ran:?}"
    );
    assert!(ran.stdout.is_empty(), "{ran:?}");
}

#[test]
fn runs_started_at_once_on_a_new_data_directory_all_succeed() {
    // Each run opens (and on the first, creates and migrates) the data
    // directory's catalog of artifacts and caches: the migrations of one
    // must not trip over another's.
    let data = tempfile::tempdir().unwrap();
    let runs: Vec<_> = (0..8)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_mizzen"))
                .args(["run", "examples/01-hello-world", "--executor", "none"])
                .current_dir(repo())
                .env("MIZZEN_DATA_DIR", data.path())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("mizzen runs")
        })
        .collect();
    for child in runs {
        let ran = Ran::from(child.wait_with_output().unwrap());
        assert_eq!(ran.code, 0, "{ran:?}");
        assert!(ran.stdout.contains("Hello, World!"), "{ran:?}");
    }
}
