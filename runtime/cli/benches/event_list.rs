//! What the dashboard asks of a server with a million events: the event
//! list's pages (the first, a project's, a phase's, a time range's, and a
//! page deep in the list through `continue`), timed from the client on
//! loopback, so an upper bound of the server's time; and a thousand
//! followers of one event's log, the server's memory before and while they
//! follow.
//!
//! `cargo bench -p mizzen-cli --bench event_list`; `MIZZEN_BENCH_EVENTS`
//! (default 1,000,000) events are written straight into the store before the
//! server starts (as a server that has run for a long time holds them),
//! `MIZZEN_BENCH_REQUESTS` (default 200) requests of each kind,
//! `MIZZEN_BENCH_FOLLOWERS` (default 1,000). With
//! `MIZZEN_BENCH_DATABASE_URL=postgres://...` (an empty database) the store
//! is PostgreSQL.

#![allow(
    clippy::print_stdout,
    reason = "a benchmark reports its figures on stdout"
)]

mod common;

use std::time::{Duration, Instant};

use common::{env_usize, percentile, root_token, start_server_on};
use serde_json::{Value, json};
use sqlx::Executor as _;

/// The goals of issue 20.
const GOAL_PAGE_P95_MS: f64 = 100.0;
/// What a thousand followers may add to the server's resident memory: a
/// follower is a connection and a stream reading the store in batches.
const GOAL_FOLLOWERS_MIB: f64 = 256.0;

/// Fills the store with `n` ended events of four projects, in one
/// statement a backend (the schema is the server's own, made by a first
/// start).
async fn fill(url: &str, n: usize, postgres: bool) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .expect("the store opens");
    let document = r#"{"project":{"spec":{"workerTemplate":{}}},"qualifiers":{},"labels":{}}"#;
    let sql = if postgres {
        format!(
            "INSERT INTO events (id, project_id, created, source, event_type, document, phase, started, ended, attempts)
             SELECT lpad(to_hex(i), 8, '0') || '-0000-4000-8000-' || lpad(to_hex(i), 12, '0'),
                    'p' || (i % 4), 1700000000000000 + i * 1000, 'brigade.sh/cli', 'exec', '{document}',
                    CASE WHEN i % 10 = 0 THEN 'FAILED' ELSE 'SUCCEEDED' END,
                    1700000000000000 + i * 1000 + 100, 1700000000000000 + i * 1000 + 900, 1
             FROM generate_series(1, {n}) AS i"
        )
    } else {
        format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n})
             INSERT INTO events (id, project_id, created, source, event_type, document, phase, started, ended, attempts)
             SELECT printf('%08x-0000-4000-8000-%012x', i, i), 'p' || (i % 4), 1700000000000000 + i * 1000,
                    'brigade.sh/cli', 'exec', '{document}',
                    CASE WHEN i % 10 = 0 THEN 'FAILED' ELSE 'SUCCEEDED' END,
                    1700000000000000 + i * 1000 + 100, 1700000000000000 + i * 1000 + 900, 1
             FROM n"
        )
    };
    pool.execute(sqlx::AssertSqlSafe(sql))
        .await
        .expect("the events are written");
    if postgres {
        // What autovacuum gives a database that has run for a while: the
        // planner's statistics and the map that lets a count read an
        // index alone.
        pool.execute("VACUUM ANALYZE events").await.ok();
    } else {
        pool.execute("PRAGMA wal_checkpoint(TRUNCATE)").await.ok();
    }
    pool.close().await;
}

/// When the `i`th event written by [`fill`] was accepted, as the API takes
/// a time.
fn created(i: usize) -> String {
    let micros = 1_700_000_000_000_000 + i as u64 * 1000;
    humantime::format_rfc3339_micros(std::time::UNIX_EPOCH + Duration::from_micros(micros))
        .to_string()
}

fn resident_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

