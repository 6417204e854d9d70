//! Scripts with their own modules (and packages already in the config
//! directory's `node_modules`): bundled on the host, run in the sandbox.
//! Fetching from a registry is tested with the CLI (runtime/cli/tests).

use std::collections::BTreeMap;
use std::path::Path;

use mizzen_runtime::WorkerLimits;
use mizzen_runtime::dependencies::{ConfigFiles, Dependencies, DependencyError};
use mizzen_runtime::script::ScriptSource;

use crate::util::{Run, event, run};

/// Writes `files` (path → text) under a fresh directory.
fn project(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

fn script_of(dir: &Path, name: &str) -> ScriptSource {
    ScriptSource::new(name, std::fs::read_to_string(dir.join(name)).unwrap())
}

async fn prepare(dir: &Path, name: &str) -> Result<ScriptSource, DependencyError> {
    let dependencies = Dependencies::new(None, None);
    let inline = BTreeMap::new();
    let files = ConfigFiles {
        dir: Some(dir),
        inline: &inline,
    };
    Ok(dependencies
        .prepare(files, script_of(dir, name), None)
        .await?
        .script)
}

async fn run_project(dir: &Path, name: &str) -> Run {
    let script = prepare(dir, name).await.expect("the script bundles");
    run(script, event(), WorkerLimits::default()).await
}

#[tokio::test]
async fn brigades_thirteen_example_requires_a_local_module() {
    let dir = project(&[
        (
            "brigade.js",
            "const { events } = require(\"@brigadecore/brigadier\");\n\
             const circle = require(\"./circle\");\n\
             events.on(\"brigade.sh/cli\", \"exec\", async () => {\n\
               console.log(\"area of a circle with radius 3: \" + circle.area(3));\n\
             });\n\
             events.process();\n",
        ),
        (
            "circle.js",
            "var PI = 3.14;\nexports.area = function (r) { return PI * r * r; };\n",
        ),
    ]);
    let run = run_project(dir.path(), "brigade.js").await;
    run.assert_succeeded();
    assert_eq!(
        run.worker_lines(),
        ["area of a circle with radius 3: 28.259999999999998"]
    );
}

#[tokio::test]
async fn folders_json_parents_and_node_modules_resolve_as_node_resolves_them() {
    let dir = project(&[
        (
            "brigade.js",
            "const util = require('./src/util');\n\
             const data = require('./data.json');\n\
             const pkg = require('tiny-pkg');\n\
             console.log(util.twice(data.n), util.shared.name, pkg.hello());\n",
        ),
        (
            "src/util/index.js",
            "exports.twice = (n) => n * 2;\nexports.shared = require('../../lib/shared.js');\n",
        ),
        ("data.json", "{ \"n\": 21 }\n"),
        ("lib/shared.js", "module.exports = { name: 'shared' };\n"),
        (
            "node_modules/tiny-pkg/package.json",
            "{ \"name\": \"tiny-pkg\", \"main\": \"lib/main.js\" }",
        ),
        (
            "node_modules/tiny-pkg/lib/main.js",
            "exports.hello = () => 'hello from ' + __filename;\n",
        ),
    ]);
    let run = run_project(dir.path(), "brigade.js").await;
    run.assert_succeeded();
    assert_eq!(
        run.worker_lines(),
        ["42 shared hello from node_modules/tiny-pkg/lib/main.js"]
    );
}

#[tokio::test]
async fn es_modules_and_typescript_import_each_other_and_commonjs() {
    let dir = project(&[
        (
            "brigade.ts",
            "import { events } from \"@brigadecore/brigadier\";\n\
             import { area, PI as pi } from \"./geometry\";\n\
             import describe from \"./describe.js\";\n\
             import * as all from \"./geometry\";\n\
             import legacy from \"./legacy\";\n\
             import type { Shape } from \"./geometry\";\n\
             const s: Shape = { r: 2 };\n\
             events.on(\"brigade.sh/cli\", \"exec\", async () => {\n\
               console.log(describe(area(s.r)), pi, Object.keys(all).sort().join(\",\"), legacy.kind);\n\
             });\n\
             events.process();\n",
        ),
        (
            "geometry.ts",
            "export const PI: number = 3;\n\
             export interface Shape { r: number }\n\
             export function area(r: number): number { return PI * r * r; }\n\
             export * from \"./more\";\n",
        ),
        (
            "more.js",
            "export const extra = 1;\nexport { extra as renamed };\n",
        ),
        (
            "describe.js",
            "export default function describe(n) { return `area ${n}`; }\n",
        ),
        ("legacy.js", "module.exports = { kind: 'commonjs' };\n"),
    ]);
    let run = run_project(dir.path(), "brigade.ts").await;
    run.assert_succeeded();
    assert_eq!(
        run.worker_lines(),
        ["area 12 3 PI,area,extra,renamed commonjs"]
    );
}

#[tokio::test]
async fn an_error_in_a_module_names_the_module_and_its_line() {
    let dir = project(&[
        (
            "brigade.js",
            "const m = require('./lib/broken');\nm.go();\n",
        ),
        (
            "lib/broken.js",
            "// a comment\n\nexports.go = function () {\n  throw new Error('broken here');\n};\n",
        ),
    ]);
    let run = run_project(dir.path(), "brigade.js").await;
    run.assert_failed_with("lib/broken.js:4");
    run.assert_failed_with("broken here");
}

#[tokio::test]
async fn a_script_that_requires_nothing_runs_as_it_is() {
    let dir = project(&[(
        "brigade.js",
        "const { events } = require('@brigadecore/brigadier');\nconsole.log('plain');\n",
    )]);
    let script = prepare(dir.path(), "brigade.js").await.unwrap();
    assert!(!script.is_bundle());
    assert_eq!(script, script_of(dir.path(), "brigade.js"));
}

#[tokio::test]
async fn bad_requires_are_refused_naming_file_line_and_path() {
    let cases: [(&[(&str, &str)], &str); 6] = [
        (
            &[
                ("brigade.js", "require('./a');\n"),
                ("a.js", "require('./brigade.js');\n"),
            ],
            "a dependency cycle: brigade.js → a.js → brigade.js",
        ),
        (
            &[("brigade.js", "\n\nrequire('./circl');\n")],
            "brigade.js:3: cannot find module './circl'",
        ),
        (
            &[("brigade.js", "const fs = require('fs');\n")],
            "brigade.js:1: 'fs' is a Node.js built-in module",
        ),
        (
            &[
                ("brigade.js", "require('./a');\n"),
                ("a.js", "\nimport { readFileSync } from 'node:fs';\n"),
            ],
            "a.js:2: 'node:fs' is a Node.js built-in module",
        ),
        (
            &[
                ("brigade.js", "require('./a');\n"),
                ("a.js", "require('./b');\n"),
                ("b.js", "require('./a');\n"),
            ],
            "a dependency cycle: brigade.js → a.js → b.js → a.js",
        ),
        (
            &[
                ("brigade.js", "require('./ok');\n"),
                ("ok.js", "module.exports = require('./broken.json');\n"),
                ("broken.json", "{ \"a\": }\n"),
            ],
            "broken.json:1: not valid JSON",
        ),
    ];
    for (files, expected) in cases {
        let dir = project(files);
        let err = prepare(dir.path(), "brigade.js")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "expected {expected:?} in {err:?}");
    }
}

