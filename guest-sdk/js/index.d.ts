// TypeScript declarations for the script API that Mizzen provides to
// brigade.ts / brigade.js: Brigade v2's `@brigadecore/brigadier`, as Brigade's
// worker implemented it, plus the small superset Mizzen adds (ImagePullPolicy,
// EventRegistry and Logger at run time, a default export).
//
// Both module names resolve to the same library, whatever a package.json pins:
//   import { events, Job } from "@brigadecore/brigadier"
//   const { events, Job } = require("brigadier")
//
// A script may also require its own modules ("./circle", "../lib/y.js", JSON)
// and the npm packages its package.json lists: the host fetches and bundles
// them once per project version (README, "Modules and npm packages"). Of
// Node's built-in modules only path, events, util and assert are provided
// (also as node:path ...); their types are @types/node's. Any other built-in
// (fs, http, child_process, ...) is refused when the script is bundled.

declare module "@brigadecore/brigadier" {
  /** A string-to-string map, as Brigade's API uses for secrets and labels. */
  export interface StringMap {
    [key: string]: string;
  }

  /** The event a worker handles (Brigade's `event.json`). */
  export interface Event {
    /** The event's id (a UUID). */
    id: string;
    /** The project whose worker handles this copy of the event. */
    project: Project;
    /** Who created the event, e.g. `brigade.sh/cli` or `brigade.sh/github`. */
    source: string;
    /** What happened, e.g. `exec` or `push`; meaning depends on the source. */
    type: string;
    /** Qualifiers the project's subscription matched exactly. */
    qualifiers: StringMap | null;
    /**
     * The event's labels, which the project's subscription matched. Some
     * sources set their own: `job` (GitHub's `ci:job_requested`), `release`
     * (`cd:pipeline_requested`), `appID` (GitHub App), `teamID`,
     * `channelID` and `userID` (Slack), `tick` (`brigade.sh/cron`: the
     * schedule's tick, RFC 3339).
     */
    labels: StringMap | null;
    /** A short title for lists; may be empty. */
    shortTitle: string;
    /** A longer title; may be empty. */
    longTitle: string;
    /** The payload: an opaque string (JSON.parse it when it is JSON). */
    payload: string;
    /** The worker's settings for this event. */
    worker: Worker;
  }

  /** The project part of an event. */
  export interface Project {
    /** The project's id. */
    id: string;
    /** Where the project's jobs run in Kubernetes (empty without a cluster). */
    kubernetes: { namespace: string };
    /** The project's secrets, and only this project's. */
    secrets: StringMap;
  }

  /** The worker part of an event. */
  export interface Worker {
    /** The API server's address; empty in a local run. */
    apiAddress: string;
    /** The worker's API token; empty in a local run. */
    apiToken: string;
    /** The level below which `logger` lines are dropped. */
    logLevel: "DEBUG" | "INFO" | "WARN" | "ERROR";
    /** Where config files live, relative to the project's source. */
    configFilesDirectory: string;
    /** Config files given inline in the project definition. */
    defaultConfigFiles: StringMap | null;
    /** The project's git settings, with the event's overrides. */
    git: GitConfig | null;
  }

  /** Where a project's source lives. */
  export interface GitConfig {
    /** The repository URL. */
    cloneURL: string;
    /** A commit to check out; wins over `ref`. */
    commit: string;
    /** A branch or tag. */
    ref: string;
    /** Whether to check out submodules too. */
    initSubmodules: boolean;
  }

  /**
   * Handles an event. A truthy return value (or resolved value) becomes the
   * event's summary, at most 4096 characters.
   */
  export type EventHandler = (event: Event) => unknown;

  /** Handler registrations for a script; use the `events` object. */
  export class EventRegistry {
    /**
     * Registers `eventHandler` for events of `eventSource` and `eventType`
     * (`"*"` for every type of that source). The last registration for a
     * source and type wins.
     */
    on(eventSource: string, eventType: string, eventHandler: EventHandler): this;
    /**
     * Runs the handler for this worker's event, if one matches, and sets the
     * summary from its result. A handler that throws or rejects fails the
     * worker; an event with no matching handler succeeds.
     */
    process(): Promise<void>;
  }

