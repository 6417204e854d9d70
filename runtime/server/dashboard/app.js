// Mizzen's dashboard: a page of the server that reads and acts through the
// same REST API as the CLI, with the same token, so the server's roles
// decide what each person sees and may do. No framework and no build step:
// the elements are made with the DOM's own calls, and every text from the
// server goes in as text (textContent), never as markup.

const TOKEN_KEY = "mizzen.token";
const main = document.getElementById("main");
const statusLine = document.getElementById("status");
const TERMINAL = new Set(["SUCCEEDED", "FAILED", "ABORTED", "CANCELED", "TIMED_OUT", "SCHEDULING_FAILED", "UNKNOWN"]);

// What the current view runs in the background (polls, log streams), stopped
// when the view changes.
let stops = [];
function onLeave(stop) { stops.push(stop); }
function leave() { for (const stop of stops) stop(); stops = []; }

function token() { return sessionStorage.getItem(TOKEN_KEY); }

function say(text, isError = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", isError);
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (token() && !headers.Authorization) headers.Authorization = `Bearer ${token()}`;
  if (options.body !== undefined && typeof options.body !== "string") {
    headers["Content-Type"] = "application/json";
    options = { ...options, body: JSON.stringify(options.body) };
  }
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    location.hash = "#/sign-in";
    throw new ApiError(401, "signed out: the token is no longer valid");
  }
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = text; }
  if (!response.ok) {
    const reason = (body && body.reason) || (body && body.message) || text || response.statusText;
    throw new ApiError(response.status, `${response.status}: ${reason}`);
  }
  return body;
}

// el("a", {href: "#/x", class: "c"}, "text", child, ...)
function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function show(title, ...content) {
  main.replaceChildren(el("h1", {}, title), ...content);
  document.title = `${title} · Mizzen`;
  main.focus();
}

