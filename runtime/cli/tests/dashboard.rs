//! The dashboard in a real browser: headless Chromium from Debian's
//! packages, driven over WebDriver (chromedriver, which scripts/setup-browser
//! installs and names in `MIZZEN_TEST_CHROMEDRIVER`). Sign in, see an event
//! appear and end live, its job timeline and a job's log followed as lines
//! arrive, cancel a running event, the keyboard alone, text contrast in
//! light and dark, the time filters, and a tenant who sees only its own
//! project. Screenshots of each step are saved in
//! `target/tmp/dashboard-screenshots/`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

const ROOT_PASSWORD: &str = "dashboard-root-password";

/// How long a page may take to show what a step waits for: the events
/// list is read again every 2 s, and jobs start containers.
const PATIENCE: Duration = Duration::from_secs(60);

/// WebDriver's key codes.
const TAB: &str = "\u{E004}";
const ENTER: &str = "\u{E007}";

/// The page's text whose contrast with what is behind it is under WCAG AA's
/// (4.5:1, 3:1 for large text), as `element "text": ratio`; semi-transparent
/// colours are laid over what is beneath them.
const LOW_CONTRAST: &str = r#"
const rgba = (c) => { const m = c.match(/rgba?\(([^)]+)\)/); if (!m) return null;
  const p = m[1].split(/[ ,\/]+/).filter(Boolean).map(Number); return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1]; };
const over = (top, under) => under.map((v, i) => top[i] * top[3] + v * (1 - top[3]));
const behind = (e) => { const layers = [];
  for (; e; e = e.parentElement) { const c = rgba(getComputedStyle(e).backgroundColor);
    if (c && c[3] > 0) { layers.push(c); if (c[3] >= 1) break; } }
  return layers.reverse().reduce((under, top) => over(top, under), [255, 255, 255]); };
const lum = (rgb) => { const [r, g, b] = rgb.map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); });
  return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
const low = [];
for (const e of document.querySelectorAll('body *')) {
  if (e.closest('option') || ![...e.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim())) continue;
  const s = getComputedStyle(e);
  if (s.visibility === 'hidden' || e.getClientRects().length === 0) continue;
  const under = behind(e), fg = over(rgba(s.color), under);
  const [hi, lo] = [lum(fg), lum(under)].sort((a, b) => b - a), ratio = (hi + 0.05) / (lo + 0.05);
  const size = parseFloat(s.fontSize), large = size >= 24 || (size >= 18.66 && Number(s.fontWeight) >= 700);
  if (ratio < (large ? 3 : 4.5)) low.push(`${e.tagName.toLowerCase()}.${e.className} "${e.textContent.trim().slice(0, 30)}": ${ratio.toFixed(2)}`);
}
return low;"#;

/// A W3C WebDriver session on a chromedriver of its own.
struct Browser {
    driver: Child,
    url: String,
    session: String,
    client: reqwest::Client,
    shots: PathBuf,
}