  /** The script's event registry. */
  export const events: EventRegistry;

  /** Anything that can be run: jobs, groups, or your own objects. */
  export interface Runnable {
    run(): Promise<void>;
  }

  /** When an image is pulled. */
  export const ImagePullPolicy: {
    readonly IfNotPresent: "IfNotPresent";
    readonly Always: "Always";
  };

  /** One container of a job. Unknown properties are rejected when the job runs. */
  export class Container {
    constructor(image: string);
    /**
     * The OCI image reference — or, for a job's primary container, a WASI
     * preview 1 module or preview 2 command component run in the sandbox
     * (a Wasm job): `wasm:PATH` (a file
     * of the project's source), `wasm:workspace:PATH` (a file in the event's
     * workspace, e.g. built by an earlier job) or
     * `wasm:https://HOST/PATH@sha256:HEX` (fetched once, pinned by its
     * digest). A Wasm job's `command` + `arguments` are its argv (argv[0] is
     * the module's file name when `command` is empty), `environment` its
     * environment; `workspaceMountPath` and `sourceMountPath` are the only
     * directories it may open. No network, no sidecars, not privileged.
     */
    image: string;
    /** `IfNotPresent` (the default) or `Always`. */
    imagePullPolicy: string;
    /** The process's working directory; empty for the image's default. */
    workingDirectory: string;
    /** Overrides the image's entrypoint. */
    command: string[];
    /** Arguments to the command. */
    arguments: string[];
    /** Environment variables. */
    environment: StringMap;
    /**
     * A file of `VAR=value` lines (comments, `export` and quotes as `.env`
     * tools accept; `${X}` is not expanded) whose variables the container
     * gets too, `environment` winning over it: `PATH` in the project's
     * source, `workspace:PATH` in the event's workspace (e.g. written by an
     * earlier job). At most 256 KiB; an error names the file and line and
     * fails the job. Mizzen's addition to Brigade.
     */
    environmentFile?: string;
    /** Where to mount the event's shared workspace (needs `useWorkspace`). */
    workspaceMountPath: string;
    /** Where to mount a checkout of the project's source. */
    sourceMountPath: string;
    /**
     * Who the process runs as: `root`, `nobody`, `"UID"` or `"UID:GID"`
     * (numbers; a name would depend on the image). Every container runs as
     * `nobody` (65534) by default, on every executor, whatever user its image
     * names; `root` needs `jobPolicies.allowRoot` (a privileged container, or
     * one with the host's Docker socket, runs as root unless it names a
     * user). Mizzen's addition: Brigade ran the image's user.
     */
    user?: string;
    /** Run privileged (needs `jobPolicies.allowPrivileged`). */
    privileged: boolean;
    /** Mount the host's Docker socket (needs `jobPolicies.allowDockerSocketMount`). */
    useHostDockerSocket: boolean;
    /**
     * For a sidecar or a service: when it counts as ready. The primary
     * container starts only once every sidecar that declares readiness is
     * ready, or the job fails after the timeout (default 60 s). Mizzen's
     * addition to Brigade.
     */
    readiness?: Readiness;
    /**
     * Names this container starts after: a sidecar's (or the primary's) among
     * the job's sidecars, a service's among the event's services started
     * before it. It starts once each is ready — its `readiness`, or else up
     * for 3 s without exiting — and is not started (the job or service fails,
     * naming it) when one is not. A cycle or an unknown name is refused
     * before anything starts. Mizzen's addition.
     */
    after?: string[];
    /**
     * A service's or sidecar's ports: `"5432"` declares a container port
     * (the event's jobs reach it by name without more); `"8080:80"`
     * publishes it on the host's loopback, `"0.0.0.0:8080:80"` on an address,
     * `"0:6379"` on a free host port (a service's only) that `start()`
     * returns and later jobs get as `MIZZEN_SERVICE_<NAME>_PORT_6379`. Host
     * ports need `jobPolicies.allowHostPorts`. Mizzen's addition.
     */
    ports?: string[];
    /**
     * Volumes, as Docker Compose writes them: `"/var/lib/mysql"` (anonymous:
     * the container's own, fresh each time); `"data:/var/lib/mysql"` (named:
     * shared by the event's jobs and services and removed when the event
     * ends, or kept between events when the project declares the name in
     * `spec.workerTemplate.volumes` with a size); `"/opt/data:/data"` (a
     * host directory, only under the project's
     * `jobPolicies.allowedHostPaths`, and never on a server started with
     * `--forbid-host-paths` or on Kubernetes); `":ro"` after any for
     * read-only. Mizzen's addition.
     */
    volumes?: string[];
  }

