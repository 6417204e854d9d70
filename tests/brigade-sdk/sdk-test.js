// Drives a running `mizzen server` with Brigade's own JavaScript SDK,
// @brigadecore/brigade-sdk, exactly as a Brigade v2 client would: the SDK
// builds every path, body, status-code check and SSE stream itself.
//
//   MIZZEN_API_ADDRESS=http://127.0.0.1:PORT MIZZEN_API_TOKEN=... node sdk-test.js
//
// One line per step on stdout; exit 0 only when every step checked its
// outcome, otherwise the error (the SDK puts the API's reason in its
// message) on stderr and exit 1. runtime/cli/tests/brigade_sdk.rs runs it.

"use strict";

const sdk = require("@brigadecore/brigade-sdk");

const { core } = sdk;

const PROJECT_ID = "sdk-hello";
const HELLO = "Hello from the SDK test";
const SECRET_KEY = "greeting";
const SECRET_VALUE = "sdk-test-secret-value";
const SUMMARY = "sdk test passed, secret seen";
const WATCH_TIMEOUT_MS = 60_000;
const LOGS_TIMEOUT_MS = 30_000;

const BRIGADE_JS = `const { events } = require("@brigadecore/brigadier");

events.on("brigade.sh/cli", "exec", async event => {
  console.log(${JSON.stringify(HELLO)});
  const seen = event.project.secrets[${JSON.stringify(SECRET_KEY)}] === ${JSON.stringify(SECRET_VALUE)};
  return seen ? ${JSON.stringify(SUMMARY)} : "the secret did not reach the worker";
});

events.process();
`;