#[tokio::test]
async fn a_require_outside_the_config_directory_is_refused() {
    let outer = project(&[
        ("secret.js", "module.exports = 'secret';\n"),
        ("config/brigade.js", "console.log(require('../secret'));\n"),
        ("config/link.js", ""),
    ]);
    let config = outer.path().join("config");
    let err = prepare(&config, "brigade.js")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("brigade.js:1: '../secret' resolves to") && err.contains("outside"),
        "{err}"
    );
    // A symbolic link inside the directory does not lead out either.
    std::fs::remove_file(config.join("link.js")).unwrap();
    std::os::unix::fs::symlink(outer.path().join("secret.js"), config.join("link.js")).unwrap();
    std::fs::write(
        config.join("brigade.js"),
        "console.log(require('./link'));\n",
    )
    .unwrap();
    let err = prepare(&config, "brigade.js")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("'./link' resolves to"), "{err}");
}

#[tokio::test]
async fn a_prepared_script_is_reused_until_a_module_changes() {
    let dir = project(&[
        ("brigade.js", "console.log(require('./value'));\n"),
        ("value.js", "module.exports = 'one';\n"),
    ]);
    let dependencies = Dependencies::new(None, None);
    let inline = BTreeMap::new();
    let files = ConfigFiles {
        dir: Some(dir.path()),
        inline: &inline,
    };
    let main = script_of(dir.path(), "brigade.js");
    let first = dependencies
        .prepare(files, main.clone(), None)
        .await
        .unwrap();
    let again = dependencies
        .prepare(files, main.clone(), None)
        .await
        .unwrap();
    assert_eq!(first.script.key(), again.script.key());
    std::fs::write(dir.path().join("value.js"), "module.exports = 'two';\n").unwrap();
    let changed = dependencies.prepare(files, main, None).await.unwrap();
    assert_ne!(first.script.key(), changed.script.key());
    let run = run(changed.script, event(), WorkerLimits::default()).await;
    run.assert_succeeded();
    assert_eq!(run.worker_lines(), ["two"]);
}