  /**
   * A container that lives as long as the event (or until `stop()`),
   * started once and reached by its name from every job of the event, on
   * the event's own network (no other event's containers reach it). Named
   * like a job: the two share the event's names. Mizzen's addition.
   *
   * ```ts
   * const db = new Service("db", "postgres:16");
   * db.environment = { POSTGRES_PASSWORD: "test" };
   * db.readiness = { tcpPort: 5432 };
   * await db.start();
   * await new Job("test", "python:3", e).run(); // reaches db:5432
   * ```
   */
  export class Service extends Container {
    constructor(name: string, image: string);
    /** Unique among the event's jobs and services; the host name jobs use. */
    name: string;
    /**
     * Starts the service; resolves once it is ready (its `readiness`, or up
     * for 3 s), with the host ports it got by container port. Rejects with
     * the reason (code `not_ready`) when it ends or times out first, or when
     * a service it comes `after` was not ready.
     */
    start(): Promise<{ ports: { [containerPort: string]: number } }>;
    /** Stops the service (it would otherwise run until the event ends). */
    stop(): Promise<void>;
    /** How the service ended (ABORTED when stopped). */
    wait(): Promise<{ phase: string; exitCode?: number; reason?: string }>;
    /** The service's output so far, lines joined with "\n". */
    logs(): Promise<string>;
  }

  /** When a sidecar is ready. */
  export type Readiness =
    /** Something accepts TCP connections on this port of the job's localhost. */
    | { tcpPort: number; timeoutSeconds?: number }
    /** The container has exited with code 0 (a one-shot setup container). */
    | { exited: true; timeoutSeconds?: number };

  /** Where a job must run. */
  export class JobHost {
    /** `linux` (the default when empty) or `windows`. */
    os?: string;
    /** Labels the node must carry. */
    nodeSelector: StringMap;
  }

  /** A job: a primary container that decides the outcome, plus sidecars. */
  export class Job implements Runnable {
    /** `image` is a container image, or `wasm:...` for a Wasm job (see `Container.image`). */
    constructor(name: string, image: string, event: Event);
    /** Unique within the event; `^[a-z][a-z\d-]*[a-z\d]$`, at most 63 characters. */
    name: string;
    /** The container whose exit code decides the job. */
    primaryContainer: Container;
    /** Containers stopped when the primary exits, by name. */
    sidecarContainers: { [name: string]: Container };
    /** After this long the job ends TIMED_OUT (default 900). */
    timeoutSeconds: number;
    /** Where the job must run. */
    host: JobHost;
    /** When true, the job's failure does not reject `run()`. */
    fallible: boolean;
    /**
     * Files the job keeps with the event for later jobs (and for people:
     * `mizzen event artifacts`), and files earlier jobs kept, restored into
     * the primary container before it starts. Mizzen's addition.
     */
    artifacts: JobArtifacts;
    /**
     * Directories kept between the project's events by key: restored before
     * the primary container starts, saved after it succeeds when the key
     * had no entry. Mizzen's addition.
     */
    caches: JobCache[];
    /** The event that triggered the job. */
    protected event: Event;
    /** A logger whose lines carry `[job: <name>]`. */
    logger: Logger;
    workspace: typeof workspace;
    /**
     * Runs the job; resolves when the primary container exits 0, rejects with
     * `Job "<name>" failed`, `timed out`, `was aborted`... otherwise.
     */
    run(): Promise<void>;
    /** The primary container's output, lines joined with "\n". */
    logs(): Promise<string>;
    /** The same as `new Job(name, image, event)`. */
    static container(name: string, image: string, event: Event): Job;
    /** Runs `runnables` one after another, stopping at the first failure. */
    static sequence(...runnables: Runnable[]): SerialGroup;
    /** Runs `runnables` at the same time; rejects when any rejects. */
    static concurrent(...runnables: Runnable[]): ConcurrentGroup;
  }

