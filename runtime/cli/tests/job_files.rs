//! `mizzen job-files`, the helper beside a Kubernetes job, against a real
//! `mizzen server`: with a job's token it restores and saves that job's
//! declared artifacts and caches, and nothing of another job, event or
//! project; its receipts check only for its own job.
//!
//! The jobs are recorded in the server's store as a worker records them,
//! and the receipts kept as the executor keeps them, so that the helper's
//! part is tested alone; the Kubernetes executor's tests drive the rest.

mod common;

use std::path::Path;
use std::process::{Child, Command};

use mizzen_host_api::types::Phase;
use mizzen_objects::{Catalog, JobClaim, JobTokens, KeptArtifact, KeptCache};
use mizzen_server::store::{JobRecord, Store};
use serde_json::json;

const ROOT_PASSWORD: &str = "job-files-root";

struct Server {
    child: Child,
    url: String,
    data_dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(database_url: Option<&str>) -> Server {
    let data_dir = tempfile::tempdir().unwrap();
    let log = data_dir.path().join("server.log");
    let mut args = vec!["--executor".to_string(), "none".to_string()];
    if let Some(url) = database_url {
        args.extend(["--database-url".to_string(), url.to_string()]);
    }
    let (child, url) = common::spawn_server(data_dir.path(), &log, ROOT_PASSWORD, &args, &[], None);
    Server {
        child,
        url,
        data_dir,
    }
}

async fn record_job(store: &Store, event_id: &str, name: &str, spec: serde_json::Value) {
    record_job_in(store, event_id, name, spec, Phase::Running).await;
}

async fn record_job_in(
    store: &Store,
    event_id: &str,
    name: &str,
    spec: serde_json::Value,
    phase: Phase,
) {
    store
        .create_job(&JobRecord {
            event_id: event_id.into(),
            name: name.into(),
            created: 0,
            spec,
            phase,
            started: None,
            ended: None,
            logs_event_id: event_id.into(),
            uses_workspace: false,
        })
        .await
        .unwrap();
}

fn job_spec(kept: serde_json::Value) -> serde_json::Value {
    let mut spec = json!({
        "primaryContainer": { "image": "alpine:3", "user": "1000:1000" },
        "timeoutSeconds": 600,
    });
    for (key, value) in kept.as_object().unwrap() {
        spec[key] = value.clone();
    }
    spec
}

fn claim(event_id: &str, project_id: &str, job: &str) -> JobClaim {
    JobClaim {
        event_id: event_id.into(),
        project_id: project_id.into(),
        job: job.into(),
        expires: i64::MAX,
        artifact_bytes: 1 << 20,
        cache_bytes: 1 << 20,
    }
}

/// Runs `mizzen job-files ARGS` with `token` in a file; its exit code,
/// stdout and stderr.
fn helper(server: &Server, token: &str, args: &[&str]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token).unwrap();
    let (command, rest) = args.split_first().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_mizzen"))
        .args([
            "job-files",
            command,
            "--server",
            &server.url,
            "--token-file",
        ])
        .arg(&token_file)
        .args(rest)
        .output()
        .unwrap();
    let mut stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        // What the server said of it, for a failure's message.
        let log = std::fs::read_to_string(server.data_dir.path().join("server.log"));
        stderr.push_str(&format!("\n--- server log:\n{}", log.unwrap_or_default()));
    }
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr,
    )
}

fn write_tree(root: &Path, files: &[(&str, &str)]) {
    for (path, contents) in files {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }
}

