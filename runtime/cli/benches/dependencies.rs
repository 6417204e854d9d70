//! Script dependencies, per event, side by side in one run:
//!
//! - a script doing the same work without the packages (what evaluating
//!   the packages' own code costs every event shows against it);
//! - the packages' code in one file: the bundle run as a plain script, with
//!   nothing to prepare (the reference of the goal below);
//! - the script with five npm packages, its first event: the host fetches
//!   them from a registry served here (real tarballs of unique-names-generator
//!   and is-thirteen with noop3, and three small generated packages), checks
//!   and unpacks them, bundles, compiles;
//! - the same script, a warm event: what every later event of that project
//!   version pays (goal: at most 10 % more than the same code in one file,
//!   that is, dependencies cost nothing per event beyond their own code);
//! - `npm ci` into an empty cache then `node brigade.js`, what Brigade's
//!   worker did on every event (skipped when npm or node is missing).
//!
//! Then a script's own modules as they grow 10× and 100× (100, 1,000 and
//! 10,000 modules: an index requiring all the others, each requiring one
//! they share):
//! what bundling them costs once, and a warm event after it.
//!
//! An event here is [`Dependencies::prepare`] and [`Sandbox::run`]: what
//! `mizzen run` and the server's scheduler do for every event, without
//! process start-up or the store.
//!
//! `cargo bench -p mizzen-cli --bench dependencies`; `MIZZEN_BENCH_EVENTS`
//! (default 2,000) sets the warm events, `MIZZEN_BENCH_COLD` (default 5) the
//! first events and `npm ci` runs.

#![allow(
    clippy::print_stdout,
    reason = "a benchmark reports its figures on stdout"
)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mizzen_host_api::types::Event;
use mizzen_runtime::dependencies::{ConfigFiles, Dependencies};
use mizzen_runtime::log::{LogRecord, LogSink};
use mizzen_runtime::script::ScriptSource;
use mizzen_runtime::{JobCapability, Sandbox, SandboxConfig, WorkerLimits, WorkerRequest};
use mizzen_tests::npm_registry::{NpmRegistry, Package, brigade_example_packages, package};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct NullLog;

impl LogSink for NullLog {
    fn record(&self, _: LogRecord) {}
}

/// The script with its five packages; it runs under Node as well.
const WITH_PACKAGES: &str = r#"const { uniqueNamesGenerator, adjectives, animals } = require("unique-names-generator");
const is = require("is-thirteen");
const pad = require("pad-left");
const slug = require("slugger");
const sum = require("summer");
const name = uniqueNamesGenerator({ dictionaries: [adjectives, animals], length: 2, separator: "-" });
console.log(slug(pad(name, 20)), is(13).thirteen(), sum([1, 2, 3]));
"#;

/// The same work with nothing required.
const WITHOUT_PACKAGES: &str = r#"const name = ["brave", "otter"].join("-");
const pad = (s, n) => " ".repeat(Math.max(0, n - s.length)) + s;
const slug = (s) => s.trim().toLowerCase().replace(/[^a-z0-9]+/g, "-");
console.log(slug(pad(name, 20)), 13 === 13, [1, 2, 3].reduce((a, b) => a + b, 0));
"#;

/// Three small packages of the kind scripts use, beside the real ones.
fn packages() -> Vec<Package> {
    let mut all: Vec<Package> = brigade_example_packages()
        .into_iter()
        .filter(|p| p.name != "unique-names-generator" || p.version == "4.6.0")
        .collect();
    all.push(package(
        "pad-left",
        "1.0.0",
        "module.exports = function pad(s, n, c) { c = c || ' '; s = String(s); while (s.length < n) s = c + s; return s; };",
    ));
    all.push(package(
        "slugger",
        "1.0.0",
        "module.exports = function slug(s) { return String(s).trim().toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, ''); };",
    ));
    all.push(package(
        "summer",
        "1.0.0",
        "exports = module.exports = function sum(xs) { return xs.reduce(function (a, b) { return a + b; }, 0); };",
    ));
    all
}