function phaseOf(event) { return (event.worker && event.worker.status && event.worker.status.phase) || "PENDING"; }
function phaseBadge(phase) { return el("span", { class: `phase phase-${phase}` }, phase); }
function when(text) { return text ? new Date(text).toLocaleString() : ""; }
function seconds(from, to) {
  if (!from) return "";
  const ms = (to ? new Date(to) : new Date()) - new Date(from);
  return `${(ms / 1000).toFixed(1)} s`;
}
function table(headings, rows, caption) {
  return el("div", { class: "table" },
    el("table", {},
      caption ? el("caption", { class: "skip" }, caption) : null,
      el("thead", {}, el("tr", {}, headings.map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, rows)));
}

// ----- signing in ---------------------------------------------------------------

function signIn() {
  document.getElementById("nav").hidden = true;
  const tokenInput = el("input", { id: "token", type: "password", autocomplete: "off", required: true });
  const passwordInput = el("input", { id: "password", type: "password", autocomplete: "current-password", required: true });
  const withToken = el("form", { "aria-labelledby": "with-token", onsubmit: async (e) => {
    e.preventDefault();
    await start(tokenInput.value);
  } },
    el("h2", { id: "with-token" }, "With a service account's token"),
    el("label", { for: "token" }, "Token", tokenInput),
    el("button", { class: "primary", type: "submit" }, "Sign in"));
  const asRoot = el("form", { "aria-labelledby": "as-root", onsubmit: async (e) => {
    e.preventDefault();
    try {
      const session = await api("/v2/sessions?root=true", {
        method: "POST",
        headers: { Authorization: `Basic ${btoa(`root:${passwordInput.value}`)}` },
      });
      await start(session.value);
    } catch (error) { say(`Sign-in failed: ${error.message}`, true); }
  } },
    el("h2", { id: "as-root" }, "As root"),
    el("label", { for: "password" }, "Root's password", passwordInput),
    el("button", { class: "primary", type: "submit" }, "Sign in as root"));
  show("Sign in", withToken, asRoot);
}

async function start(value) {
  sessionStorage.setItem(TOKEN_KEY, value);
  try {
    await whoami();
    say("");
    location.hash = "#/events";
  } catch (error) {
    sessionStorage.removeItem(TOKEN_KEY);
    say(`Sign-in failed: ${error.message}`, true);
  }
}

async function whoami() {
  const me = await api("/v2/whoami");
  document.getElementById("who").textContent = me.id ? `${me.type || ""} ${me.id}`.trim() : "";
  document.getElementById("nav").hidden = false;
}

// ----- projects -----------------------------------------------------------------

// The projects page reads at most this many pages of 100: a person sees
// ten thousand projects before the page would take long to load.
const MAX_PROJECT_PAGES = 100;

async function projects() {
  const search = el("input", { id: "search", type: "search", placeholder: "id or description" });
  const body = el("tbody");
  // Every project the person may see, read a page of 100 at a time, so
  // that the search covers them all (the API has no search of its own).
  const list = { items: [] };
  let next = "";
  for (let pages = 0; pages < MAX_PROJECT_PAGES; pages++) {
    const page = await api(`/v2/projects?limit=100${next ? `&continue=${encodeURIComponent(next)}` : ""}`);
    list.items.push(...page.items);
    next = page.metadata && page.metadata.continue;
    if (!next) break;
  }
  const render = () => {
    const needle = search.value.toLowerCase();
    body.replaceChildren(...list.items
      .filter((p) => !needle || p.metadata.id.includes(needle) || (p.description || "").toLowerCase().includes(needle))
      .map((p) => el("tr", {},
        el("td", {}, el("a", { href: `#/projects/${encodeURIComponent(p.metadata.id)}` }, p.metadata.id)),
        el("td", {}, p.description || ""),
        el("td", {}, (p.spec.eventSubscriptions || []).map((s) => `${s.source}: ${(s.types || []).join(", ")}`).join("; ")))));
  };
  search.addEventListener("input", render);
  render();
  show("Projects",
    el("form", { role: "search", onsubmit: (e) => e.preventDefault() }, el("label", { for: "search" }, "Search", search)),
    el("div", { class: "table" }, el("table", {},
      el("thead", {}, el("tr", {}, ["Project", "Description", "Subscriptions"].map((h) => el("th", { scope: "col" }, h)))),
      body)));
}

async function project(id) {
  const p = await api(`/v2/projects/${encodeURIComponent(id)}`);
  const secrets = await api(`/v2/projects/${encodeURIComponent(id)}/secrets`).catch(() => ({ items: [] }));
  const events = await api(`/v2/events?projectID=${encodeURIComponent(id)}&limit=20`);
  show(`Project ${id}`,
    el("p", {}, p.description || ""),
    el("h2", {}, "Subscriptions"),
    el("ul", {}, (p.spec.eventSubscriptions || []).map((s) => el("li", {}, `${s.source}: ${(s.types || []).join(", ")}`))),
    el("h2", {}, "Secrets"),
    secrets.items.length ? el("ul", {}, secrets.items.map((s) => el("li", {}, s.key))) : el("p", {}, "None (values are never shown)."),
    el("h2", {}, "Recent events"),
    eventRows(events.items),
    el("p", {}, el("a", { href: `#/events?project=${encodeURIComponent(id)}` }, "All of this project's events")));
}

// ----- events -------------------------------------------------------------------

function eventRows(items) {
  if (!items.length) return el("p", { class: "empty" }, "No events.");
  return table(["Event", "Project", "Source", "Type", "Phase", "Created", "Took"],
    items.map((e) => el("tr", { "data-event": e.metadata.id },
      el("td", {}, el("a", { href: `#/events/${e.metadata.id}` }, e.metadata.id.slice(0, 8))),
      el("td", {}, e.projectID),
      el("td", {}, e.source),
      el("td", {}, e.type),
      el("td", {}, phaseBadge(phaseOf(e))),
      el("td", {}, when(e.metadata.created)),
      el("td", {}, seconds(e.worker && e.worker.status.started, e.worker && e.worker.status.ended)))),
    "Events");
}

// The event list's time ranges: a label and how far back, in milliseconds.
const SINCE = {
  "": ["at any time"],
  "1h": ["in the last hour", 3600e3],
  "24h": ["in the last day", 86400e3],
  "7d": ["in the last 7 days", 7 * 86400e3],
  "30d": ["in the last 30 days", 30 * 86400e3],
};

async function events(params) {
  const filters = {
    project: params.get("project") || "",
    source: params.get("source") || "",
    type: params.get("type") || "",
    phase: params.get("phase") || "",
    since: params.get("since") || "",
    before: params.get("before") || "",
  };
  const input = (name, label) => el("label", { for: `filter-${name}` }, label,
    el("input", { id: `filter-${name}`, name, value: filters[name] }));
  const phase = el("select", { id: "filter-phase", name: "phase" },
    ["", "PENDING", "STARTING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELED", "ABORTED", "TIMED_OUT"]
      .map((p) => el("option", { value: p, selected: p === filters.phase }, p || "any")));
  const since = el("select", { id: "filter-since", name: "since" },
    Object.entries(SINCE).map(([value, [label]]) => el("option", { value, selected: value === filters.since }, label)));
  const before = el("input", { id: "filter-before", name: "before", type: "datetime-local", value: filters.before });
  const filterForm = el("form", { role: "search", "aria-label": "Filter events", onsubmit: (e) => {
    e.preventDefault();
    const data = new URLSearchParams(new FormData(filterForm));
    for (const [k, v] of [...data]) if (!v) data.delete(k);
    location.hash = `#/events?${data}`;
  } }, input("project", "Project"), input("source", "Source"), input("type", "Type"),
    el("label", { for: "filter-phase" }, "Phase", phase),
    el("label", { for: "filter-since" }, "Accepted", since),
    el("label", { for: "filter-before" }, "Accepted before", before),
    el("button", { type: "submit" }, "Filter"));

  const query = new URLSearchParams({ limit: "20" });
  if (filters.project) query.set("projectID", filters.project);
  if (filters.source) query.set("source", filters.source);
  if (filters.type) query.set("type", filters.type);
  if (filters.phase) query.set("workerPhases", filters.phase);
  // Times go to the server in UTC; `before` is the person's local time.
  const range = SINCE[filters.since] && SINCE[filters.since][1];
  if (range) query.set("createdAfter", new Date(Date.now() - range).toISOString());
  const beforeTime = filters.before && new Date(filters.before);
  if (beforeTime && !isNaN(beforeTime)) query.set("createdBefore", beforeTime.toISOString());
  const pages = [null];
  const list = el("div");
  const more = el("button", { type: "button", hidden: true }, "Next page");
  let next = null;
  // Live: the server says (Server-Sent Events) when a listed event's phase
  // changes, and when a newer event is accepted (then the page is read
  // again and watched anew).
  let watch = null;
  const follow = async (ids) => {
    if (watch) watch.abort();
    const mine = new AbortController();
    watch = mine;
    const q = new URLSearchParams({ ids: ids.join(",") });
    if (filters.project) q.set("projectID", filters.project);
    await readEvents(`/v2/event-watches?${q}`, mine.signal, (message) => {
      if (message.kind === "phase") {
        const row = list.querySelector(`tr[data-event="${CSS.escape(message.id)}"]`);
        if (row) {
          row.cells[4].replaceChildren(phaseBadge(message.status.phase));
          row.cells[6].textContent = seconds(message.status.started, message.status.ended);
        }
      } else if (message.kind === "newer" && pages.length === 1) {
        load(null).catch((e) => say(e.message, true));
      }
    });
  };
  const load = async (from) => {
    const q = new URLSearchParams(query);
    if (from) q.set("continue", from);
    const page = await api(`/v2/events?${q}`);
    list.replaceChildren(eventRows(page.items));
    next = page.metadata && page.metadata.continue;
    more.hidden = !next;
    follow(page.items.map((e) => e.metadata.id)).catch(() => {});
  };
  onLeave(() => { if (watch) watch.abort(); });
  more.addEventListener("click", async () => { pages.push(next); await load(next); });
  await load(null);
  show("Events", filterForm, createForm(filters.project), list, more);
}

// Reads a Server-Sent Events stream with the token (EventSource cannot
// send one), calling `each` with every message's JSON, until `signal`.
async function readEvents(path, signal, each) {
  const response = await fetch(path, { headers: { Authorization: `Bearer ${token()}` }, signal });
  if (!response.ok) return;
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let rest = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    rest += decoder.decode(value, { stream: true });
    const frames = rest.split("\n\n");
    rest = frames.pop();
    for (const frame of frames) {
      const data = frame.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (!data) continue;
      try { each(JSON.parse(data)); } catch { /* a keep-alive or a frame that is not ours */ }
    }
  }
}