async fn timed(client: &reqwest::Client, url: &str, token: &str, n: usize) -> Vec<f64> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let response = client.get(url).bearer_auth(token).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "{url}");
        let _ = response.bytes().await.unwrap();
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    times
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let events = env_usize("MIZZEN_BENCH_EVENTS", 1_000_000);
    let requests = env_usize("MIZZEN_BENCH_REQUESTS", 200);
    let followers = env_usize("MIZZEN_BENCH_FOLLOWERS", 1_000);
    let database = std::env::var("MIZZEN_BENCH_DATABASE_URL").ok();
    let data = tempfile::tempdir().unwrap();

    // A first start makes the schema; the events go in while it is down.
    drop(start_server_on(data.path(), &[]));
    let url = database
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", data.path().join("mizzen.db").display()));
    let backend = if database.is_some() {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    let filling = Instant::now();
    fill(&url, events, database.is_some()).await;
    println!(
        "event list: {events} events written in {:.1} s ({backend})",
        filling.elapsed().as_secs_f64(),
    );

    let server = start_server_on(data.path(), &[]);
    let base = server.url.clone();
    let client = reqwest::Client::new();
    let token = root_token(&client, &base).await;

    // Deep in the list: 50 pages of 20 in, through `continue`.
    let mut next = String::new();
    for _ in 0..50 {
        let page: Value = client
            .get(format!("{base}/v2/events?limit=20&continue={next}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        next = page["metadata"]["continue"]
            .as_str()
            .unwrap_or_default()
            .to_string();
    }
    let mut met = true;
    for (what, path) in [
        ("the first page", "/v2/events?limit=20".to_string()),
        (
            "a project's first page",
            "/v2/events?limit=20&projectID=p1".to_string(),
        ),
        (
            "a phase's first page (1 in 10)",
            "/v2/events?limit=20&workerPhases=FAILED".to_string(),
        ),
        (
            "the 51st page",
            format!("/v2/events?limit=20&continue={next}"),
        ),
        (
            "a time range's first page (the newest tenth)",
            format!(
                "/v2/events?limit=20&createdAfter={}",
                created(events * 9 / 10)
            ),
        ),
        (
            "a time range's first page (the oldest tenth)",
            format!("/v2/events?limit=20&createdBefore={}", created(events / 10)),
        ),
    ] {
        let times = timed(&client, &format!("{base}{path}"), &token, requests).await;
        let p95 = percentile(&times, 0.95);
        met &= p95 <= GOAL_PAGE_P95_MS;
        println!(
            "figure | event list of {events} ({backend}), {what}: p50, p95 (client on loopback) | {:.1} ms, {p95:.1} ms | p95 ≤ {GOAL_PAGE_P95_MS} ms | {}",
            percentile(&times, 0.5),
            if p95 <= GOAL_PAGE_P95_MS {
                "met"
            } else {
                "NOT MET"
            }
        );
    }

    // A thousand followers of one running event's log.
    let project = json!({
        "apiVersion": "brigade.sh/v2", "kind": "Project", "metadata": {"id": "talker"},
        "spec": {
            "eventSubscriptions": [{"source": "brigade.sh/cli", "types": ["exec"]}],
            "workerTemplate": {"defaultConfigFiles": {"brigade.js":
                "const { events } = require(\"@brigadecore/brigadier\");\n\
                 events.on(\"brigade.sh/cli\", \"exec\", async () => {\n\
                   for (let i = 0; i < 300; i++) { console.log(`line ${i}`); await new Promise((r) => setTimeout(r, 100)); }\n\
                 });\n\
                 events.process();\n"}}
        }
    });
    let made = client
        .post(format!("{base}/v2/projects"))
        .bearer_auth(&token)
        .json(&project)
        .send()
        .await
        .unwrap();
    assert_eq!(made.status().as_u16(), 201);
    let created: Value = client
        .post(format!("{base}/v2/events"))
        .bearer_auth(&token)
        .json(&json!({"projectID": "talker", "source": "brigade.sh/cli", "type": "exec"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["items"][0]["metadata"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = resident_mib(server.pid());
    let received = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..followers {
        // A connection each, as a thousand browsers would have.
        let client = reqwest::Client::new();
        let (url, token, received) = (
            format!("{base}/v2/events/{id}/logs?follow=true"),
            token.clone(),
            received.clone(),
        );
        tasks.spawn(async move {
            use futures_util::StreamExt as _;
            let Ok(response) = client.get(url).bearer_auth(token).send().await else {
                return;
            };
            let mut body = response.bytes_stream();
            while let Some(Ok(chunk)) = body.next().await {
                received.fetch_add(chunk.len(), std::sync::atomic::Ordering::Relaxed);
            }
        });
    }
    let mut peak = before;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        peak = peak.max(resident_mib(server.pid()));
    }
    let grown = peak - before;
    met &= grown <= GOAL_FOLLOWERS_MIB;
    println!(
        "figure | {followers} followers of one event's log: the server's resident memory, before and at most while they follow | {before:.0} MiB, {peak:.0} MiB (+{grown:.0} MiB; {:.0} KiB a follower; {} KiB received) | +{GOAL_FOLLOWERS_MIB} MiB | {}",
        grown * 1024.0 / followers as f64,
        received.load(std::sync::atomic::Ordering::Relaxed) / 1024,
        if grown <= GOAL_FOLLOWERS_MIB {
            "met"
        } else {
            "NOT MET"
        }
    );
    tasks.abort_all();
    println!(
        "event list: {}",
        if met {
            "every goal met"
        } else {
            "a goal NOT MET"
        }
    );
}