#[tokio::test]
async fn inline_config_files_are_modules_too() {
    let inline: BTreeMap<String, String> = [
        (
            "brigade.js".to_string(),
            "console.log(require('./helper').greet('inline'));\n".to_string(),
        ),
        (
            "helper.js".to_string(),
            "exports.greet = (who) => `hello ${who}`;\n".to_string(),
        ),
    ]
    .into();
    let script = ScriptSource::new("brigade.js", inline["brigade.js"].clone());
    let prepared = Dependencies::new(None, None)
        .prepare(
            ConfigFiles {
                dir: None,
                inline: &inline,
            },
            script,
            None,
        )
        .await
        .unwrap();
    let run = run(prepared.script, event(), WorkerLimits::default()).await;
    run.assert_succeeded();
    assert_eq!(run.worker_lines(), ["hello inline"]);
}

#[tokio::test]
async fn nodes_pure_built_ins_are_provided_to_scripts_and_packages() {
    let dir = project(&[
        (
            "brigade.js",
            "import path from 'node:path';\n\
             import { EventEmitter } from 'events';\n\
             import util from 'util';\n\
             import assert from 'assert';\n\
             import { ready } from './emitter.js';\n\
             const e = new EventEmitter();\n\
             e.once('go', (x) => console.log(util.format('%s %d', path.join('/a/b', '../c', 'd.js'), x)));\n\
             e.emit('go', 7);\n\
             assert.deepStrictEqual({ a: [1, 2] }, { a: [1, 2] });\n\
             assert.throws(() => assert.strictEqual(1, 2), assert.AssertionError);\n\
             console.log(path.extname('x/y.tar.gz'), path.relative('/a/b', '/a/c/d'), ready);\n",
        ),
        (
            "emitter.js",
            "const EventEmitter = require('events');\n\
             const util = require('util');\n\
             const { logger } = require('@brigadecore/brigadier');\n\
             function Old() { EventEmitter.call(this); }\n\
             util.inherits(Old, EventEmitter);\n\
             const o = new Old();\n\
             let heard = false;\n\
             o.on('x', () => { heard = true; });\n\
             o.emit('x');\n\
             exports.ready = heard && typeof logger.info === 'function';\n",
        ),
    ]);
    let run = run_project(dir.path(), "brigade.js").await;
    run.assert_succeeded();
    assert_eq!(run.worker_lines(), ["/a/c/d.js 7", ".gz ../c/d true"]);
}

#[tokio::test]
async fn a_dependency_importing_brigadier_gets_the_built_in_library() {
    let dir = project(&[
        (
            "brigade.ts",
            "import { events } from '@brigadecore/brigadier';\n\
             import { jobName } from './lib/names';\n\
             events.on('brigade.sh/cli', 'exec', async () => { console.log(jobName()); });\n\
             events.process();\n",
        ),
        (
            "lib/names.ts",
            "import { Job } from '@brigadecore/brigadier';\n\
             export function jobName(): string { return typeof Job === 'function' ? 'job-ok' : 'no'; }\n",
        ),
    ]);
    let run = run_project(dir.path(), "brigade.ts").await;
    run.assert_succeeded();
    assert_eq!(run.worker_lines(), ["job-ok"]);
}

