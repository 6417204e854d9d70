const { events, Job } = require("@brigadecore/brigadier");

console.log("Hello, Git!");

events.on("brigade.sh/cli", "exec", async event => {
  const job = new Job("list-source", "debian", event);
  job.primaryContainer.sourceMountPath = "/src";
  job.primaryContainer.workingDirectory = "/src";
  job.primaryContainer.command = ["ls"];
  job.primaryContainer.arguments = ["-a", ".brigade"];
  await job.run();
  return "listed " + (await job.logs()).split("\n").length + " entries of the source";
});

events.process();