  /** An artifact the event's jobs saved (Mizzen's addition). */
  export interface ArtifactInfo {
    name: string;
    /** The job that saved it. */
    job: string;
    /** The path in that job's container it was saved from. */
    path: string;
    sizeBytes: number;
    files: number;
  }

  /**
   * What the event's jobs saved (`job.artifacts.save`), as they end
   * (Mizzen's addition). On executors that keep no artifacts (Kubernetes,
   * for now) both reject, saying so.
   */
  export const artifacts: {
    /** The artifacts saved so far, by name. */
    list(): Promise<ArtifactInfo[]>;
    /**
     * A file of an artifact (`path` within it; empty for an artifact that
     * is one file), at most 8 MiB, checked against its SHA-256: UTF-8 text,
     * or base64 with `encoding: "base64"`.
     */
    readFile(name: string, path?: string, encoding?: "utf8" | "base64"): Promise<string>;
  };

  /** A job's artifacts (Mizzen's addition). */
  export interface JobArtifacts {
    /** Saved from the primary container when the job ends (on success, unless `onFailure`). */
    save: SaveArtifact[];
    /** Restored into the primary container before it starts; each must be saved by an earlier job of the event. */
    restore: RestoreArtifact[];
  }

  /** An artifact a job saves. */
  export interface SaveArtifact {
    /** Unique within the event: letters, digits, `-`, `_`, `.`; at most 63 characters. */
    name: string;
    /**
     * A file or directory in the primary container, absolute or relative to
     * its `workingDirectory`; its last components may be a pattern
     * (`reports/*.xml`, `out/**\/*.json`).
     */
    path: string;
    /** Saved when the job fails too (test reports); default false. */
    onFailure?: boolean;
  }

  /** An artifact a job restores. */
  export interface RestoreArtifact {
    /** The name an earlier job of the event saved it under. */
    name: string;
    /** Where it goes in the primary container; default: where it was saved from. */
    path?: string;
  }

  /**
   * A directory kept between the project's events. Restored from the entry
   * of `key`, or on a miss from the newest entry whose key starts with the
   * first of `restoreKeys` that has one; saved under `key` after the job
   * succeeds when `key` had no entry. Entries are never replaced; the
   * project's least recently used are evicted past its `cacheSize` limit.
   */
  export interface JobCache {
    /** What the directory's content depends on (`npm-<hash of package-lock.json>`); at most 512 bytes. */
    key: string;
    /** Key prefixes tried in order on a miss (at most 10). */
    restoreKeys?: string[];
    /** The directory in the primary container, absolute or relative to its `workingDirectory`. */
    path: string;
  }

  /** Runnables run one after another. */
  export class SerialGroup implements Runnable {
    constructor(...runnables: Runnable[]);
    add(...runnables: Runnable[]): void;
    length(): number;
    run(): Promise<void>;
  }

  /** Runnables run at the same time. */
  export class ConcurrentGroup implements Runnable {
    constructor(...runnables: Runnable[]);
    add(...runnables: Runnable[]): void;
    length(): number;
    run(): Promise<void>;
  }