/// package.json and a package-lock.json (v3) naming the registry's tarballs.
fn package_files(registry: &str, packages: &[Package]) -> (String, String) {
    let direct = [
        "unique-names-generator",
        "is-thirteen",
        "pad-left",
        "slugger",
        "summer",
    ];
    let mut dependencies = serde_json::Map::new();
    for name in direct {
        let p = packages.iter().find(|p| p.name == name).unwrap();
        dependencies.insert(name.into(), p.version.clone().into());
    }
    let mut entries = serde_json::Map::new();
    entries.insert(
        String::new(),
        serde_json::json!({ "dependencies": dependencies }),
    );
    for p in packages {
        let file = format!("{}-{}.tgz", p.name, p.version);
        entries.insert(
            format!("node_modules/{}", p.name),
            serde_json::json!({
                "version": p.version,
                "resolved": format!("{registry}{}/-/{file}", p.name),
                "integrity": p.integrity(),
                "dependencies": p.dependencies,
            }),
        );
    }
    let manifest = serde_json::json!({ "name": "bench", "dependencies": dependencies });
    let lock = serde_json::json!({
        "name": "bench",
        "lockfileVersion": 3,
        "requires": true,
        "packages": entries,
    });
    (manifest.to_string(), lock.to_string())
}

fn event() -> Event {
    Event::new(
        "2f9ff7b3-8a5c-4c1f-9f1e-3a4b5c6d7e8f",
        "bench",
        "brigade.sh/cli",
        "exec",
    )
}

/// One event of a script that needs no preparing: only run.
async fn run_once(sandbox: &Sandbox, script: &ScriptSource) -> Duration {
    let begin = Instant::now();
    let outcome = sandbox
        .run(
            script,
            WorkerRequest {
                event: event(),
                limits: WorkerLimits::default(),
                log: Arc::new(NullLog),
                jobs: JobCapability::none(),
            },
        )
        .await;
    let took = begin.elapsed();
    assert!(outcome.succeeded(), "{outcome:?}");
    took
}