/// A project directory using package `name` from a registry (no lock).
fn project_using(name: &str) -> tempfile::TempDir {
    project(&[
        ("brigade.js", &format!("console.log(require('{name}'));\n")),
        (
            "package.json",
            &format!(r#"{{"dependencies": {{"{name}": "1.0.0"}}}}"#),
        ),
    ])
}

async fn prepare_with(
    dependencies: &Dependencies,
    dir: &Path,
) -> Result<ScriptSource, DependencyError> {
    let inline = BTreeMap::new();
    let files = ConfigFiles {
        dir: Some(dir),
        inline: &inline,
    };
    Ok(dependencies
        .prepare(files, script_of(dir, "brigade.js"), None)
        .await?
        .script)
}

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .count()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_stays_within_its_budget_and_an_evicted_version_is_prepared_again() {
    use mizzen_runtime::dependencies::CacheBudget;
    use mizzen_tests::npm_registry::{NpmRegistry, package};
    let names = ["pkg-a", "pkg-b", "pkg-c"];
    let registry = NpmRegistry::start(
        names
            .iter()
            .map(|n| package(n, "1.0.0", &format!("module.exports = '{n}';")))
            .collect(),
        None,
    )
    .await;
    let cache = tempfile::tempdir().unwrap();
    let dependencies = Dependencies::new(
        Some(registry.url.parse().unwrap()),
        Some(cache.path().to_path_buf()),
    )
    .with_budget(CacheBudget {
        bundle_bytes: 1,
        package_bytes: 1,
        grace: std::time::Duration::ZERO,
    });
    let dirs: Vec<_> = names.iter().map(|n| project_using(n)).collect();
    for dir in &dirs {
        prepare_with(&dependencies, dir.path()).await.unwrap();
        // Only the newest of each is kept on disk.
        assert_eq!(count(&cache.path().join("bundles")), 1);
        assert_eq!(count(&cache.path().join("npm")), 1);
    }
    let trees = std::fs::read_dir(cache.path().join("npm")).unwrap().count();
    assert_eq!(trees, 2, "one record and its tree");
    // A fresh process (no memory) prepares an evicted version again.
    let fresh = Dependencies::new(
        Some(registry.url.parse().unwrap()),
        Some(cache.path().to_path_buf()),
    );
    let before = registry.requests();
    let script = prepare_with(&fresh, dirs[0].path()).await.unwrap();
    assert!(registry.requests() > before, "pkg-a was fetched again");
    let run = run(script, event(), WorkerLimits::default()).await;
    assert_eq!(run.worker_lines(), ["pkg-a"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_preparing_one_version_at_once_fetch_it_once() {
    use mizzen_tests::npm_registry::{NpmRegistry, package};
    let registry = NpmRegistry::start(
        vec![package("shared-pkg", "1.0.0", "module.exports = 'shared';")],
        None,
    )
    .await;
    let cache = tempfile::tempdir().unwrap();
    let dir = project_using("shared-pkg");
    // One process's events, and a second process sharing the cache.
    let first = std::sync::Arc::new(Dependencies::new(
        Some(registry.url.parse().unwrap()),
        Some(cache.path().to_path_buf()),
    ));
    let second = std::sync::Arc::new(Dependencies::new(
        Some(registry.url.parse().unwrap()),
        Some(cache.path().to_path_buf()),
    ));
    let mut tasks = vec![];
    for i in 0..8 {
        let dependencies = if i % 4 == 3 {
            second.clone()
        } else {
            first.clone()
        };
        let dir = dir.path().to_path_buf();
        tasks.push(tokio::spawn(async move {
            prepare_with(&dependencies, &dir).await.map(|s| s.key())
        }));
    }
    let mut keys = vec![];
    for task in tasks {
        keys.push(
            task.await
                .unwrap()
                .expect("every event's script is prepared"),
        );
    }
    keys.dedup();
    assert_eq!(keys.len(), 1, "one bundle");
    // A packument and a tarball per process at most.
    assert!(registry.requests() <= 4, "{} requests", registry.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_by_one_process_never_takes_a_tree_another_is_using() {
    use mizzen_runtime::dependencies::CacheBudget;
    use mizzen_tests::npm_registry::{NpmRegistry, package};
    let names: Vec<String> = (0..6).map(|i| format!("churn-{i}")).collect();
    let registry = NpmRegistry::start(
        names
            .iter()
            .map(|n| package(n, "1.0.0", &format!("module.exports = '{n}';")))
            .collect(),
        None,
    )
    .await;
    let cache = tempfile::tempdir().unwrap();
    // Two processes with a budget of nothing, sweeping after each install,
    // but protecting what was used in the last minutes.
    let budget = CacheBudget {
        bundle_bytes: 1,
        package_bytes: 1,
        ..CacheBudget::default()
    };
    let make = || {
        std::sync::Arc::new(
            Dependencies::new(
                Some(registry.url.parse().unwrap()),
                Some(cache.path().to_path_buf()),
            )
            .with_budget(budget),
        )
    };
    let (a, b) = (make(), make());
    let dirs: Vec<_> = names.iter().map(|n| project_using(n)).collect();
    let mut tasks = vec![];
    for (i, dir) in dirs.iter().enumerate() {
        let dependencies = if i % 2 == 0 { a.clone() } else { b.clone() };
        let dir = dir.path().to_path_buf();
        tasks.push(tokio::spawn(async move {
            prepare_with(&dependencies, &dir).await
        }));
    }
    for task in tasks {
        task.await
            .unwrap()
            .expect("no preparation lost its tree to a sweep");
    }
}

/// One tenant's package on a registry that never answers does not hold up
/// another tenant's project in the same process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_fetch_for_one_project_does_not_hold_up_another() {
    use mizzen_tests::npm_registry::{NpmRegistry, package};
    let registry = NpmRegistry::start_stalling(
        vec![
            package("stuck-pkg", "1.0.0", "module.exports = 'never';"),
            package("quick-pkg", "1.0.0", "module.exports = 'quick';"),
        ],
        None,
        Some("stuck-pkg"),
    )
    .await;
    let dependencies =
        std::sync::Arc::new(Dependencies::new(Some(registry.url.parse().unwrap()), None));
    let stuck = project_using("stuck-pkg");
    let quick = project_using("quick-pkg");
    let stuck_task = {
        let dependencies = dependencies.clone();
        let dir = stuck.path().to_path_buf();
        tokio::spawn(async move { prepare_with(&dependencies, &dir).await })
    };
    // Let the stalled preparation start first.
    while registry.requests() == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let script = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        prepare_with(&dependencies, quick.path()),
    )
    .await
    .expect("the other project is not held up")
    .unwrap();
    assert!(
        !stuck_task.is_finished(),
        "the stalled fetch is still waiting"
    );
    stuck_task.abort();
    let run = run(script, event(), WorkerLimits::default()).await;
    assert_eq!(run.worker_lines(), ["quick"]);
}

/// A bundle's bytecode is kept in the cache directory: another process (a
/// server's other sandbox process, the next run) loads it instead of
/// compiling, and a file cut short or altered is compiled again, never
/// loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytecode_is_shared_through_the_cache_directory_and_checked() {
    use mizzen_runtime::{Sandbox, SandboxConfig};
    let dir = project(&[
        ("brigade.js", "console.log(require('./shared-lib').word);\n"),
        ("shared-lib.js", "exports.word = 'from the cache';\n"),
    ]);
    let script = prepare(dir.path(), "brigade.js").await.unwrap();
    // The tests' plugin artifact is there already; the bytecode is not.
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("mizzen-cache");
    let process = || async {
        Sandbox::new(SandboxConfig {
            cache_dir: Some(cache.clone()),
            ..SandboxConfig::default()
        })
        .await
        .unwrap()
    };
    // The script's bytecode under each plugin these tests ran with (the
    // cache directory outlives a rebuilt plugin): only this plugin's is
    // to be found once compiled.
    let compiled_copies = || {
        std::fs::read_dir(cache.join("bytecode"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .contains(&hex_of(&script.key()))
            })
            .collect::<Vec<_>>()
    };
    for stale in compiled_copies() {
        std::fs::remove_file(stale).unwrap();
    }
    let first = process().await;
    first.compile(&script).await.unwrap();
    let file = compiled_copies()
        .pop()
        .expect("the bytecode is in the cache directory");
    let whole = std::fs::read(&file).unwrap();
    for damaged in [whole[..whole.len() / 2].to_vec(), {
        let mut altered = whole.clone();
        let last = altered.len() - 1;
        altered[last] ^= 0xff;
        altered
    }] {
        std::fs::write(&file, &damaged).unwrap();
        let other = process().await;
        let compiled = other.compile(&script).await.unwrap();
        assert!(compiled.bytecode_len() > 0);
        assert_eq!(
            std::fs::read(&file).unwrap(),
            whole,
            "compiled and kept again"
        );
    }
    // A whole file is loaded, not compiled: another script's bytecode put
    // under this one's name is what a new process runs. (The cache
    // directory is the machine user's own, as for compiled modules.)
    let other = ScriptSource::new("brigade.js", "console.log('another script');\n");
    first.compile(&other).await.unwrap();
    let other_file = file
        .to_string_lossy()
        .replace(&hex_of(&script.key()), &hex_of(&other.key()));
    std::fs::copy(&other_file, &file).unwrap();
    let fresh = process().await;
    let log = mizzen_runtime::log::MemoryLog::new();
    let outcome = fresh
        .run(
            &script,
            mizzen_runtime::WorkerRequest {
                event: event(),
                limits: WorkerLimits::default(),
                log: std::sync::Arc::new(log.clone()),
                jobs: mizzen_runtime::JobCapability::none(),
            },
        )
        .await;
    assert!(outcome.succeeded(), "{outcome:?}");
    assert!(log.text().contains("another script"), "{}", log.text());
    std::fs::write(&file, &whole).unwrap();
    let run = run(script, event(), WorkerLimits::default()).await;
    run.assert_succeeded();
    assert_eq!(run.worker_lines(), ["from the cache"]);
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