function env(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set`);
  }
  return value;
}

function check(condition, what, actual) {
  if (!condition) {
    const shown = actual === undefined ? "" : `: got ${JSON.stringify(actual)}`;
    throw new Error(`check failed: ${what}${shown}`);
  }
}

function step(n, text) {
  console.log(`step ${n}: ${text}`);
}

/**
 * Follows an SDK ServerSentEventStream until `onItem` says it is finished
 * (returns true), the server's `done` frame arrives, or the time runs out.
 * Resolves with { items, done, reconnects }.
 */
function follow(stream, what, timeoutMs, onItem) {
  return new Promise((resolve, reject) => {
    const items = [];
    let reconnects = 0;
    let settled = false;
    const finish = (err, done) => {
      if (settled) {
        return;
      }
      settled = true;
      clearTimeout(timer);
      stream.close();
      if (err) {
        reject(err);
      } else {
        resolve({ items, done, reconnects });
      }
    };
    const timer = setTimeout(
      () =>
        finish(
          new Error(
            `${what}: no end after ${timeoutMs / 1000} s; received ${JSON.stringify(items)}`
          )
        ),
      timeoutMs
    );
    stream.onData((item) => {
      items.push(item);
      try {
        if (onItem(item)) {
          finish(null, false);
        }
      } catch (e) {
        finish(e);
      }
    });
    stream.onDone(() => finish(null, true));
    stream.onError((e) => finish(new Error(`${what}: ${e.message}`)));
    stream.onReconnecting(() => {
      // The server closed the stream without a `done` frame and the
      // EventSource is about to reconnect: record it, it is reported.
      reconnects += 1;
    });
    stream.onClosed(() => finish(new Error(`${what}: the stream was closed`)));
  });
}

async function main() {
  const address = env("MIZZEN_API_ADDRESS").replace(/\/+$/, "");
  const token = env("MIZZEN_API_TOKEN");
  const opts = { allowInsecureConnections: false };

  const system = new sdk.system.APIClient(address, token, opts);
  const authn = new sdk.authn.APIClient(address, token, opts);
  const projects = new core.ProjectsClient(address, token, opts);
  const events = new core.EventsClient(address, token, opts);

  // 1. Who are we? (and is the server there)
  const ping = await system.ping();
  check(typeof ping.version === "string" && ping.version !== "", "ping has a version", ping);
  const me = await authn.whoAmI();
  check(String(me.type) === "ROOT" && me.id === "root", "whoAmI is root", me);
  step(1, `ping: version ${ping.version}; whoAmI: ${me.type} ${me.id}`);

  // 2. A project subscribing to brigade.sh/cli exec, with an inline script.
  const project = await projects.create({
    metadata: { id: PROJECT_ID },
    description: "Created by the Brigade SDK compatibility test",
    spec: {
      eventSubscriptions: [{ source: "brigade.sh/cli", types: ["exec"], labels: {} }],
      workerTemplate: {
        logLevel: core.LogLevel.Debug,
        defaultConfigFiles: { "brigade.js": BRIGADE_JS },
      },
    },
  });
  check(project && project.metadata && project.metadata.id === PROJECT_ID, "created project's id", project);
  check(
    project.spec.workerTemplate.defaultConfigFiles["brigade.js"] === BRIGADE_JS,
    "created project keeps its brigade.js",
    project.spec
  );
  const fetched = await projects.get(PROJECT_ID);
  check(fetched.metadata.id === PROJECT_ID, "project get", fetched);
  step(2, `created project ${project.metadata.id}`);

  // 3. A secret, set and listed (its value redacted).
  const secrets = projects.secrets();
  await secrets.set(PROJECT_ID, { key: SECRET_KEY, value: SECRET_VALUE });
  const secretList = await secrets.list(PROJECT_ID);
  check(Array.isArray(secretList.items), "secret list has items", secretList);
  const listed = secretList.items.find((s) => s.key === SECRET_KEY);
  check(listed !== undefined, `secret ${SECRET_KEY} is listed`, secretList);
  check(listed.value !== SECRET_VALUE, "the secret's value is not returned in clear", listed);
  check(!JSON.stringify(secretList).includes(SECRET_VALUE), "the value appears nowhere in the list", secretList);
  step(3, `set secret ${SECRET_KEY}; listed as ${JSON.stringify(listed.value)}`);

  // 4. An event for the project.
  const created = await events.create({
    projectID: PROJECT_ID,
    source: "brigade.sh/cli",
    type: "exec",
    labels: { suite: "brigade-sdk" },
    shortTitle: "SDK test event",
  });
  check(created && Array.isArray(created.items) && created.items.length === 1, "one event created", created);
  const eventID = created.items[0].metadata && created.items[0].metadata.id;
  check(typeof eventID === "string" && eventID !== "", "the created event has an id", created.items[0]);
  step(4, `created event ${eventID}`);

  // 5. The event, read back.
  const event = await events.get(eventID);
  check(event.metadata.id === eventID, "event get: id", event.metadata);
  check(event.projectID === PROJECT_ID, "event get: projectID", event.projectID);
  check(event.source === "brigade.sh/cli" && event.type === "exec", "event get: source and type", event);
  check(event.labels && event.labels.suite === "brigade-sdk", "event get: labels", event.labels);
  check(event.worker && event.worker.status && typeof event.worker.status.phase === "string", "event get: worker phase", event.worker);
  step(5, `got event ${eventID} (worker ${event.worker.status.phase})`);

  // 6. The worker's status, watched over SSE until it is terminal.
  const workers = events.workers();
  const terminal = new Set(core.WorkerPhasesTerminal);
  const watched = await follow(workers.watchStatus(eventID), "watching the worker status", WATCH_TIMEOUT_MS, (status) =>
    terminal.has(status.phase)
  );
  const phases = watched.items.map((s) => s.phase);
  const last = watched.items[watched.items.length - 1];
  check(last !== undefined, "the watch delivered a status", watched);
  check(last.phase === core.WorkerPhase.Succeeded, "the worker SUCCEEDED", phases);
  check(last.started && last.ended, "the final status has started and ended", last);
  check(watched.reconnects === 0, "the watch stream did not need reconnecting", watched.reconnects);
  const status = await workers.getStatus(eventID);
  check(status.phase === core.WorkerPhase.Succeeded, "getStatus agrees", status);
  step(6, `worker phases watched: ${phases.join(" -> ")}`);

  // 7. The worker's logs, streamed over SSE to the server's `done`.
  const logs = await follow(events.logs().stream(eventID), "streaming the worker's logs", LOGS_TIMEOUT_MS, () => false);
  check(logs.done, "the log stream ends with done", logs);
  check(logs.reconnects === 0, "the log stream did not need reconnecting", logs.reconnects);
  const lines = logs.items.map((entry) => entry.message);
  check(
    lines.some((line) => typeof line === "string" && line.includes(HELLO)),
    `the logs contain "${HELLO}"`,
    lines
  );
  check(!lines.some((line) => String(line).includes(SECRET_VALUE)), "the logs do not show the secret", lines);
  step(7, `read ${lines.length} log line(s), hello line present`);

  // 8. Events, filtered by project.
  const list = await events.list({ projectID: PROJECT_ID });
  check(Array.isArray(list.items), "event list has items", list);
  check(list.items.length === 1 && list.items[0].metadata.id === eventID, "exactly our event is listed", list.items);
  check(list.items.every((e) => e.projectID === PROJECT_ID), "every listed event is the project's", list.items);
  check(list.items[0].worker.status.phase === core.WorkerPhase.Succeeded, "listed event SUCCEEDED", list.items[0].worker);
  check(list.items[0].summary === SUMMARY, "the worker's summary (and the secret reached it)", list.items[0].summary);
  const other = await events.list({ projectID: "no-such-project" });
  check(Array.isArray(other.items) && other.items.length === 0, "another project's filter lists nothing", other);
  step(8, `listed ${list.items.length} event(s) for ${PROJECT_ID}; summary ${JSON.stringify(list.items[0].summary)}`);

  // 9. Clean up: the event, then the project; both are gone afterwards.
  await events.delete(eventID);
  await expectNotFound(() => events.get(eventID), "the deleted event");
  await projects.delete(PROJECT_ID);
  await expectNotFound(() => projects.get(PROJECT_ID), "the deleted project");
  step(9, `deleted event ${eventID} and project ${PROJECT_ID}`);
}

async function expectNotFound(call, what) {
  let error;
  try {
    const found = await call();
    error = new Error(`check failed: ${what} is still there: ${JSON.stringify(found)}`);
  } catch (e) {
    // The SDK turns a 404 into `<type> "<id>" not found.`
    check(/not found/.test(e.message) && !/undefined/.test(e.message), `${what} is reported not found`, e.message);
  }
  if (error) {
    throw error;
  }
}

main().then(
  () => {
    console.log("ok: every step passed");
    process.exit(0);
  },
  (e) => {
    console.error(`FAILED: ${e && e.stack ? e.stack : e}`);
    process.exit(1);
  }
);
