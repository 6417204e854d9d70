//! Cron schedules fired by `mizzen server` itself: once per tick however
//! many replicas share the store (two on PostgreSQL), the latest missed
//! tick once after every replica was down, a basic firing on SQLite, and
//! project updates racing the ticks (no duplicate, and no event for a
//! removed schedule once its removal is answered).
//!
//! Outcomes are counted per distinct tick (the events' `tick` label), not
//! timed: a schedule of every second or two, with `--min-schedule-interval
//! 1s`. The PostgreSQL tests need `MIZZEN_TEST_DATABASE_URL` (see
//! tests/server.rs) and say they are skipped without it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const ROOT_PASSWORD: &str = "schedules-root-password";

/// The project's script: answers its cron events and nothing else.
const SCRIPT: &str = r#"const { events } = require("@brigadecore/brigadier");
events.on("brigade.sh/cron", "beat", async (event) => console.log(`beat ${event.labels.tick}`));
events.process();
"#;

/// A `mizzen server` of a test, killed when dropped.
struct Replica {
    child: Child,
    url: String,
    token: String,
}

impl Replica {
    /// A server over `data_dir` (and `database`, when given) that allows
    /// schedules of every second.
    fn start(data_dir: &Path, database: Option<&str>) -> Self {
        let mut args: Vec<String> = [
            "--executor",
            "none",
            "--sandbox-processes",
            "0",
            "--min-schedule-interval",
            "1s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(url) = database {
            args.extend(["--database-url".to_string(), url.to_string()]);
        }
        let (child, url) = common::spawn_server(
            data_dir,
            &data_dir.join("server.log"),
            ROOT_PASSWORD,
            &args,
            &[],
            None,
        );
        let mut replica = Self {
            child,
            url,
            token: String::new(),
        };
        let (status, session) = replica.call_as(
            "POST",
            "/v2/sessions?root=true",
            None,
            Some(("root", ROOT_PASSWORD)),
        );
        assert_eq!(status, 201, "{session}");
        replica.token = session["value"].as_str().unwrap().to_string();
        replica
    }

