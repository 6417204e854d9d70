const { events, Job } = require("@brigadecore/brigadier");

// A container job writes files into the workspace; Wasm jobs (a checksum tool
// built from tool/ into tools/checksum.wasm, run in the sandbox in about a
// millisecond) write a manifest of them and verify it, concurrently with
// each other; a container job reads the manifest back.
events.on("brigade.sh/cli", "exec", async (event) => {
  const build = new Job("build", "debian:latest", event);
  build.primaryContainer.workspaceMountPath = "/work";
  build.primaryContainer.command = ["bash", "-c"];
  build.primaryContainer.arguments = [
    "mkdir -p /work/dist && for n in 1 2 3; do echo \"artifact $n\" > /work/dist/part-$n.txt; done",
  ];
  await build.run();

  const manifest = new Job("manifest", "wasm:tools/checksum.wasm", event);
  manifest.primaryContainer.workspaceMountPath = "/work";
  manifest.primaryContainer.arguments = ["write", "/work/dist", "/work/MANIFEST"];
  await manifest.run();

  const checks = ["part-1.txt", "part-2.txt", "part-3.txt"].map((file, i) => {
    const check = new Job(`verify-${i + 1}`, "wasm:tools/checksum.wasm", event);
    check.primaryContainer.workspaceMountPath = "/work";
    check.primaryContainer.arguments = ["verify", "/work/MANIFEST", `/work/dist/${file}`];
    return check;
  });
  await Job.concurrent(...checks).run();

  const publish = new Job("publish", "debian:latest", event);
  publish.primaryContainer.workspaceMountPath = "/work";
  publish.primaryContainer.command = ["cat", "/work/MANIFEST"];
  await publish.run();
  return "manifest written and verified by Wasm jobs";
});

events.process();