/// One event: the script prepared, then run.
async fn event_once(
    sandbox: &Sandbox,
    dependencies: &Dependencies,
    dir: &Path,
    script: &ScriptSource,
) -> Duration {
    let inline = BTreeMap::new();
    let begin = Instant::now();
    let prepared = dependencies
        .prepare(
            ConfigFiles {
                dir: Some(dir),
                inline: &inline,
            },
            script.clone(),
            None,
        )
        .await
        .expect("prepared");
    let outcome = sandbox
        .run(
            &prepared.script,
            WorkerRequest {
                event: event(),
                limits: WorkerLimits::default(),
                log: Arc::new(NullLog),
                jobs: JobCapability::none(),
            },
        )
        .await;
    let took = begin.elapsed();
    assert!(outcome.succeeded(), "{outcome:?}");
    took
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn show(label: &str, samples: &[Duration]) -> Duration {
    let m = median(samples.to_vec());
    let shown = if m >= Duration::from_millis(10) {
        format!("{:>10.1} ms", m.as_secs_f64() * 1e3)
    } else {
        format!("{:>10.1} µs", m.as_secs_f64() * 1e6)
    };
    println!("  {label:<52} {shown}   (median of {})", samples.len());
    m
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(bench());
}

async fn bench() {
    let warm_events = env_usize("MIZZEN_BENCH_EVENTS", 2_000).max(1);
    let cold_events = env_usize("MIZZEN_BENCH_COLD", 5).max(1);
    let packages = packages();
    let registry = NpmRegistry::start(packages.clone(), None).await;
    let (manifest, lock) = package_files(&registry.url, &packages);

    let with_dir = tempfile::tempdir().unwrap();
    std::fs::write(with_dir.path().join("brigade.js"), WITH_PACKAGES).unwrap();
    std::fs::write(with_dir.path().join("package.json"), &manifest).unwrap();
    std::fs::write(with_dir.path().join("package-lock.json"), &lock).unwrap();
    let without_dir = tempfile::tempdir().unwrap();
    std::fs::write(without_dir.path().join("brigade.js"), WITHOUT_PACKAGES).unwrap();
    let with = ScriptSource::new("brigade.js", WITH_PACKAGES);
    let without = ScriptSource::new("brigade.js", WITHOUT_PACKAGES);

    let cache = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::new(SandboxConfig {
        cache_dir: Some(cache.path().join("sandbox")),
        ..SandboxConfig::default()
    })
    .await
    .expect("a sandbox");
    let registry_url = url::Url::parse(&registry.url).unwrap();

    println!("script dependencies, one event = prepare + run, on one thread");
    // First events: a fresh Dependencies and cache each time, and a script
    // the sandbox has not compiled (a comment makes each one new).
    let mut first = vec![];
    for i in 0..cold_events {
        let dependencies = Dependencies::new(
            Some(registry_url.clone()),
            Some(cache.path().join(format!("cold-{i}"))),
        );
        let text = format!("{WITH_PACKAGES}// event {i}\n");
        std::fs::write(with_dir.path().join("brigade.js"), &text).unwrap();
        let script = ScriptSource::new("brigade.js", text);
        first.push(event_once(&sandbox, &dependencies, with_dir.path(), &script).await);
    }
    std::fs::write(with_dir.path().join("brigade.js"), WITH_PACKAGES).unwrap();
    let dependencies = Dependencies::new(Some(registry_url), Some(cache.path().join("warm")));
    let bundled = {
        let inline = BTreeMap::new();
        let prepared = dependencies
            .prepare(
                ConfigFiles {
                    dir: Some(with_dir.path()),
                    inline: &inline,
                },
                with.clone(),
                None,
            )
            .await
            .unwrap();
        prepared.script
    };
    // What a sandbox process pays once per project version: the bundle
    // compiled to bytecode, or its bytecode read from the cache directory
    // another process left it in.
    let begin = Instant::now();
    sandbox.compile(&bundled).await.expect("compiles");
    let compile = begin.elapsed();
    let other_process = Sandbox::new(SandboxConfig {
        cache_dir: Some(cache.path().join("sandbox")),
        ..SandboxConfig::default()
    })
    .await
    .expect("a sandbox");
    let begin = Instant::now();
    other_process.compile(&bundled).await.expect("loads");
    let load = begin.elapsed();
    let fetched = registry.requests();
    let mut warm_with = vec![];
    let mut warm_without = vec![];
    let mut one_file = vec![];
    for _ in 0..warm_events / 10 {
        event_once(&sandbox, &dependencies, with_dir.path(), &with).await;
        event_once(&sandbox, &dependencies, without_dir.path(), &without).await;
        run_once(&sandbox, &bundled).await;
    }
    // Interleaved, so that all three see the same machine.
    for _ in 0..warm_events {
        warm_with.push(event_once(&sandbox, &dependencies, with_dir.path(), &with).await);
        warm_without.push(event_once(&sandbox, &dependencies, without_dir.path(), &without).await);
        one_file.push(run_once(&sandbox, &bundled).await);
    }
    assert_eq!(registry.requests(), fetched, "warm events fetched");

    println!(
        "  (the bundle: {} bytes of JavaScript, 6 packages)",
        bundled.code().len()
    );
    let none = show("the same work without the packages", &warm_without);
    let reference = show(
        "the packages' code in one file (nothing to prepare)",
        &one_file,
    );
    show("five packages, first event (fetch + bundle)", &first);
    show("  of which compiling the bundle to bytecode", &[compile]);
    show(
        "another sandbox process: the bytecode from the cache",
        &[load],
    );
    let warm = show("five packages, warm event", &warm_with);
    let ratio = warm.as_secs_f64() / reference.as_secs_f64();
    let met = if ratio <= 1.10 { "met" } else { "NOT MET" };
    println!("  warm event / the same code in one file: {ratio:.2}× (goal ≤ 1.10×: {met})");
    println!(
        "figure | script dependencies: warm event / the same code in one file (median) | {ratio:.2}× | ≤ 1.10× | {met}"
    );
    println!(
        "  warm event / the same work without the packages: {:.2}× (the packages' own code, run every event)",
        warm.as_secs_f64() / none.as_secs_f64()
    );

    modules_as_they_grow(&sandbox).await;

    // What Brigade's worker did per event.
    let node = Command::new("node").arg("--version").output();
    let npm = Command::new("npm").arg("--version").output();
    if !(node.is_ok_and(|o| o.status.success()) && npm.is_ok_and(|o| o.status.success())) {
        println!("  npm ci + node brigade.js: SKIPPED (npm or node is missing)");
        return;
    }
    let mut brigade = vec![];
    for _ in 0..cold_events {
        let dir = tempfile::tempdir().unwrap();
        for name in ["brigade.js", "package.json", "package-lock.json"] {
            std::fs::copy(with_dir.path().join(name), dir.path().join(name)).unwrap();
        }
        let begin = Instant::now();
        let ci = Command::new("npm")
            .args(["ci", "--ignore-scripts", "--no-audit", "--no-fund"])
            .arg("--registry")
            .arg(&registry.url)
            .arg("--cache")
            .arg(dir.path().join(".npm-cache"))
            .current_dir(dir.path())
            .output()
            .expect("npm runs");
        assert!(
            ci.status.success(),
            "{}",
            String::from_utf8_lossy(&ci.stderr)
        );
        let ran = Command::new("node")
            .arg("brigade.js")
            .current_dir(dir.path())
            .output()
            .expect("node runs");
        assert!(
            ran.status.success(),
            "{}",
            String::from_utf8_lossy(&ran.stderr)
        );
        brigade.push(begin.elapsed());
    }
    let brigade = show("npm ci (empty cache) + node brigade.js", &brigade);
    println!(
        "  npm ci + node / warm event with packages: {:.0}×",
        brigade.as_secs_f64() / warm.as_secs_f64()
    );
}

/// Bundling a script's own modules, 100, 1,000 and 10,000 of them.
async fn modules_as_they_grow(sandbox: &Sandbox) {
    println!(
        "a script's own modules as they grow (first event: bundle + compile + run; warm event)"
    );
    let mut per_module = vec![];
    for count in [100usize, 1_000, 9_999] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("lib")).unwrap();
        std::fs::write(
            dir.path().join("lib/shared.js"),
            "module.exports = { n: 1 };\n",
        )
        .unwrap();
        let mut index = String::from("let n = 0;\n");
        for i in 0..count - 2 {
            std::fs::write(
                dir.path().join(format!("lib/m{i}.js")),
                format!("const shared = require('./shared');\nexports.n = shared.n + {i};\n"),
            )
            .unwrap();
            index.push_str(&format!("n += require('./m{i}').n;\n"));
        }
        index.push_str("module.exports = n;\n");
        std::fs::write(dir.path().join("lib/index.js"), index).unwrap();
        let text = "console.log(require('./lib'));\n";
        std::fs::write(dir.path().join("brigade.js"), text).unwrap();
        let script = ScriptSource::new("brigade.js", text);
        let dependencies = Dependencies::new(None, None);
        let first = event_once(sandbox, &dependencies, dir.path(), &script).await;
        let warm: Vec<Duration> = {
            let mut v = vec![];
            for _ in 0..20 {
                v.push(event_once(sandbox, &dependencies, dir.path(), &script).await);
            }
            v
        };
        let warm = median(warm);
        println!(
            "  {count:>6} modules: first event {:>8.1} ms ({:>5.1} µs a module), warm event {:>8.1} ms",
            first.as_secs_f64() * 1e3,
            first.as_secs_f64() * 1e6 / count as f64,
            warm.as_secs_f64() * 1e3
        );
        per_module.push(first.as_secs_f64() / count as f64);
    }
    let growth = per_module[2] / per_module[0];
    println!("  cost a module at 10,000 / at 100: {growth:.2}× (linear: about 1×)");
}