fn read(root: &Path, path: &str) -> Option<String> {
    std::fs::read_to_string(root.join(path)).ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_token_restores_and_saves_its_own_jobs_entries_and_nothing_else_on_sqlite() {
    a_job_token_opens_its_own_jobs_entries(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_token_restores_and_saves_its_own_jobs_entries_and_nothing_else_on_postgres() {
    if let Some(url) = common::postgres_database("job_files_on_postgres") {
        a_job_token_opens_its_own_jobs_entries(Some(url)).await;
    }
}

async fn a_job_token_opens_its_own_jobs_entries(database_url: Option<String>) {
    let server = {
        let url = database_url.clone();
        tokio::task::spawn_blocking(move || start(url.as_deref()))
            .await
            .unwrap()
    };
    let store = Store::open(database_url.as_deref(), server.data_dir.path())
        .await
        .unwrap();
    let tokens = JobTokens::new(store.job_token_key().await.unwrap());
    let (event, other_event) = ("event-1", "event-2");
    record_job(
        &store,
        event,
        "build",
        job_spec(json!({
            "artifacts": { "save": [
                { "name": "dist", "path": "/out" },
                { "name": "reports", "path": "/reports/*.xml" },
            ] },
            "caches": [{ "key": "deps-2", "restoreKeys": ["deps-"], "path": "/deps" }],
        })),
    )
    .await;
    record_job(
        &store,
        event,
        "test",
        job_spec(json!({ "artifacts": { "restore": [{ "name": "dist" }] } })),
    )
    .await;
    // Another event's job that names the same artifact, and another
    // project's job that names the same cache.
    record_job(
        &store,
        other_event,
        "test",
        job_spec(json!({
            "artifacts": { "restore": [{ "name": "dist" }] },
            "caches": [{ "key": "deps-2", "path": "/deps" }],
        })),
    )
    .await;
    // An older entry of the cache's restore key, in the build's project.
    let work = tempfile::tempdir().unwrap();
    let old_deps = work.path().join("old-deps");
    write_tree(&old_deps, &[("lib/a.txt", "old a")]);
    let seed = tokens.issue(&claim(event, "web", "build"));
    let (code, _, stderr) = helper(
        &server,
        &seed,
        &[
            "save",
            "--receipts",
            work.path().join("seed").to_str().unwrap(),
            &format!("2={}", old_deps.display()),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    let seed_receipt = std::fs::read_to_string(work.path().join("seed")).unwrap();
    let seed_receipt = tokens.check_receipt(event, "build", &seed_receipt).unwrap();
    store
        .keep_cache(
            &KeptCache {
                project_id: "web".into(),
                key: "deps-1".into(),
                tree: seed_receipt.tree,
                bytes: seed_receipt.bytes,
                files: seed_receipt.files,
                created: 1,
                last_used: 1,
            },
            1 << 20,
        )
        .await
        .unwrap();

    // The build restores its cache from the restore key's entry...
    let build = tokens.issue(&claim(event, "web", "build"));
    let deps = work.path().join("deps");
    std::fs::create_dir(&deps).unwrap();
    let (code, stdout, stderr) = helper(
        &server,
        &build,
        &["restore", &format!("0={}", deps.display())],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("restored from deps-1"), "{stdout}");
    assert_eq!(read(&deps, "lib/a.txt").as_deref(), Some("old a"));
    // ...builds, and saves its artifacts (the pattern picks the reports)
    // and its cache, which missed its own key.
    let (out, reports) = (work.path().join("out"), work.path().join("reports"));
    write_tree(&out, &[("app.js", "built"), ("sub/map.json", "{}")]);
    write_tree(
        &reports,
        &[("junit.xml", "<ok/>"), ("notes.txt", "not saved")],
    );
    write_tree(&deps, &[("lib/b.txt", "new b")]);
    let receipts = work.path().join("receipts");
    let (code, _, stderr) = helper(
        &server,
        &build,
        &[
            "save",
            "--receipts",
            receipts.to_str().unwrap(),
            &format!("0={}", out.display()),
            &format!("1={}", reports.display()),
            &format!("2={}", deps.display()),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    let receipts = std::fs::read_to_string(&receipts).unwrap();
    let lines: Vec<&str> = receipts.lines().collect();
    assert_eq!(lines.len(), 3, "{receipts}");
    // The receipts check for the build only.
    let checked: Vec<_> = lines
        .iter()
        .map(|line| tokens.check_receipt(event, "build", line).unwrap())
        .collect();
    assert_eq!(
        checked
            .iter()
            .map(|r| (r.save, r.files))
            .collect::<Vec<_>>(),
        [(0, 2), (1, 1), (2, 2)]
    );
    for line in &lines {
        assert!(tokens.check_receipt(event, "test", line).is_err());
        assert!(tokens.check_receipt(other_event, "build", line).is_err());
    }
    // The executor keeps the build's artifact, as it saw the job succeed.
    store
        .keep_artifact(
            &KeptArtifact {
                event_id: event.into(),
                project_id: "web".into(),
                name: "dist".into(),
                job: "build".into(),
                path: "/out".into(),
                tree: checked[0].tree,
                bytes: checked[0].bytes,
                files: checked[0].files,
                created: 2,
            },
            1 << 20,
        )
        .await
        .unwrap();
    store
        .keep_cache(
            &KeptCache {
                project_id: "web".into(),
                key: "deps-2".into(),
                tree: checked[2].tree,
                bytes: checked[2].bytes,
                files: checked[2].files,
                created: 3,
                last_used: 3,
            },
            1 << 20,
        )
        .await
        .unwrap();

    // The test job restores the artifact, owned as its spec's user.
    let test = tokens.issue(&claim(event, "web", "test"));
    let dist = work.path().join("dist");
    std::fs::create_dir(&dist).unwrap();
    let (code, _, stderr) = helper(
        &server,
        &test,
        &["restore", &format!("0={}", dist.display())],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(read(&dist, "app.js").as_deref(), Some("built"));
    assert_eq!(read(&dist, "sub/map.json").as_deref(), Some("{}"));
    if rustix::process::geteuid().is_root() {
        use std::os::unix::fs::MetadataExt;
        let restored = std::fs::metadata(dist.join("app.js")).unwrap();
        assert_eq!((restored.uid(), restored.gid()), (1000, 1000));
    }
    // A cache kept already is not sent again.
    let (code, stdout, stderr) = helper(
        &server,
        &build,
        &[
            "save",
            "--receipts",
            work.path().join("again").to_str().unwrap(),
            &format!("2={}", deps.display()),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("kept already"), "{stdout}");
    assert_eq!(
        std::fs::read_to_string(work.path().join("again")).unwrap(),
        ""
    );

    // Another event's job does not find this event's artifact, and another
    // project's job misses this project's cache of the same key.
    let stranger = tokens.issue(&claim(other_event, "mobile", "test"));
    let elsewhere = work.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let (code, _, stderr) = helper(
        &server,
        &stranger,
        &["restore", &format!("0={}", elsewhere.display())],
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("404"), "{stderr}");
    let (code, stdout, stderr) = helper(
        &server,
        &stranger,
        &["restore", &format!("1={}", elsewhere.display())],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("starts empty (cache miss)"), "{stdout}");
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    // An entry the job does not declare cannot be named.
    let (code, _, stderr) = helper(
        &server,
        &test,
        &["restore", &format!("1={}", elsewhere.display())],
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("declares 1 restores"), "{stderr}");

    // Tokens: expired, signed by another key, for a job not recorded, and
    // not a job token at all (a user's).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let expired = tokens.issue(&JobClaim {
        expires: 1,
        ..claim(event, "web", "test")
    });
    let foreign = JobTokens::new([9; 32]).issue(&claim(event, "web", "test"));
    let unknown = tokens.issue(&claim(event, "web", "deploy"));
    record_job_in(
        &store,
        event,
        "lint",
        job_spec(json!({ "artifacts": { "restore": [{ "name": "dist" }] } })),
        Phase::Succeeded,
    )
    .await;
    let ended = tokens.issue(&claim(event, "web", "lint"));
    for (token, status, says) in [
        (expired.as_str(), 401, "expired"),
        (foreign.as_str(), 401, "signature"),
        (unknown.as_str(), 403, "not there"),
        (
            ended.as_str(),
            403,
            "has ended (SUCCEEDED): its token opens nothing any more",
        ),
        ("f".repeat(64).as_str(), 401, "not a Mizzen job token"),
    ] {
        for (method, path) in [
            (reqwest::Method::GET, "/v2/job-files/restores/0"),
            (reqwest::Method::GET, "/v2/job-files/saves/0"),
            (reqwest::Method::PUT, "/v2/job-files/saves/0"),
        ] {
            let response = http
                .request(method.clone(), format!("{}{path}", server.url))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), status, "{method} {path}");
            let body = response.text().await.unwrap();
            assert!(body.contains(says), "{method} {path}: {body}");
        }
    }
    // A tree whose entry leads out of it, and one past the project's
    // artifact quota (1 MiB in these tokens), are refused by name.
    let tar_of = |path: &str, size: usize| {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(size as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        // Written raw: the tar crate's own setters refuse "..".
        let name = &mut header.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_cksum();
        builder.append(&header, &vec![b'x'; size][..]).unwrap();
        builder.into_inner().unwrap()
    };
    for (body, says) in [
        (tar_of("tree/../../escape", 3), "escape"),
        (tar_of("tree/big", 2 << 20), "artifactSize limit"),
    ] {
        let response = http
            .put(format!("{}/v2/job-files/saves/0", server.url))
            .bearer_auth(&build)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 400);
        let body = response.text().await.unwrap();
        assert!(body.contains(says), "{body}");
    }

    // A job token opens nothing of the rest of the API.
    let response = http
        .get(format!("{}/v2/events", server.url))
        .bearer_auth(&build)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
}
