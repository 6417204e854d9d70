//! What log forwarding costs: events/s and p99 event latency (accepted to
//! ended) of a server whose workers print lines, with forwarding off, on
//! with the collector up, and on with the collector down — three servers
//! measured side by side, in interleaved rounds, in one run. The collector
//! is the fluent org's Forward server (scripts/setup-collectors), as in the
//! tests.
//!
//! `cargo bench -p mizzen-cli --bench forwarding`; `MIZZEN_BENCH_EVENTS`
//! (default 300) events a round over `MIZZEN_BENCH_CONNECTIONS` (default
//! 16), `MIZZEN_BENCH_LINES` (default 100) lines an event,
//! `MIZZEN_BENCH_ROUNDS` (default 3). The collectors' directory is
//! `MIZZEN_TEST_COLLECTORS`, else scripts/setup-collectors is run.

#![allow(
    clippy::print_stdout,
    reason = "a benchmark reports its figures on stdout"
)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, env_usize, parse_time, percentile, process_cpu, root_token, start_server};
use serde_json::{Value, json};

/// The goals of issue 19: what forwarding may cost against none.
const GOAL_UP: f64 = 0.05;
const GOAL_DOWN: f64 = 0.10;

fn collectors() -> PathBuf {
    if let Ok(dir) = std::env::var("MIZZEN_TEST_COLLECTORS") {
        return PathBuf::from(dir);
    }
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new(repo.join("scripts/setup-collectors"))
        .stderr(Stdio::inherit())
        .output()
        .expect("scripts/setup-collectors runs");
    assert!(out.status.success(), "scripts/setup-collectors failed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// The Forward receiver, writing what it gets to a file.
fn start_collector(dir: &std::path::Path, out: &std::path::Path) -> (Child, u16) {
    let mut child = Command::new("node")
        .arg(dir.join("fluent-receiver.js"))
        .arg("--out")
        .arg(out)
        .stdout(Stdio::piped())
        .spawn()
        .expect("node runs the receiver");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .strip_prefix("listening ")
        .unwrap()
        .parse()
        .unwrap();
    (child, port)
}

/// A port nothing listens on: a collector that is down.
fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

struct Mode {
    name: &'static str,
    server: Server,
    token: String,
    rates: Vec<f64>,
    latencies: Vec<f64>,
    /// The server's CPU time spent in the rounds.
    cpu: Duration,
}

async fn prepare(
    name: &'static str,
    server: Server,
    client: &reqwest::Client,
    lines: usize,
) -> Mode {
    let base = &server.url;
    let token = root_token(client, base).await;
    let script = format!(
        "const {{ events }} = require(\"@brigadecore/brigadier\");\n\
         events.on(\"brigade.sh/cli\", \"exec\", async () => {{ for (let i = 0; i < {lines}; i++) console.log(`line ${{i}} of the event`); }});\n\
         events.process();\n"
    );
    let project = json!({
        "apiVersion": "brigade.sh/v2", "kind": "Project", "metadata": {"id": "bench"},
        "spec": {
            "eventSubscriptions": [{"source": "brigade.sh/cli", "types": ["exec"]}],
            "workerTemplate": {"defaultConfigFiles": {"brigade.js": script}}
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
    Mode {
        name,
        server,
        token,
        rates: Vec::new(),
        latencies: Vec::new(),
        cpu: Duration::ZERO,
    }
}

/// One round: `events` events over `connections`, until every one ended.
async fn round(mode: &mut Mode, client: &reqwest::Client, events: usize, connections: usize) {
    let base = mode.server.url.clone();
    let cpu_before = mode.server.cpu();
    let event = json!({"projectID": "bench", "source": "brigade.sh/cli", "type": "exec"});
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (client, base, token, event, next) = (
            client.clone(),
            base.clone(),
            mode.token.clone(),
            event.clone(),
            next.clone(),
        );
        tasks.spawn(async move {
            let mut ids = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < events {
                let list: Value = client
                    .post(format!("{base}/v2/events"))
                    .bearer_auth(&token)
                    .json(&event)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                ids.push(
                    list["items"][0]["metadata"]["id"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                );
            }
            ids
        });
    }
    let mut ids = Vec::new();
    while let Some(done) = tasks.join_next().await {
        ids.extend(done.unwrap());
    }
    // Until none is waiting or running.
    loop {
        let open: Value = client
            .get(format!(
                "{base}/v2/events?projectID=bench&workerPhases=PENDING,STARTING,RUNNING&limit=1"
            ))
            .bearer_auth(&mode.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if open["items"].as_array().is_some_and(Vec::is_empty) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    mode.rates
        .push(events as f64 / started.elapsed().as_secs_f64());
    mode.cpu += mode.server.cpu().saturating_sub(cpu_before);
    for id in ids {
        let event: Value = client
            .get(format!("{base}/v2/events/{id}"))
            .bearer_auth(&mode.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let created = parse_time(event["metadata"]["created"].as_str().unwrap());
        let ended = parse_time(event["worker"]["status"]["ended"].as_str().unwrap());
        mode.latencies.push((ended - created) as f64 / 1000.0);
    }
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let events = env_usize("MIZZEN_BENCH_EVENTS", 300);
    let connections = env_usize("MIZZEN_BENCH_CONNECTIONS", 16);
    let lines = env_usize("MIZZEN_BENCH_LINES", 100);
    let rounds = env_usize("MIZZEN_BENCH_ROUNDS", 3);
    let dir = collectors();
    let received = tempfile::tempdir().unwrap();
    let (mut collector, port) = start_collector(&dir, &received.path().join("fluentd.jsonl"));
    let client = reqwest::Client::new();
    let fluentd = |port: u16| vec!["--fluentd".to_string(), format!("127.0.0.1:{port}")];
    let mut modes = vec![
        prepare("off", start_server(&[]), &client, lines).await,
        prepare(
            "on, collector up",
            start_server(&fluentd(port)),
            &client,
            lines,
        )
        .await,
        prepare(
            "on, collector down",
            start_server(&fluentd(dead_port())),
            &client,
            lines,
        )
        .await,
    ];
    for _ in 0..rounds {
        for mode in &mut modes {
            round(mode, &client, events, connections).await;
        }
    }
    let collector_cpu = process_cpu(collector.id());
    let _ = collector.kill();
    let delivered = std::fs::read_to_string(received.path().join("fluentd.jsonl"))
        .map(|t| t.lines().count())
        .unwrap_or(0);

    println!(
        "forwarding: {rounds} rounds of {events} events over {connections} connections, {lines} lines an event, three servers side by side"
    );
    let mut figures = Vec::new();
    for mode in &mut modes {
        mode.rates.sort_by(f64::total_cmp);
        mode.latencies.sort_by(f64::total_cmp);
        let rate = percentile(&mode.rates, 0.5);
        let p99 = percentile(&mode.latencies, 0.99);
        println!(
            "forwarding {}: {rate:.0} events/s (median of rounds), event latency p50 {:.1} ms, p99 {p99:.1} ms, server CPU {:.2} ms an event",
            mode.name,
            percentile(&mode.latencies, 0.5),
            mode.cpu.as_secs_f64() * 1000.0 / (rounds * events) as f64,
        );
        figures.push((rate, p99));
    }
    let (off_rate, off_p99) = figures[0];
    for ((rate, p99), (name, goal)) in figures[1..]
        .iter()
        .zip([("up", GOAL_UP), ("down", GOAL_DOWN)])
    {
        let cost = (off_rate - rate) / off_rate;
        let latency_cost = (p99 - off_p99) / off_p99;
        println!(
            "figure | log forwarding on, collector {name}, against off: events/s, p99 event latency | {:+.1} %, {:+.1} % | cost ≤ {:.0} % | {}",
            -cost * 100.0,
            latency_cost * 100.0,
            goal * 100.0,
            if cost <= goal && latency_cost <= goal {
                "met"
            } else {
                "NOT MET"
            }
        );
    }
    println!(
        "forwarding: the collector received {delivered} lines (of {} printed with it up) and used {:.1} s of CPU on this machine's cores ({:.2} ms an event)",
        rounds * events * lines,
        collector_cpu.as_secs_f64(),
        collector_cpu.as_secs_f64() * 1000.0 / (rounds * events) as f64,
    );
}
