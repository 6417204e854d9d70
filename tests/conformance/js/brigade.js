// The conformance script in JavaScript: every row of ../BEHAVIOURS.md.
const { events, logger, Job, workspace, setSummary } = require("@brigadecore/brigadier");

const IMAGE = "localhost/busybox:latest";

function job(name, event, shell) {
  const j = new Job(name, IMAGE, event);
  j.primaryContainer.command = ["sh", "-c"];
  j.primaryContainer.arguments = [shell];
  return j;
}

function workspaceJob(name, event, shell) {
  const j = job(name, event, shell);
  j.primaryContainer.workspaceMountPath = "/workspace";
  return j;
}

const on = (type, handler) => events.on("conformance", type, handler);

on("match", async () => logger.info("matched match"));
events.on("conformance-wild", "*", async (event) => logger.info(`wildcard got ${event.type}`));
events.on("conformance-wild", "exact", async () => logger.info("exact handler"));
on("last-wins", async () => logger.info("first registration"));
on("last-wins", async () => logger.info("second registration"));

on("event-fields", async (e) => {
  const team = (e.labels || {}).team;
  logger.info(`id=${e.id} project=${e.project.id} source=${e.source} type=${e.type} label=${team} title=${e.shortTitle}`);
});

on("payload", async (e) => {
  const payload = JSON.parse(e.payload);
  logger.info(`name=${payload.name} count=${payload.count}`);
});

on("log-levels", async () => {
  logger.debug("level debug");
  logger.info("level info");
  logger.warn("level warn");
  logger.error("level error");
});

on("summary", async () => "conformance summary");

on("summary-limit", async () => {
  try {
    setSummary("x".repeat(4097));
  } catch (e) {
    logger.info(`summary refused: ${e.code}`);
  }
  setSummary("short");
});

on("job-success", async (e) => {
  await job("hello", e, "echo hello from job").run();
  logger.info("job hello succeeded");
});

on("job-failure", async (e) => {
  await job("fails", e, "exit 3").run();
});

on("job-failure-caught", async (e) => {
  try {
    await job("fails", e, "exit 3").run();
  } catch (err) {
    logger.info(`caught phase=${err.phase} exitCode=${err.exitCode}`);
  }
});

on("job-timeout", async (e) => {
  const sleeper = job("sleeper", e, "sleep 60");
  sleeper.timeoutSeconds = 1;
  try {
    await sleeper.run();
  } catch (err) {
    logger.info(`caught phase=${err.phase}`);
  }
});

on("job-fallible", async (e) => {
  const fails = job("fails", e, "exit 3");
  fails.fallible = true;
  await fails.run();
  logger.info("fallible job done");
});

on("concurrent", async (e) => {
  const waiter = workspaceJob(
    "waiter",
    e,
    "for i in $(seq 1 300); do [ -f /workspace/signal ] && exit 0; sleep 0.1; done; exit 1",
  );
  const signaller = workspaceJob("signaller", e, "touch /workspace/signal");
  await Job.concurrent(waiter, signaller).run();
  logger.info("concurrent done");
});

on("sequence", async (e) => {
  await Job.sequence(
    workspaceJob("one", e, "echo 1 >> /workspace/order"),
    workspaceJob("two", e, "echo 2 >> /workspace/order"),
  ).run();
  const order = workspace.readFile("order").trim().split("\n").join(",");
  logger.info(`order=${order}`);
});

on("sequence-stops", async (e) => {
  try {
    await Job.sequence(job("fails", e, "exit 1"), job("never", e, "echo never")).run();
  } catch (err) {
    logger.info(`sequence stopped: ${err.message}`);
  }
});

on("logs", async (e) => {
  const talker = job("talker", e, "echo one; echo two");
  await talker.run();
  const logs = await talker.logs();
  logger.info(`logs=${logs.split("\n").join("|")}`);
});

on("secrets", async (e) => logger.info(`token length=${e.project.secrets.token.length}`));

on("script-secrets", async (e) => {
  const secrets = e.project.secrets;
  logger.info(`visible=${"visible" in secrets} hidden=${"hidden" in secrets}`);
});

on("workspace", async () => {
  workspace.writeFile("notes/a.txt", "hello workspace");
  const read = workspace.readFile("notes/a.txt");
  const entries = workspace.list("notes").map((entry) => entry.name).join(",");
  workspace.remove("notes");
  const after = workspace.list().map((entry) => entry.name).join(",");
  logger.info(`read=${read} entries=${entries} after=${after}`);
});

on("workspace-refused", async () => {
  try {
    workspace.readFile("../outside.txt");
  } catch (err) {
    logger.info(`refused: ${err.code}`);
  }
});

on("workspace-not-configured", async () => {
  try {
    workspace.readFile("a.txt");
  } catch (err) {
    logger.info(`workspace: ${err.code}`);
  }
});

on("throw", async () => {
  throw new Error("boom from conformance");
});

on("panic", async () => {
  setTimeout(() => {
    throw new Error("panic from conformance");
  }, 0);
});

on("memory", async () => {
  const kept = [];
  for (let i = 0; i < 256; i++) {
    const block = new Uint8Array(1024 * 1024);
    block.fill(i);
    kept.push(block);
  }
  logger.info(`kept ${kept.length} MiB`);
});

on("cpu", async () => {
  for (;;) {}
});

on("exit", async () => process.exit(3));

on("sleep", async () => {
  await new Promise((resolve) => setTimeout(resolve, 50));
  logger.info("slept");
});

events.process();
