// Exercises the declarations the way Brigade scripts use the API; `npm run
// typecheck` (in CI) fails when index.d.ts stops describing them.
import { events, Job, Container, Service, logger, Event, ImagePullPolicy, workspace } from "@brigadecore/brigadier";
import brigadier from "brigadier";

class MyJob extends Job {
  constructor(event: Event) {
    super("my-job", "debian", event);
    this.primaryContainer.command = ["echo"];
    this.primaryContainer.arguments = [event.payload];
    this.primaryContainer.imagePullPolicy = ImagePullPolicy.Always;
  }
}

events.on("brigade.sh/cli", "exec", async (event: Event) => {
  const job = new MyJob(event);
  job.sidecarContainers = { db: new Container("postgres") };
  job.sidecarContainers.db.readiness = { tcpPort: 5432, timeoutSeconds: 30 };
  job.timeoutSeconds = 60;
  job.fallible = true;
  await Job.sequence(job, Job.concurrent(new Job("a", "alpine", event), new Job("b", "alpine", event))).run();
  const db = new Service("db", "postgres:16");
  db.readiness = { tcpPort: 5432 };
  db.ports = ["0:5432"];
  db.volumes = ["pgdata:/var/lib/postgresql/data", "/tmp/scratch", "/opt/fixtures:/fixtures:ro"];
  const migrate = new Service("migrate", "migrate/migrate");
  migrate.readiness = { exited: true };
  migrate.after = ["db"];
  const [ready] = await Promise.all([db.start(), migrate.start()]);
  const hostPort: number | undefined = ready.ports["5432"];
  job.sidecarContainers.db.after = [];
  await db.stop();
  const ended: string = (await db.wait()).phase;
  logger.info(`${hostPort} ${ended} ${await db.logs()}`);
  const output: string = await job.logs();
  logger.child({ job: job.name }).info(output);
  workspace.writeFile("out/report.txt", output);
  const sizes: number[] = workspace.list("out").map((entry) => entry.size);
  const copy: string = workspace.readFile("out/report.txt", "base64");
  workspace.remove("out");
  logger.info(`${sizes} ${copy}`);
  const secret: string | undefined = event.project.secrets["token"];
  return secret ? "done" : "no secret";
});
brigadier.events.process();
setTimeout(() => process.exit(0), 10);