function createForm(projectId) {
  const project = el("input", { id: "new-project", name: "project", value: projectId, required: true });
  const source = el("input", { id: "new-source", name: "source", value: "brigade.sh/cli", required: true });
  const type = el("input", { id: "new-type", name: "type", value: "exec", required: true });
  const payload = el("textarea", { id: "new-payload", name: "payload", rows: 1 });
  return el("details", {}, el("summary", {}, "Create an event"),
    el("form", { "aria-label": "Create an event", onsubmit: async (e) => {
      e.preventDefault();
      try {
        const created = await api("/v2/events", { method: "POST", body: {
          apiVersion: "brigade.sh/v2", kind: "Event", projectID: project.value,
          source: source.value, type: type.value, payload: payload.value,
        } });
        const n = created.items.length;
        say(n ? `Created event ${created.items[0].metadata.id}` : "No project subscribes to that event: none created");
        if (n === 1) location.hash = `#/events/${created.items[0].metadata.id}`;
      } catch (error) { say(`Not created: ${error.message}`, true); }
    } },
      el("label", { for: "new-project" }, "Project", project),
      el("label", { for: "new-source" }, "Source", source),
      el("label", { for: "new-type" }, "Type", type),
      el("label", { for: "new-payload" }, "Payload", payload),
      el("button", { class: "primary", type: "submit" }, "Create")));
}

