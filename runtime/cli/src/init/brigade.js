// The project's script: `mizzen run .` sends it a brigade.sh/cli exec event.
// The script API is Brigade's (@brigadecore/brigadier); see Mizzen's README.
const { events, Job, logger } = require("@brigadecore/brigadier");

events.on("brigade.sh/cli", "exec", async (event) => {
  logger.info(`handling event ${event.id}`);
  const build = new Job("build", "debian:latest", event);
  build.primaryContainer.command = ["sh", "-c"];
  build.primaryContainer.arguments = ["echo building"];
  const test = new Job("test", "debian:latest", event);
  test.primaryContainer.command = ["sh", "-c"];
  test.primaryContainer.arguments = ["echo testing"];
  // Both jobs run at the same time; the first failure fails the event.
  await Job.concurrent(build, test).run();
  // What the handler returns is the event's summary.
  return "build and test succeeded";
});

events.process();