    fn call_as(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        basic: Option<(&str, &str)>,
    ) -> (u16, Value) {
        static RUNTIME: std::sync::LazyLock<tokio::runtime::Runtime> =
            std::sync::LazyLock::new(|| {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .unwrap()
            });
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let mut request = client.request(method.parse().unwrap(), format!("{}{path}", self.url));
        match basic {
            Some((user, password)) => request = request.basic_auth(user, Some(password)),
            None => request = request.bearer_auth(&self.token),
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let (status, text) = RUNTIME.block_on(async {
            let response = request.send().await.expect("the server answers");
            let status = response.status().as_u16();
            (status, response.text().await.unwrap_or_default())
        });
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        self.call_as(method, path, body, None)
    }

    /// Saves `project` (created or updated) and expects it taken.
    fn save(&self, project: &Value) {
        let id = project["metadata"]["id"].as_str().unwrap();
        let (status, answer) = self.call(
            "PUT",
            &format!("/v2/projects/{id}?create=true"),
            Some(project),
        );
        assert_eq!(status, 200, "{answer}");
    }

    /// Every event of `project`, all pages.
    fn events(&self, project: &str) -> Vec<Value> {
        let mut all = Vec::new();
        let mut after = String::new();
        loop {
            let (status, page) = self.call(
                "GET",
                &format!("/v2/events?projectID={project}&limit=100{after}"),
                None,
            );
            assert_eq!(status, 200, "{page}");
            all.extend(page["items"].as_array().unwrap().iter().cloned());
            match page["metadata"]["continue"].as_str() {
                Some(next) => after = format!("&continue={next}"),
                None => return all,
            }
        }
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A project whose type `beat` fires on `schedule` (UTC unless `zone`).
fn project(id: &str, schedule: Option<&str>, zone: Option<&str>) -> Value {
    let mut subscription = json!({"source": "brigade.sh/cron", "types": ["beat"]});
    if let Some(schedule) = schedule {
        subscription["schedule"] = json!(schedule);
    }
    if let Some(zone) = zone {
        subscription["timeZone"] = json!(zone);
    }
    json!({
        "apiVersion": "brigade.sh/v2", "kind": "Project",
        "metadata": {"id": id},
        "spec": {
            "eventSubscriptions": [subscription],
            "workerTemplate": {"defaultConfigFiles": {"brigade.js": SCRIPT}},
        },
    })
}

/// The events of each tick (by their `tick` label), checking that each is
/// the schedule's: source, type, project and title.
fn by_tick(events: &[Value], project: &str) -> BTreeMap<i64, Vec<String>> {
    let mut ticks: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for event in events {
        assert_eq!(event["source"], "brigade.sh/cron", "{event}");
        assert_eq!(event["type"], "beat", "{event}");
        assert_eq!(event["projectID"], project, "{event}");
        let label = event["labels"]["tick"].as_str().expect("a tick label");
        let title = event["shortTitle"].as_str().unwrap();
        assert!(title.starts_with("schedule \""), "{title}");
        let tick: jiff::Timestamp = label.parse().unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(
            title
                .rsplit(" at ")
                .next()
                .unwrap()
                .parse::<jiff::Timestamp>()
                .ok(),
            Some(tick),
            "{event}"
        );
        ticks
            .entry(tick.as_second())
            .or_default()
            .push(event["metadata"]["id"].as_str().unwrap().to_string());
    }
    ticks
}

/// Waits (up to two minutes) until `project` has events of at least
/// `count` ticks; its ticks.
fn wait_for_ticks(replica: &Replica, project: &str, count: usize) -> BTreeMap<i64, Vec<String>> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ticks = by_tick(&replica.events(project), project);
        if ticks.len() >= count {
            return ticks;
        }
        assert!(
            Instant::now() < deadline,
            "only {} ticks fired in two minutes: {ticks:?}",
            ticks.len()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Each tick made exactly one event.
fn assert_once_each(ticks: &BTreeMap<i64, Vec<String>>) {
    let repeated: Vec<_> = ticks.iter().filter(|(_, ids)| ids.len() != 1).collect();
    assert!(
        repeated.is_empty(),
        "ticks fired more than once: {repeated:?}"
    );
}

/// The ticks, in order, are on the schedule's grid of `step` seconds, and
/// most follow each other at once. Not every one: a machine busy enough to
/// wake the ticker after the next tick was due fires only the latest (the
/// rule for missed ticks), and a test that forbade that would fail on a
/// loaded CI machine without anything being wrong. A server that fired
/// only now and then would fail it.
fn assert_consecutive(ticks: &[i64], step: i64) {
    let steps: Vec<i64> = ticks.windows(2).map(|pair| pair[1] - pair[0]).collect();
    assert!(
        steps.iter().all(|s| *s > 0 && s % step == 0),
        "ticks off the schedule: {ticks:?}"
    );
    let on_time = steps.iter().filter(|s| **s == step).count();
    assert!(
        on_time * 2 >= steps.len(),
        "most ticks were skipped: {ticks:?}"
    );
}

/// Two replicas on one PostgreSQL database fire a schedule of every two
/// seconds once per tick (one is skipped only when the machine was too
/// busy to wake in time); after both were killed for a few ticks, the one
/// started again fires the latest missed tick once and then ticks as
/// before; the schedule shows its last tick and event in the API
/// and the CLI.
#[test]
fn two_replicas_fire_each_tick_once_and_catch_up_once_on_postgres() {
    let Some(database) =
        common::postgres_database("two_replicas_fire_each_tick_once_and_catch_up_once_on_postgres")
    else {
        return;
    };
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let first = Replica::start(dirs[0].path(), Some(&database));
    let second = Replica::start(dirs[1].path(), Some(&database));
    first.save(&project("pulse", Some("*/2 * * * * *"), None));

    // Six ticks after the first (which may have come late, while a replica
    // had not yet seen the new schedule): a dozen seconds.
    let ticks = wait_for_ticks(&second, "pulse", 7);
    assert_once_each(&ticks);
    let seconds: Vec<i64> = ticks.keys().copied().collect();
    assert!(seconds.iter().all(|s| s % 2 == 0), "{seconds:?}");
    assert_consecutive(&seconds, 2);
    let fired_by: BTreeSet<String> = [&dirs[0], &dirs[1]]
        .iter()
        .filter(|dir| {
            std::fs::read_to_string(dir.path().join("server.log"))
                .unwrap_or_default()
                .contains("source=brigade.sh/cron")
        })
        .map(|dir| dir.path().display().to_string())
        .collect();
    eprintln!(
        "{} ticks fired once each; replicas that fired some: {}",
        ticks.len(),
        fired_by.len()
    );

    // The API and the CLI show the schedule's last tick and its event.
    let (status, list) = first.call("GET", "/v2/projects/pulse/schedules", None);
    assert_eq!(status, 200, "{list}");
    let schedule = &list["items"][0];
    assert_eq!(schedule["type"], "beat", "{list}");
    assert_eq!(schedule["schedule"], "*/2 * * * * *", "{list}");
    assert_eq!(schedule["timeZone"], "UTC", "{list}");
    let last_event = schedule["lastEventID"].as_str().unwrap();
    let (status, event) = first.call("GET", &format!("/v2/events/{last_event}"), None);
    assert_eq!(status, 200, "{event}");
    assert!(schedule["nextTick"].as_str().is_some(), "{list}");
    let config = tempfile::tempdir().unwrap();
    let cli = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_mizzen"))
            .args(args)
            .env("MIZZEN_CONFIG_DIR", config.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    cli(&[
        "login",
        "--server",
        &first.url,
        "--root",
        "--password",
        ROOT_PASSWORD,
    ]);
    let table = cli(&["project", "schedules", "--id", "pulse"]);
    assert!(
        table.contains("TYPE") && table.contains("beat") && table.contains("*/2 * * * * *"),
        "{table}"
    );
    let json: Value =
        serde_json::from_str(&cli(&["project", "schedules", "-p", "pulse", "-o", "json"])).unwrap();
    assert_eq!(json["items"][0]["type"], "beat", "{json}");

    // Every replica down for a few ticks: what was made before, by
    // processes now dead, was created before this instant.
    first.stop();
    second.stop();
    let down = jiff::Timestamp::now();
    std::thread::sleep(Duration::from_secs(7));
    let again = Replica::start(dirs[0].path(), Some(&database));
    let deadline = Instant::now() + Duration::from_secs(120);
    let (before, new) = loop {
        let events = again.events("pulse");
        assert_once_each(&by_tick(&events, "pulse"));
        let (old, fresh): (Vec<Value>, Vec<Value>) = events.into_iter().partition(|e| {
            e["metadata"]["created"]
                .as_str()
                .unwrap()
                .parse::<jiff::Timestamp>()
                .unwrap()
                < down
        });
        let new: Vec<i64> = by_tick(&fresh, "pulse").keys().copied().collect();
        if new.len() >= 4 {
            break (by_tick(&old, "pulse"), new);
        }
        assert!(
            Instant::now() < deadline,
            "no ticks after the restart: {new:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let last_before = *before.keys().next_back().unwrap();
    let all: Vec<i64> = before.keys().chain(&new).copied().collect();
    // The first new tick is the catch-up: it skipped the ticks missed
    // while every replica was down, and was fired once; normal ticks
    // follow it.
    assert!(
        new[0] - last_before > 2,
        "no tick was missed while down: {all:?}"
    );
    assert_consecutive(&new, 2);
    let log = std::fs::read_to_string(dirs[0].path().join("server.log")).unwrap();
    assert!(
        log.contains("only the latest fires"),
        "the catch-up is logged:\n{log}"
    );
}

/// On SQLite a schedule of every second fires each tick once, in order;
/// `mizzen run` runs a cron event of the same project as a plain event.
#[test]
fn a_schedule_fires_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let server = Replica::start(dir.path(), None);
    server.save(&project("metronome", Some("* * * * * *"), None));
    let ticks = wait_for_ticks(&server, "metronome", 4);
    assert_once_each(&ticks);
    assert_consecutive(&ticks.keys().copied().collect::<Vec<_>>(), 1);
    // A worker ran for the ticks (the scheduler takes them like any event).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let succeeded = server
            .events("metronome")
            .iter()
            .filter(|e| e["worker"]["status"]["phase"] == "SUCCEEDED")
            .count();
        if succeeded > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no tick's worker succeeded");
        std::thread::sleep(Duration::from_millis(250));
    }

    let local = tempfile::tempdir().unwrap();
    let yaml = serde_norway::to_string(&project("metronome", Some("* * * * * *"), None)).unwrap();
    std::fs::write(local.path().join("project.yaml"), yaml).unwrap();
    let ran = Command::new(env!("CARGO_BIN_EXE_mizzen"))
        .args(["run"])
        .arg(local.path())
        .args([
            "--source",
            "brigade.sh/cron",
            "--type",
            "beat",
            "--label",
            "tick=now",
        ])
        .env(
            "MIZZEN_CACHE_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("mizzen-cache"),
        )
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let ran = common::Ran::from(ran);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.stdout.contains("beat now"), "{ran:?}");
}

/// Updates through two replicas race the ticks: the schedule is changed
/// back and forth between expressions and zones that share instants (every
/// second in UTC, in Europe/Berlin, every two seconds), which must never
/// fire one tick twice; then removed (the subscription kept, so only the
/// store can stop it), after which, once the update is answered, no event
/// is made.
#[test]
fn updates_racing_the_ticks_make_no_duplicate_and_a_removal_stops_them_on_postgres() {
    let Some(database) = common::postgres_database(
        "updates_racing_the_ticks_make_no_duplicate_and_a_removal_stops_them_on_postgres",
    ) else {
        return;
    };
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let replicas = [
        Replica::start(dirs[0].path(), Some(&database)),
        Replica::start(dirs[1].path(), Some(&database)),
    ];
    replicas[0].save(&project("racer", Some("* * * * * *"), None));
    wait_for_ticks(&replicas[0], "racer", 1);
    let versions = [
        project("racer", Some("* * * * * *"), None),
        project("racer", Some("* * * * * *"), Some("Europe/Berlin")),
        project("racer", Some("*/2 * * * * *"), Some("Asia/Kolkata")),
        project("racer", Some("0-59 * * * * *"), None),
    ];
    std::thread::scope(|scope| {
        for (n, replica) in replicas.iter().enumerate() {
            let versions = &versions;
            scope.spawn(move || {
                for i in 0..24 {
                    replica.save(&versions[(i + n) % versions.len()]);
                    std::thread::sleep(Duration::from_millis(170 + 60 * n as u64));
                }
            });
        }
    });
    let ticks = by_tick(&replicas[1].events("racer"), "racer");
    assert!(ticks.len() >= 3, "ticks fired while updated: {ticks:?}");
    assert_once_each(&ticks);

    // Removed: the answer means no tick fires after it.
    replicas[1].save(&project("racer", None, None));
    let (_, list) = replicas[0].call("GET", "/v2/projects/racer/schedules", None);
    assert_eq!(list["items"], json!([]), "{list}");
    let fired: BTreeSet<String> = replicas[0]
        .events("racer")
        .iter()
        .map(|e| e["metadata"]["id"].as_str().unwrap().to_string())
        .collect();
    std::thread::sleep(Duration::from_secs(4));
    let later: BTreeSet<String> = replicas[1]
        .events("racer")
        .iter()
        .map(|e| e["metadata"]["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        later.difference(&fired).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "events made after the schedule's removal was answered"
    );

    // Added again, it starts afresh: the next tick, not one it had missed.
    replicas[0].save(&project("racer", Some("* * * * * *"), None));
    let again = wait_for_ticks(&replicas[0], "racer", ticks.len() + 2);
    assert_once_each(&again);
}
