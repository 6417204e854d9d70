//! API benchmark: durably accepted events per second through
//! `POST /v2/events`, and the latency from an event's acceptance to its
//! handler running (from the request's arrival, stamped by the server as the
//! event's `created`, and from the client receiving the 201), on a real
//! `mizzen server` with the embedded SQLite store.
//!
//! `cargo bench -p mizzen-cli --bench api`; `MIZZEN_BENCH_EVENTS` (default
//! 10,000) and `MIZZEN_BENCH_CONNECTIONS` (default 64) size the ingest run,
//! `MIZZEN_BENCH_LATENCY_EVENTS` (default 300) the latency run. Add
//! `MIZZEN_BENCH_DATABASE_URL=postgres://...` to measure PostgreSQL instead.

#![allow(
    clippy::print_stdout,
    reason = "a benchmark reports its figures on stdout"
)]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

mod common;

use common::{env_usize, micros, parse_time, percentile, root_token, start_server};

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; nothing else is expected.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = start_server(&[]);
    let client = reqwest::Client::new();
    let base = server.url.clone();
    let token = root_token(&client, &base).await;
    let project = json!({
        "apiVersion": "brigade.sh/v2", "kind": "Project", "metadata": {"id": "bench"},
        "spec": {
            "eventSubscriptions": [{"source": "brigade.sh/cli", "types": ["exec"]}],
            "workerTemplate": {"defaultConfigFiles": {"brigade.js":
                "const { events } = require(\"@brigadecore/brigadier\");\n\
                 events.on(\"brigade.sh/cli\", \"exec\", async () => { console.log(\"handler running\"); });\n\
                 events.process();\n"}}
        }
    });
    let created = client
        .post(format!("{base}/v2/projects"))
        .bearer_auth(&token)
        .json(&project)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let event = json!({"apiVersion": "brigade.sh/v2", "kind": "Event", "projectID": "bench",
                       "source": "brigade.sh/cli", "type": "exec"});

    // Latency first, on an idle server: one event at a time.
    let latency_events = env_usize("MIZZEN_BENCH_LATENCY_EVENTS", 300);
    let mut ids = Vec::new();
    for _ in 0..latency_events {
        let response = client
            .post(format!("{base}/v2/events"))
            .bearer_auth(&token)
            .json(&event)
            .send()
            .await
            .unwrap();
        // The server's 201 is its word that the event is durably stored.
        let answered = micros(SystemTime::now());
        let list: Value = response.json().await.unwrap();
        let id = list["items"][0]["metadata"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        let created = parse_time(list["items"][0]["metadata"]["created"].as_str().unwrap());
        ids.push((id, created, answered));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (mut from_request, mut from_answer) = (Vec::new(), Vec::new());
    for (id, created, answered) in &ids {
        let text = client
            .get(format!("{base}/v2/events/{id}/logs"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let entry = serde_json::Deserializer::from_str(&text)
            .into_iter::<Value>()
            .filter_map(Result::ok)
            .find(|e| e["message"] == "handler running")
            .unwrap_or_else(|| panic!("event {id}: the handler did not log: {text}"));
        let ran = parse_time(entry["time"].as_str().unwrap());
        from_request.push((ran - created) as f64 / 1000.0);
        from_answer.push((ran - answered) as f64 / 1000.0);
    }
    from_request.sort_by(f64::total_cmp);
    from_answer.sort_by(f64::total_cmp);

    // Ingest: many connections posting as fast as the server accepts.
    let total = env_usize("MIZZEN_BENCH_EVENTS", 10_000);
    let connections = env_usize("MIZZEN_BENCH_CONNECTIONS", 64);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (client, base, token, event, next) = (
            client.clone(),
            base.clone(),
            token.clone(),
            event.clone(),
            next.clone(),
        );
        tasks.spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                let response = client
                    .post(format!("{base}/v2/events"))
                    .bearer_auth(&token)
                    .json(&event)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status().as_u16(), 201);
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let elapsed = started.elapsed();

    let backend = if std::env::var("MIZZEN_BENCH_DATABASE_URL").is_ok() {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    println!("store: {backend}");
    println!(
        "ingest: {total} events over {connections} connections in {:.2} s = {:.0} accepted events/s (goal >= 2,000/s)",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    for (from, latencies) in [
        (
            "the request's arrival (before the disk sync)",
            &from_request,
        ),
        ("the 201 answer (event durable)", &from_answer),
    ] {
        println!(
            "handler running, from {from}: {} events one at a time, p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms (goal p50 <= 1 ms, p99 <= 5 ms)",
            latencies.len(),
            percentile(latencies, 0.5),
            percentile(latencies, 0.9),
            percentile(latencies, 0.99),
            latencies.last().copied().unwrap_or(0.0),
        );
    }
}
