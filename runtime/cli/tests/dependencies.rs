//! Scripts with npm packages and their own modules under `mizzen run`:
//! Brigade's examples 09, 10, 12 and 13 unmodified, their packages fetched
//! by the host from a registry the test serves (the real tarballs, with
//! their real integrity), once per project version.

mod common;
use common::{Ran, repo};

use std::path::Path;
use std::process::Command;

use mizzen_tests::npm_registry::{NpmRegistry, brigade_example_packages};

fn run_with(registry: &str, cache: &Path, args: &[&str]) -> Ran {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    Ran::from(
        Command::new(env!("CARGO_BIN_EXE_mizzen"))
            .args(args)
            .current_dir(repo())
            .env("MIZZEN_NPM_REGISTRY", registry)
            .env("MIZZEN_CACHE_DIR", cache)
            .env("MIZZEN_DATA_DIR", tmp.join("mizzen-cli-data"))
            .output()
            .expect("mizzen runs"),
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// `Hello, <adjective>-<animal>!`, as unique-names-generator makes them.
fn greets_with_a_generated_name(ran: &Ran) -> bool {
    ran.stdout.lines().any(|line| {
        line.strip_prefix("Hello, ")
            .and_then(|rest| rest.strip_suffix('!'))
            .is_some_and(|name| {
                let parts: Vec<&str> = name.split('-').collect();
                parts.len() >= 2
                    && parts.iter().all(|p| {
                        !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    })
            })
    })
}

#[test]
fn npm_example_installs_from_its_package_lock() {
    let rt = runtime();
    let registry = rt.block_on(NpmRegistry::start(brigade_example_packages(), None));
    let cache = tempfile::tempdir().unwrap();
    let ran = run_with(&registry.url, cache.path(), &["run", "examples/09-npm"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(greets_with_a_generated_name(&ran), "{ran:?}");
    // The lock's brigadier entry (and the typescript and @types/node under
    // it) is never fetched: the sandbox has its own.
    assert!(
        ran.stdout
            .contains("npm: 1 package(s) from package-lock.json: unique-names-generator@4.4.0"),
        "{ran:?}"
    );
    let fetched = registry.requests();
    assert_eq!(fetched, 1, "one tarball, nothing else: {ran:?}");

    // The next event of the same version fetches and bundles nothing.
    let again = run_with(&registry.url, cache.path(), &["run", "examples/09-npm"]);
    assert_eq!(again.code, 0, "{again:?}");
    assert!(greets_with_a_generated_name(&again), "{again:?}");
    assert_eq!(registry.requests(), fetched, "{again:?}");
}

#[test]
fn yarn_example_installs_from_its_yarn_lock() {
    let rt = runtime();
    let registry = rt.block_on(NpmRegistry::start(brigade_example_packages(), None));
    let cache = tempfile::tempdir().unwrap();
    let ran = run_with(&registry.url, cache.path(), &["run", "examples/10-yarn"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(greets_with_a_generated_name(&ran), "{ran:?}");
    assert!(
        ran.stdout
            .contains("from yarn.lock: unique-names-generator@4.6.0"),
        "{ran:?}"
    );
}

#[test]
fn dependencies_example_resolves_package_json_ranges_and_requires_a_local_module() {
    let rt = runtime();
    let registry = rt.block_on(NpmRegistry::start(brigade_example_packages(), None));
    let cache = tempfile::tempdir().unwrap();
    let ran = run_with(
        &registry.url,
        cache.path(),
        &["run", "examples/13-dependencies"],
    );
    assert_eq!(ran.code, 0, "{ran:?}");
    // As Brigade's documentation shows it.
    assert!(ran.stdout.contains("is 13 thirteen? true\n"), "{ran:?}");
    assert!(
        ran.stdout
            .contains("area of a circle with radius 3: 28.259999999999998\n"),
        "{ran:?}"
    );
    // With no lock, the resolution is written to the log so it can be pinned.
    assert!(ran.stdout.contains("is-thirteen@2.0.0"), "{ran:?}");
    assert!(ran.stdout.contains("noop3@13.8.1"), "{ran:?}");
}

#[test]
fn kitchen_sink_example_names_its_jobs_with_a_package_and_runs_them() {
    let rt = runtime();
    let registry = rt.block_on(NpmRegistry::start(brigade_example_packages(), None));
    let cache = tempfile::tempdir().unwrap();
    let ran = run_with(
        &registry.url,
        cache.path(),
        &["run", "examples/12-kitchen-sink"],
    );
    assert_eq!(ran.code, 0, "{ran:?}");
    let greetings = ran
        .stdout
        .lines()
        .filter(|l| l.starts_with("[job: ") && l.contains("] Hello, "))
        .count();
    assert_eq!(greetings, 4, "{ran:?}");
}

#[test]
fn a_failed_install_fails_the_event_with_the_reason() {
    let rt = runtime();
    // A registry that has none of the packages.
    let registry = rt.block_on(NpmRegistry::start(vec![], None));
    let cache = tempfile::tempdir().unwrap();
    let ran = run_with(
        &registry.url,
        cache.path(),
        &["run", "examples/13-dependencies"],
    );
    assert_ne!(ran.code, 0, "{ran:?}");
    assert!(ran.stderr.contains("worker FAILED"), "{ran:?}");
    assert!(ran.stderr.contains("is-thirteen"), "{ran:?}");
}

/// The one test that reaches the public registry; it says SKIPPED where
/// the registry cannot be reached.
#[test]
fn dependencies_example_against_the_public_registry() {
    let reachable = std::net::TcpStream::connect_timeout(
        &match std::net::ToSocketAddrs::to_socket_addrs(&("registry.npmjs.org", 443))
            .ok()
            .and_then(|mut a| a.next())
        {
            Some(address) => address,
            None => {
                eprintln!("SKIPPED: registry.npmjs.org does not resolve");
                return;
            }
        },
        std::time::Duration::from_secs(5),
    )
    .is_ok();
    if !reachable {
        eprintln!("SKIPPED: registry.npmjs.org:443 cannot be reached");
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    let ran = run_with(
        "https://registry.npmjs.org/",
        cache.path(),
        &["run", "examples/13-dependencies"],
    );
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.stdout.contains("is 13 thirteen? true\n"), "{ran:?}");
}