  /** Levelled log lines: `<time> LEVEL: message`. */
  export class Logger {
    /** The lowest level printed; starts at the worker's logLevel. */
    level: "error" | "warn" | "info" | "debug";
    log(level: "error" | "warn" | "info" | "debug", ...args: unknown[]): this;
    error(...args: unknown[]): this;
    warn(...args: unknown[]): this;
    info(...args: unknown[]): this;
    debug(...args: unknown[]): this;
    /** A logger for a job: its lines carry `[job: <job>]`. */
    child(meta: { job?: string }): Logger;
  }

  /** The worker's logger. */
  export const logger: Logger;

  /** An entry of a workspace directory. */
  export interface WorkspaceEntry {
    name: string;
    directory: boolean;
    /** Bytes; 0 for a directory. */
    size: number;
  }

  /**
   * Mizzen's addition: the event's workspace (what its jobs mount at
   * `workspaceMountPath`), for projects with `useWorkspace`. Paths are
   * relative to it and cannot lead out of it; writes count against
   * `workspaceSize`.
   */
  export const workspace: {
    /** A file's contents: UTF-8 text, or base64. Files over 8 MiB are refused. */
    readFile(path: string, encoding?: "utf8" | "base64"): string;
    /** Creates or replaces a file (and the directories above it). */
    writeFile(path: string, contents: string, encoding?: "utf8" | "base64"): void;
    /** A directory's entries, sorted by name; the workspace itself by default. */
    list(path?: string): WorkspaceEntry[];
    /** Removes a file, or a directory with everything in it. */
    remove(path: string): void;
  };

  /**
   * Mizzen's addition: sets the event's summary now (a later call, or the
   * handler's return value, replaces it). Throws an `Error` whose `code` is
   * `limit_exceeded` past 4096 characters.
   */
  export function setSummary(text: string): void;

  const brigadier: {
    events: EventRegistry;
    EventRegistry: typeof EventRegistry;
    Job: typeof Job;
    Container: typeof Container;
    JobHost: typeof JobHost;
    SerialGroup: typeof SerialGroup;
    ConcurrentGroup: typeof ConcurrentGroup;
    ImagePullPolicy: typeof ImagePullPolicy;
    logger: Logger;
    Logger: typeof Logger;
    workspace: typeof workspace;
    setSummary: typeof setSummary;
  };
  export default brigadier;
}

declare module "brigadier" {
  export * from "@brigadecore/brigadier";
  import brigadier from "@brigadecore/brigadier";
  export default brigadier;
}

// What the sandbox offers of Node's globals.
declare function require(name: "@brigadecore/brigadier" | "brigadier"): typeof import("@brigadecore/brigadier");
declare function require(name: string): never;
declare const module: { exports: unknown; id: string; filename: string; loaded: boolean };
declare let exports: unknown;
declare const __filename: string;
declare const __dirname: string;
declare const process: {
  /** Empty: the sandbox has no environment. */
  env: { [key: string]: string | undefined };
  argv: string[];
  platform: string;
  /** A non-zero value fails the worker when the script ends. */
  exitCode: number | undefined;
  /** Ends the worker at once with this code (non-zero fails it). */
  exit(code?: number): never;
};
declare function setTimeout<A extends unknown[]>(callback: (...args: A) => void, ms?: number, ...args: A): number;
declare function clearTimeout(id: number | undefined): void;
declare function setInterval<A extends unknown[]>(callback: (...args: A) => void, ms?: number, ...args: A): number;
declare function clearInterval(id: number | undefined): void;
declare function setImmediate<A extends unknown[]>(callback: (...args: A) => void, ...args: A): number;
declare function clearImmediate(id: number | undefined): void;
declare function queueMicrotask(callback: () => void): void;
declare const console: {
  log(...args: unknown[]): void;
  info(...args: unknown[]): void;
  debug(...args: unknown[]): void;
  warn(...args: unknown[]): void;
  error(...args: unknown[]): void;
  trace(...args: unknown[]): void;
  dir(value: unknown): void;
  assert(condition: unknown, ...args: unknown[]): void;
};
