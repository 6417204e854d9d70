// The project's script: `mizzen run .` sends it a brigade.sh/cli exec event.
// The script API is Brigade's (@brigadecore/brigadier); Mizzen strips the
// types (it does not check them) and runs the JavaScript.
import { events, Event, Job, logger } from "@brigadecore/brigadier";

function shell(name: string, event: Event, script: string): Job {
  const job = new Job(name, "debian:latest", event);
  job.primaryContainer.command = ["sh", "-c"];
  job.primaryContainer.arguments = [script];
  return job;
}

events.on("brigade.sh/cli", "exec", async (event: Event): Promise<string> => {
  logger.info(`handling event ${event.id}`);
  // Both jobs run at the same time; the first failure fails the event.
  await Job.concurrent(shell("build", event, "echo building"), shell("test", event, "echo testing")).run();
  // What the handler returns is the event's summary.
  return "build and test succeeded";
});

events.process();