impl Browser {
    async fn start(chromedriver: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let url = format!("http://127.0.0.1:{port}");
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while client.get(format!("{url}/status")).send().await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not answer");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"]
            }
        }}});
        let created: Value = client
            .post(format!("{url}/session"))
            .json(&capabilities)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {created}"))
            .to_string();
        let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
        std::fs::create_dir_all(&shots).unwrap();
        Self {
            driver,
            url,
            session,
            client,
            shots,
        }
    }

    async fn command(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.url, self.session);
        let request = match method {
            "GET" => self.client.get(url),
            _ => self.client.post(url).json(&body),
        };
        let answer: Value = request.send().await.unwrap().json().await.unwrap();
        answer["value"].clone()
    }

    async fn go(&self, url: &str) {
        self.command("POST", "/url", json!({"url": url})).await;
    }

    /// Runs `script` in the page; its result.
    async fn run(&self, script: &str) -> Value {
        self.command(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
        .await
    }

    /// Waits until `script` (an expression) is true in the page.
    async fn until(&self, what: &str, script: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if self.run(&format!("return !!({script});")).await == json!(true) {
                return;
            }
            if Instant::now() > deadline {
                let text = self.run("return document.body.innerText;").await;
                self.shot(&format!("failed-{}", what.replace(' ', "-")))
                    .await;
                panic!("the page did not show {what} within {PATIENCE:?}; it shows:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn element(&self, css: &str) -> String {
        let found = self
            .command(
                "POST",
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_string()
    }

    async fn click(&self, css: &str) {
        let id = self.element(css).await;
        self.command("POST", &format!("/element/{id}/click"), json!({}))
            .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.command("POST", &format!("/element/{id}/clear"), json!({}))
            .await;
        self.command(
            "POST",
            &format!("/element/{id}/value"),
            json!({"text": text}),
        )
        .await;
    }

    /// Presses `key` (a WebDriver key code: TAB, ENTER) wherever the
    /// focus is, as a person at the keyboard.
    async fn press(&self, key: &str) {
        self.command(
            "POST",
            "/actions",
            json!({"actions": [{"type": "key", "id": "keyboard", "actions": [
                {"type": "keyDown", "value": key}, {"type": "keyUp", "value": key}]}]}),
        )
        .await;
    }

    /// Signs in with root's password on the sign-in page, and waits for
    /// the events page.
    async fn sign_in_as_root(&self) {
        self.until("the sign-in form", "document.querySelector('#password')")
            .await;
        self.type_into("#password", ROOT_PASSWORD).await;
        self.click("form[aria-labelledby=as-root] button").await;
        self.until(
            "the events page",
            "document.querySelector('#filter-project')",
        )
        .await;
    }

    /// A command of Chrome's DevTools protocol, through chromedriver.
    async fn cdp(&self, command: &str, params: Value) {
        self.command(
            "POST",
            "/goog/cdp/execute",
            json!({"cmd": command, "params": params}),
        )
        .await;
    }

    async fn window(&self, width: u32, height: u32) {
        self.command(
            "POST",
            "/window/rect",
            json!({"width": width, "height": height}),
        )
        .await;
    }

    async fn shot(&self, name: &str) {
        let png = self.command("GET", "/screenshot", json!(null)).await;
        if let Some(data) = png.as_str()
            && let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(data)
        {
            let _ = std::fs::write(self.shots.join(format!("{name}.png")), bytes);
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

async fn call(method: &str, url: &str, token: &str, body: Option<Value>) -> Value {
    let client = reqwest::Client::new();
    let mut request = client
        .request(method.parse().unwrap(), url)
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert!(status.is_success(), "{method} {url}: {status} {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// Creates an event for `project` through the API; its id.
async fn create_event(base: &str, token: &str, project: &str) -> String {
    let created = call(
        "POST",
        &format!("{base}/v2/events"),
        token,
        Some(json!({"projectID": project, "source": "brigade.sh/cli", "type": "exec"})),
    )
    .await;
    created["items"][0]["metadata"]["id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn project(id: &str, handler: &str) -> Value {
    json!({
        "apiVersion": "brigade.sh/v2", "kind": "Project", "metadata": {"id": id},
        "spec": {
            "eventSubscriptions": [{"source": "brigade.sh/cli", "types": ["exec"]}],
            "workerTemplate": {"defaultConfigFiles": {"brigade.js": format!(
                "const {{ events, Job }} = require(\"@brigadecore/brigadier\");\n\
                 events.on(\"brigade.sh/cli\", \"exec\", async (event) => {{\n{handler}\n}});\n\
                 events.process();\n")}}
        }
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_in_a_real_browser() {
    let Ok(chromedriver) = std::env::var("MIZZEN_TEST_CHROMEDRIVER") else {
        eprintln!(
            "SKIPPED the_dashboard_in_a_real_browser: MIZZEN_TEST_CHROMEDRIVER is not set (scripts/setup-browser prints it; scripts/test sets it)"
        );
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let log = data.path().join("server.log");
    let (mut server, base) = common::spawn_server(data.path(), &log, ROOT_PASSWORD, &[], &[], None);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let session: Value = reqwest::Client::new()
        .post(format!("{base}/v2/sessions?root=true"))
        .basic_auth("root", Some(ROOT_PASSWORD))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let root = session["value"].as_str().unwrap().to_string();
    // Two jobs side by side, one printing a line a second.
    let pipeline = project(
        "pipeline",
        r#"const slow = new Job("slow", "localhost/busybox", event);
  slow.primaryContainer.command = ["sh", "-c", "for i in 1 2 3 4 5 6; do echo line $i; sleep 1; done"];
  const quick = new Job("quick", "localhost/busybox", event);
  quick.primaryContainer.command = ["echo", "quick done"];
  await Promise.all([slow.run(), quick.run()]);
  return "both jobs ran";"#,
    );
    call(
        "POST",
        &format!("{base}/v2/projects"),
        &root,
        Some(pipeline),
    )
    .await;
    let long = project(
        "long",
        r#"const job = new Job("sleeper", "localhost/busybox", event);
  job.primaryContainer.command = ["sleep", "120"];
  await job.run();"#,
    );
    call("POST", &format!("{base}/v2/projects"), &root, Some(long)).await;

    // The page comes with its policy: only its own script and style.
    let page = reqwest::Client::new()
        .get(format!("{base}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let policy = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        policy.contains("script-src 'self'") && !policy.contains("unsafe-inline"),
        "{policy}"
    );
    let etag = page.headers()["etag"].clone();
    let again = reqwest::Client::new()
        .get(format!("{base}/ui/app.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 200);
    let unchanged = reqwest::Client::new()
        .get(format!("{base}/"))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(unchanged.status().as_u16(), 304);

    let browser = Browser::start(&chromedriver).await;
    // Signing in as root.
    browser.go(&format!("{base}/")).await;
    browser
        .until("the sign-in form", "document.querySelector('#password')")
        .await;
    browser.shot("1-sign-in").await;
    browser.sign_in_as_root().await;

    // An event appears in the list and ends there, live.
    let id = create_event(&base, &root, "pipeline").await;
    browser
        .until(
            "the new event in the list",
            &format!("document.querySelector('tr[data-event=\"{id}\"]')"),
        )
        .await;
    browser.shot("2-events").await;
    browser.go(&format!("{base}/#/projects")).await;
    browser
        .until(
            "the projects",
            "document.querySelector('main').innerText.includes('pipeline')",
        )
        .await;
    browser.shot("2-projects").await;
    // A project's page: its secrets by name, never by value.
    call(
        "PUT",
        &format!("{base}/v2/projects/pipeline/secrets/deploy_token"),
        &root,
        Some(json!({"key": "deploy_token", "value": "s3cr3t-value"})),
    )
    .await;
    browser.go(&format!("{base}/#/projects/pipeline")).await;
    browser
        .until(
            "the project's page with its recent event",
            &format!("document.querySelector('tr[data-event=\"{id}\"]')"),
        )
        .await;
    let text = browser.run("return document.body.innerText;").await;
    let text = text.as_str().unwrap();
    assert!(text.contains("deploy_token"), "{text}");
    assert!(!text.contains("s3cr3t-value"), "{text}");
    browser.shot("2-project").await;

    // Its page: the log of the slow job followed as lines arrive.
    browser.go(&format!("{base}/#/events/{id}")).await;
    browser
        .until("the event's page", "document.querySelector('#log-of')")
        .await;
    browser
        .until(
            "the slow job in the log menu",
            "[...document.querySelectorAll('#log-of option')].some(o => o.value === 'slow/slow')",
        )
        .await;
    browser
        .run("const s = document.querySelector('#log-of'); s.value = 'slow/slow'; s.dispatchEvent(new Event('change')); return true;")
        .await;
    browser
        .until(
            "the slow job's first lines",
            "document.querySelector('#log').textContent.includes('line 2')",
        )
        .await;
    let partial = browser
        .run("return document.querySelector('#log').textContent;")
        .await;
    assert!(
        !partial.as_str().unwrap().contains("line 6"),
        "the log was followed while the job ran: {partial}"
    );
    browser.shot("3-following").await;
    browser
        .until(
            "the slow job's last line",
            "document.querySelector('#log').textContent.includes('line 6')",
        )
        .await;
    browser
        .until(
            "SUCCEEDED",
            "document.querySelector('#phase').textContent === 'SUCCEEDED'",
        )
        .await;
    // The timeline: both jobs, side by side.
    browser
        .until(
            "two bars in the timeline",
            "document.querySelectorAll('.timeline .bar').length === 2",
        )
        .await;
    let text = browser.run("return document.body.innerText;").await;
    let text = text.as_str().unwrap();
    assert!(text.contains("Summary: both jobs ran"), "{text}");
    assert!(text.contains("quick"), "{text}");
    browser.shot("4-event").await;
    // Every control has a label, and the keyboard reaches the page first
    // through the skip link.
    assert_eq!(
        browser
            .run("return [...document.querySelectorAll('input, select, textarea')].every(e => e.labels && e.labels.length > 0);")
            .await,
        json!(true)
    );
    // Every text readable against what is behind it (WCAG AA), in light
    // and then in dark.
    assert_eq!(browser.run(LOW_CONTRAST).await, json!([]), "light");
    // Dark, as the system prefers it (through the DevTools protocol).
    browser
        .cdp(
            "Emulation.setEmulatedMedia",
            json!({"features": [{"name": "prefers-color-scheme", "value": "dark"}]}),
        )
        .await;
    assert_eq!(
        browser
            .run("return getComputedStyle(document.body).backgroundColor;")
            .await,
        json!("rgb(13, 17, 23)")
    );
    assert_eq!(browser.run(LOW_CONTRAST).await, json!([]), "dark");
    browser.shot("4-event-dark").await;
    // A phone's width: nothing wider than the screen but the log and tables,
    // which scroll.
    browser.window(390, 844).await;
    assert_eq!(
        browser
            .run("return document.documentElement.scrollWidth <= window.innerWidth;")
            .await,
        json!(true)
    );
    browser.shot("4-event-phone").await;
    browser.window(1280, 1000).await;
    browser
        .cdp(
            "Emulation.setEmulatedMedia",
            json!({"features": [{"name": "prefers-color-scheme", "value": "light"}]}),
        )
        .await;

    // Cancelling a running event.
    let long_id = create_event(&base, &root, "long").await;
    browser.go(&format!("{base}/#/events/{long_id}")).await;
    browser
        .until("RUNNING", "document.querySelector('#phase') && document.querySelector('#phase').textContent === 'RUNNING'")
        .await;
    browser.click("#cancel").await;
    browser
        .until(
            "the event aborted",
            "['ABORTED', 'CANCELED'].includes(document.querySelector('#phase').textContent)",
        )
        .await;
    browser.shot("5-canceled").await;

    // The list follows phases live (Server-Sent Events): a new event
    // appears, then turns SUCCEEDED in its row, with no reload.
    browser.go(&format!("{base}/#/events")).await;
    browser
        .until(
            "the events page",
            "document.querySelector('#filter-project')",
        )
        .await;
    let live = create_event(&base, &root, "pipeline").await;
    let row = format!("document.querySelector('tr[data-event=\"{live}\"]')");
    browser.until("the newer event in the list", &row).await;
    browser
        .run(&format!("{row}.dataset.marker = 'same row'; return true;"))
        .await;
    browser
        .until(
            "its phase turning SUCCEEDED in the list",
            &format!("{row} && {row}.cells[4].textContent === 'SUCCEEDED'"),
        )
        .await;
    assert_eq!(
        browser
            .run(&format!("return {row}.dataset.marker || null;"))
            .await,
        json!("same row"),
        "the row was updated in place, not read again"
    );
    assert_eq!(browser.run(LOW_CONTRAST).await, json!([]), "the list");

    // The keyboard alone. The skip link is the page's first stop; Enter on
    // it puts the focus on the content, on the same page; from there Tab
    // walks the menu, every filter and the events' links, each showing its
    // focus; Enter on an event's link opens it.
    assert_eq!(
        browser
            .run("return document.querySelector('a[href], button, input, select, textarea') === document.querySelector('.skip');")
            .await,
        json!(true)
    );
    browser
        .run("document.querySelector('.skip').focus(); return true;")
        .await;
    browser.press(ENTER).await;
    assert_eq!(
        browser
            .run("return [document.activeElement.id, location.hash];")
            .await,
        json!(["main", "#/events"])
    );
    browser
        .run("document.querySelector('.skip').focus(); return true;")
        .await;
    let mut stops = Vec::new();
    for _ in 0..80 {
        browser.press(TAB).await;
        let stop = browser
            .run("const a = document.activeElement; return [a.id || `${a.tagName}:${a.textContent.trim().slice(0, 12)}`, a.matches(':focus-within') && getComputedStyle(a).outlineStyle !== 'none'];")
            .await;
        assert_eq!(stop[1], json!(true), "no visible focus on {stop}");
        let name = stop[0].as_str().unwrap().to_string();
        let at_event = name == format!("A:{}", &live[..8]);
        if stops.last() != Some(&name) {
            stops.push(name);
        }
        if at_event {
            break;
        }
    }
    let position = |name: &str| {
        stops
            .iter()
            .position(|s| s == name)
            .unwrap_or_else(|| panic!("Tab never reached {name}: {stops:?}"))
    };
    let order = [
        "A:Projects",
        "A:Events",
        "sign-out",
        "filter-project",
        "filter-source",
        "filter-type",
        "filter-phase",
        "filter-since",
        "filter-before",
        "BUTTON:Filter",
    ];
    let places: Vec<usize> = order.iter().map(|name| position(name)).collect();
    assert!(places.is_sorted(), "Tab's order: {stops:?}");
    assert!(
        stops.last().unwrap().starts_with("A:"),
        "Tab reached the event's link: {stops:?}"
    );
    browser.press(ENTER).await;
    browser
        .until(
            "the event opened from the keyboard",
            &format!("location.hash === '#/events/{live}' && document.querySelector('#phase')"),
        )
        .await;

    // The time filters: the last hour holds the event; before 2000, none.
    browser.go(&format!("{base}/#/events")).await;
    browser
        .until("the events page", "document.querySelector('#filter-since')")
        .await;
    browser
        .run("document.querySelector('#filter-since').value = '1h'; return true;")
        .await;
    browser.click("form[role=search] button[type=submit]").await;
    browser
        .until(
            "the last hour's events",
            &format!("location.hash.includes('since=1h') && {row}"),
        )
        .await;
    browser
        .run("document.querySelector('#filter-before').value = '2000-01-01T00:00'; return true;")
        .await;
    browser.click("form[role=search] button[type=submit]").await;
    browser
        .until(
            "no events before 2000",
            "location.hash.includes('before=') && document.querySelector('main .empty')",
        )
        .await;
    browser.shot("2-events-filtered").await;

    // A tenant of the pipeline project only: the long project's event is
    // neither listed nor shown.
    let account = call(
        "POST",
        &format!("{base}/v2/service-accounts"),
        &root,
        Some(json!({"apiVersion": "brigade.sh/v2", "kind": "ServiceAccount", "metadata": {"id": "tenant"}, "description": "a tenant"})),
    )
    .await;
    let tenant = account["value"].as_str().unwrap().to_string();
    call(
        "POST",
        &format!("{base}/v2/projects/pipeline/role-assignments"),
        &root,
        Some(json!({"role": "PROJECT_USER", "principal": {"type": "SERVICE_ACCOUNT", "id": "tenant"}})),
    )
    .await;
    browser.click("#sign-out").await;
    browser
        .until("the sign-in form", "document.querySelector('#token')")
        .await;
    browser.type_into("#token", &tenant).await;
    browser
        .click("form[aria-labelledby=with-token] button")
        .await;
    browser
        .until(
            "the tenant's events",
            &format!("document.querySelector('tr[data-event=\"{id}\"]')"),
        )
        .await;
    let listed = browser
        .run("return document.querySelector('main').innerText;")
        .await;
    assert!(
        !listed.as_str().unwrap().contains(&long_id[..8]),
        "{listed}"
    );
    assert!(!listed.as_str().unwrap().contains("long"), "{listed}");
    browser.go(&format!("{base}/#/events/{long_id}")).await;
    browser
        .until(
            "the other project's event refused",
            "document.querySelector('main').innerText.includes('404')",
        )
        .await;
    browser.shot("6-tenant").await;
    browser.go(&format!("{base}/#/projects")).await;
    browser
        .until(
            "the tenant's projects",
            "document.querySelector('main').innerText.includes('pipeline')",
        )
        .await;
    let projects = browser
        .run("return document.querySelector('main').innerText;")
        .await;
    assert!(
        !projects.as_str().unwrap().contains("long"),
        "another tenant's project: {projects}"
    );

    // The watch behind the list tells a tenant nothing of another's event.
    let watched = reqwest::Client::new()
        .get(format!("{base}/v2/event-watches?ids={long_id},{id}"))
        .bearer_auth(&tenant)
        .send()
        .await
        .unwrap();
    assert_eq!(watched.status().as_u16(), 200);
    let mut body = watched.bytes_stream();
    let mut seen = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        use futures_util::StreamExt as _;
        while let Some(Ok(chunk)) = body.next().await {
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    assert!(seen.contains(&id), "its own event's phase: {seen}");
    assert!(!seen.contains(&long_id), "another tenant's event: {seen}");

    // Past the API's page of 100 projects, the search still finds them.
    for i in 0..120 {
        call(
            "POST",
            &format!("{base}/v2/projects"),
            &root,
            Some(project(&format!("bulk-{i:03}"), "")),
        )
        .await;
    }
    browser.click("#sign-out").await;
    browser.sign_in_as_root().await;
    browser.go(&format!("{base}/#/projects")).await;
    browser
        .until("the projects page", "document.querySelector('#search')")
        .await;
    browser.type_into("#search", "bulk-119").await;
    browser
        .until(
            "the 122nd project found by the search",
            "[...document.querySelectorAll('main tbody tr')].map(r => r.innerText).join() .includes('bulk-119')",
        )
        .await;
    assert_eq!(
        browser
            .run("return document.querySelectorAll('main tbody tr').length;")
            .await,
        json!(1)
    );

    let _ = server.kill();
    let _ = server.wait();
}