// ----- one event ------------------------------------------------------------------

async function event(id) {
  const details = el("dl");
  const timeline = el("div", { class: "timeline", role: "list", "aria-label": "Jobs" });
  const summary = el("p");
  const artifacts = el("div");
  const logTarget = el("select", { id: "log-of" }, el("option", { value: "" }, "worker"));
  const log = el("pre", { class: "log", id: "log", tabindex: "0", "aria-label": "Log", "aria-live": "off" });
  const actions = el("div", { class: "actions" });
  let latest = null;

  const render = (e) => {
    latest = e;
    const status = e.worker.status;
    details.replaceChildren(
      el("dt", {}, "Project"), el("dd", {}, el("a", { href: `#/projects/${encodeURIComponent(e.projectID)}` }, e.projectID)),
      el("dt", {}, "Source / type"), el("dd", {}, `${e.source} / ${e.type}`),
      el("dt", {}, "Phase"), el("dd", { id: "phase" }, phaseBadge(status.phase)),
      el("dt", {}, "Created"), el("dd", {}, when(e.metadata.created)),
      el("dt", {}, "Queued"), el("dd", {}, seconds(e.metadata.created, status.started || status.ended)),
      el("dt", {}, "Ran"), el("dd", {}, seconds(status.started, status.ended)));
    summary.textContent = e.summary ? `Summary: ${e.summary}` : "";
    const jobs = e.worker.jobs || [];
    const begin = new Date(status.started || e.metadata.created).getTime();
    const ends = jobs.map((j) => new Date(j.status.ended || Date.now()).getTime());
    const end = Math.max(new Date(status.ended || Date.now()).getTime(), ...ends, begin + 1);
    timeline.replaceChildren(...jobs.flatMap((j) => {
      const from = new Date(j.status.started || j.metadata?.created || begin).getTime();
      const to = j.status.ended ? new Date(j.status.ended).getTime() : Date.now();
      const left = ((from - begin) / (end - begin)) * 100;
      const width = Math.max(((to - from) / (end - begin)) * 100, 0.5);
      const text = `${j.name}: ${j.status.phase}, ${seconds(j.status.started, j.status.ended)}`;
      const bar = el("div", { class: `bar phase-${j.status.phase}`, role: "img", "aria-label": text });
      // Through the CSSOM: the page's policy allows no inline style attribute.
      bar.style.left = `${left.toFixed(2)}%`;
      bar.style.width = `${width.toFixed(2)}%`;
      return [
        el("span", { role: "listitem" }, j.name, " ", phaseBadge(j.status.phase)),
        el("div", { class: "track", title: text }, bar),
      ];
    }));
    const known = new Set([...logTarget.options].map((o) => o.value));
    for (const j of jobs) {
      const containers = [j.name, ...Object.keys((j.spec && j.spec.sidecarContainers) || {})];
      for (const c of containers) {
        const value = `${j.name}/${c}`;
        if (!known.has(value)) logTarget.append(el("option", { value }, c === j.name ? `job ${j.name}` : `job ${j.name} / ${c}`));
      }
    }
    const ended = TERMINAL.has(status.phase);
    actions.replaceChildren(...[
      ended ? null : el("button", { type: "button", id: "cancel", onclick: () => act("cancel") }, "Cancel"),
      ended ? el("button", { type: "button", id: "retry", onclick: () => act("retry") }, "Retry") : null,
      el("button", { type: "button", id: "clone", onclick: () => act("clone") }, "Clone"),
    ].filter(Boolean));
  };

  const act = async (what) => {
    try {
      if (what === "cancel") {
        await api(`/v2/events/${id}/cancellation`, { method: "PUT" });
        say("Canceled");
      } else {
        const made = await api(`/v2/events/${id}/${what === "retry" ? "retries" : "clones"}`, { method: "POST" });
        location.hash = `#/events/${made.metadata.id}`;
      }
    } catch (error) { say(`${what} failed: ${error.message}`, true); }
  };

  // The log, followed while the event runs: the API's stream of JSON lines
  // read through fetch (which, unlike EventSource, sends the token).
  let reader = null;
  const follow = async () => {
    if (reader) reader.cancel().catch(() => {});
    log.textContent = "";
    const [job, container] = logTarget.value ? logTarget.value.split("/") : ["", ""];
    const q = new URLSearchParams({ follow: "true" });
    if (job) { q.set("job", job); q.set("container", container); }
    const response = await fetch(`/v2/events/${id}/logs?${q}`, { headers: { Authorization: `Bearer ${token()}` } });
    if (!response.ok) { log.textContent = `(no log: ${response.status})`; return; }
    const mine = response.body.getReader();
    reader = mine;
    const decoder = new TextDecoder();
    let rest = "";
    for (;;) {
      const { value, done } = await mine.read().catch(() => ({ done: true }));
      if (done) break;
      rest += decoder.decode(value, { stream: true });
      const lines = rest.split("\n");
      rest = lines.pop();
      const text = lines.filter(Boolean).map((l) => { try { return JSON.parse(l).message; } catch { return l; } });
      if (text.length) {
        const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
        log.append(document.createTextNode(text.join("\n") + "\n"));
        if (atEnd) log.scrollTop = log.scrollHeight;
      }
    }
  };
  onLeave(() => { if (reader) reader.cancel().catch(() => {}); });
  logTarget.addEventListener("change", () => follow().catch((e) => say(e.message, true)));

  render(await api(`/v2/events/${id}`));
  const kept = await api(`/v2/events/${id}/artifacts`).catch(() => ({ items: [] }));
  artifacts.replaceChildren(...(kept.items || []).map((a) => el("p", {},
    el("a", { href: `/v2/events/${id}/artifacts/${encodeURIComponent(a.name)}/archive`, download: `${a.name}.tar` }, a.name))));
  show(`Event ${id}`, details, actions, summary,
    el("h2", {}, "Jobs"), timeline,
    el("h2", {}, "Log"), el("label", { for: "log-of" }, "Of", logTarget), log,
    el("h2", {}, "Artifacts"), artifacts);
  follow().catch((e) => say(e.message, true));
  const timer = setInterval(async () => {
    if (latest && TERMINAL.has(latest.worker.status.phase)) return;
    try { render(await api(`/v2/events/${id}`)); } catch (error) { say(error.message, true); }
  }, 1000);
  onLeave(() => clearInterval(timer));
}

// ----- routing --------------------------------------------------------------------

async function route() {
  leave();
  const [path, query] = (location.hash.slice(1) || "/events").split("?");
  const params = new URLSearchParams(query || "");
  if (!token() || path === "/sign-in") { signIn(); return; }
  try {
    if (document.getElementById("nav").hidden) await whoami();
    const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
    if (parts[0] === "projects" && parts[1]) await project(parts[1]);
    else if (parts[0] === "projects") await projects();
    else if (parts[0] === "events" && parts[1]) await event(parts[1]);
    else await events(params);
  } catch (error) {
    show("Not available", el("p", { class: "error" }, error.message));
  }
}

document.getElementById("sign-out").addEventListener("click", async () => {
  await api("/v2/session", { method: "DELETE" }).catch(() => {});
  sessionStorage.removeItem(TOKEN_KEY);
  location.hash = "#/sign-in";
});
// The skip link moves focus to the page's content; followed as a link it
// would change the hash, which is the route.
document.querySelector(".skip").addEventListener("click", (e) => {
  e.preventDefault();
  main.focus();
});
window.addEventListener("hashchange", route);
route();
