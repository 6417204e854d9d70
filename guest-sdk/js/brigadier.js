// Mizzen's implementation of Brigade v2's script API (`@brigadecore/brigadier`
// as Brigade's worker provided it), running inside the Wasm sandbox.
//
// The Javy plugin evaluates this file once, when it is pre-initialised, as a
// function expression and calls it with `host`, whose `call(op, json)` is the
// only way out of the sandbox (see host-api). What the function returns is
// kept by the plugin's driver loop: the module object, `require`, the ticket
// completion hook and the error reporter. Nothing else is left on the global
// object except what Node scripts expect (`console`, timers, `process`).
//
// Nothing here may call the host or Math.random while it is evaluated: it runs
// in the snapshot, before any event exists.
(function (host) {
  "use strict";

  // Op codes: every operation of host-api's `Op`, by its Rust name, with its
  // number in host-api/src/op_codes.rs; host-api/tests/op_codes.rs checks
  // both.
  const OP = {
    EventGet: 1,
    Log: 2,
    SummarySet: 3,
    Exit: 4,
    ScriptError: 5,
    SecretGet: 6,
    JobStart: 10,
    JobWait: 11,
    JobCancel: 12,
    JobLogs: 13,
    ServiceStart: 14,
    Sleep: 20,
    TicketCancel: 21,
    WaitAny: 30, // called by the plugin's driver loop, not from here
    WorkspaceRead: 40,
    WorkspaceWrite: 41,
    WorkspaceList: 42,
    WorkspaceRemove: 43,
    ArtifactList: 50,
    ArtifactRead: 51,
  };

  // Brigade's worker never printed lines longer than a container log line;
  // the host caps the whole log, and a single huge line is cut here so that
  // one call cannot carry megabytes across the boundary.
  const MAX_LINE_CHARS = 64 * 1024;

  // The host answers with the parsed reply (undefined when there is none),
  // or throws the error's JSON as a string: {code, message}.
  function call(op, request) {
    try {
      return host.call(op, request === undefined ? "" : JSON.stringify(request));
    } catch (thrown) {
      throw typeof thrown === "string" ? hostError(JSON.parse(thrown)) : thrown;
    }
  }

  // ---------------------------------------------------------------- tickets
  // Operations that take time return a ticket; the plugin's driver loop waits
  // on the host for any ticket to complete and hands the result to complete().
  const pending = new Map();

  function submit(op, request) {
    const { ticket } = call(op, request);
    return new Promise((resolve, reject) => {
      pending.set(ticket, { resolve, reject });
    });
  }

  function complete(ticket, outcome) {
    const waiter = pending.get(ticket);
    if (waiter === undefined) {
      return; // cancelled (clearTimeout) or never asked for
    }
    pending.delete(ticket);
    if (outcome.status === "failed") {
      waiter.reject(hostError(outcome.error));
    } else {
      waiter.resolve(outcome.result);
    }
  }

  function hostError(error) {
    const e = new Error(error.message);
    e.code = error.code;
    return e;
  }

  // ------------------------------------------------------------ formatting
  // A small version of Node's util.format / util.inspect, so that
  // `console.log("x", obj)` prints what a Node user expects.
  function inspect(value, depth, seen) {
    if (depth === undefined) depth = 2;
    if (seen === undefined) seen = [];
    switch (typeof value) {
      case "string":
        return seen.length === 0 ? value : quote(value);
      case "number":
        return Object.is(value, -0) ? "-0" : String(value);
      case "bigint":
        return `${value}n`;
      case "undefined":
      case "boolean":
        return String(value);
      case "symbol":
        return value.toString();
      case "function": {
        const kind = /^class\s/.test(Function.prototype.toString.call(value)) ? "class" : "Function";
        return value.name ? `[${kind}: ${value.name}]` : `[${kind} (anonymous)]`;
      }
    }
    if (value === null) return "null";
    if (value instanceof Error) {
      return value.stack ? `${value.name}: ${value.message}\n${value.stack}`.trimEnd() : String(value);
    }
    if (value instanceof Date) return isNaN(value) ? "Invalid Date" : value.toISOString();
    if (value instanceof RegExp) return String(value);
    if (seen.includes(value)) return "[Circular]";
    if (value instanceof Promise) return "Promise { <pending> }";
    const inner = seen.concat([value]);
    if (Array.isArray(value)) {
      if (depth < 0) return "[Array]";
      const items = value.slice(0, 100).map((v) => inspect(v, depth - 1, inner));
      if (value.length > 100) items.push(`... ${value.length - 100} more items`);
      return items.length === 0 ? "[]" : `[ ${items.join(", ")} ]`;
    }
    if (value instanceof Map) {
      if (depth < 0) return "[Map]";
      const items = [...value].map(([k, v]) => `${inspect(k, depth - 1, inner)} => ${inspect(v, depth - 1, inner)}`);
      return `Map(${value.size}) {${items.length ? ` ${items.join(", ")} ` : ""}}`;
    }
    if (value instanceof Set) {
      if (depth < 0) return "[Set]";
      const items = [...value].map((v) => inspect(v, depth - 1, inner));
      return `Set(${value.size}) {${items.length ? ` ${items.join(", ")} ` : ""}}`;
    }
    const ctor = value.constructor && value.constructor !== Object ? value.constructor.name : "";
    if (depth < 0) return ctor ? `[${ctor}]` : "[Object]";
    const entries = Object.keys(value).map((k) => `${propertyKey(k)}: ${inspect(value[k], depth - 1, inner)}`);
    const body = entries.length === 0 ? "{}" : `{ ${entries.join(", ")} }`;
    return ctor ? `${ctor} ${body}` : body;
  }

  function quote(s) {
    return `'${s.replace(/\\/g, "\\\\").replace(/'/g, "\\'").replace(/\n/g, "\\n")}'`;
  }

  function propertyKey(k) {
    return /^[A-Za-z_$][\w$]*$/.test(k) ? k : quote(k);
  }

  function format(args) {
    if (args.length === 0) return "";
    let first = args[0];
    let rest = 1;
    let out;
    if (typeof first === "string") {
      out = first.replace(/%[sdifjoOc%]/g, (spec) => {
        if (spec === "%%") return "%";
        if (rest >= args.length) return spec;
        const arg = args[rest++];
        switch (spec) {
          case "%s":
            return typeof arg === "string" ? arg : inspect(arg, 1, []);
          case "%d":
          case "%i": {
            const n = spec === "%i" ? parseInt(arg, 10) : Number(arg);
            return String(n);
          }
          case "%f":
            return String(parseFloat(arg));
          case "%j":
            try {
              return JSON.stringify(arg);
            } catch (e) {
              return "[Circular]";
            }
          case "%c":
            return "";
          default:
            return inspect(arg, 4, [null]);
        }
      });
    } else {
      out = inspect(first);
    }
    for (; rest < args.length; rest++) {
      const arg = args[rest];
      out += " " + (typeof arg === "string" ? arg : inspect(arg));
    }
    return out;
  }

  function emit(level, message, job, console) {
    if (message.length > MAX_LINE_CHARS) {
      const cut = message.length - MAX_LINE_CHARS;
      message = `${message.slice(0, MAX_LINE_CHARS)}... [line truncated: ${cut} more characters]`;
    }
    call(OP.Log, { level, message, job: job || null, console });
  }

  // ---------------------------------------------------------------- console
  const consoleObject = {
    log: (...args) => emit("info", format(args), null, true),
    info: (...args) => emit("info", format(args), null, true),
    debug: (...args) => emit("debug", format(args), null, true),
    warn: (...args) => emit("warn", format(args), null, true),
    error: (...args) => emit("error", format(args), null, true),
    trace: (...args) => emit("error", `Trace: ${format(args)}\n${new Error().stack || ""}`.trimEnd(), null, true),
    dir: (value) => emit("info", inspect(value), null, true),
    assert: (condition, ...args) => {
      if (!condition) emit("error", `Assertion failed${args.length ? ": " + format(args) : ""}`, null, true);
    },
  };

  // ----------------------------------------------------------------- logger
  // Brigade's worker used winston: levels error < warn < info < debug, lines
  // `<time> LEVEL: message`, `[job: name]` for a job's child logger. The
  // threshold starts at the event's worker.logLevel and can be changed by
  // assigning `logger.level`, as with winston.
  const LEVELS = { error: 0, warn: 1, info: 2, debug: 3 };
  let threshold;

  function currentThreshold() {
    if (threshold === undefined) {
      threshold = LEVELS[String(workerEvent().worker.logLevel || "info").toLowerCase()];
      if (threshold === undefined) threshold = LEVELS.info;
    }
    return threshold;
  }

  class Logger {
    constructor(job) {
      this._job = job;
    }
    get level() {
      return Object.keys(LEVELS)[currentThreshold()];
    }
    set level(value) {
      const n = LEVELS[String(value).toLowerCase()];
      if (n === undefined) throw new Error(`unknown log level "${value}" (use error, warn, info or debug)`);
      threshold = n;
    }
    log(level, ...args) {
      const n = LEVELS[String(level).toLowerCase()];
      if (n === undefined) throw new Error(`unknown log level "${level}" (use error, warn, info or debug)`);
      if (n <= currentThreshold()) emit(Object.keys(LEVELS)[n], format(args), this._job, false);
      return this;
    }
    error(...args) {
      return this.log("error", ...args);
    }
    warn(...args) {
      return this.log("warn", ...args);
    }
    info(...args) {
      return this.log("info", ...args);
    }
    debug(...args) {
      return this.log("debug", ...args);
    }
    child(meta) {
      return new Logger(meta && meta.job !== undefined ? String(meta.job) : this._job);
    }
  }
  const logger = new Logger(null);

  // ----------------------------------------------------------------- events
  let cachedEvent;
  function workerEvent() {
    if (cachedEvent === undefined) cachedEvent = call(OP.EventGet);
    return cachedEvent;
  }

  class EventRegistry {
    constructor() {
      this.handlers = {};
    }
    on(eventSource, eventType, eventHandler) {
      this.handlers[`${eventSource}:${eventType}`] = eventHandler;
      return this;
    }
    // Runs the handler for this worker's event and sets the summary from
    // what it returns. Like Brigade's, it returns a promise the script need
    // not await: a handler that throws or rejects rejects it, and nothing
    // handles that rejection, so the worker fails.
    process() {
      let result;
      try {
        result = this.fire(workerEvent());
      } catch (e) {
        return Promise.reject(e);
      }
      return Promise.resolve(result).then(setSummary);
    }
    fire(event) {
      const handler = this.handlers[`${event.source}:${event.type}`] || this.handlers[`${event.source}:*`];
      if (handler === undefined) {
        logger.debug(`no handler for events of source "${event.source}" and type "${event.type}"`);
        return undefined;
      }
      return handler(event);
    }
  }
  function setSummary(summary) {
    if (summary) {
      const text = typeof summary === "string" ? summary : typeof summary === "object" ? JSON.stringify(summary) : String(summary);
      call(OP.SummarySet, { text });
    }
  }
  // Mizzen's addition: sets the summary now, and throws (with a `code`) when
  // the host refuses it, so that a script can catch the summary's limit.
  function setSummaryNow(text) {
    call(OP.SummarySet, { text: String(text) });
  }

  const events = new EventRegistry();

  // ------------------------------------------------------------------- jobs
  const ImagePullPolicy = Object.freeze({ IfNotPresent: "IfNotPresent", Always: "Always" });

  class Container {
    constructor(image) {
      this.image = image;
      this.imagePullPolicy = "IfNotPresent";
      this.workingDirectory = "";
      this.command = [];
      this.arguments = [];
      this.environment = {};
      this.workspaceMountPath = "";
      this.sourceMountPath = "";
      this.privileged = false;
      this.useHostDockerSocket = false;
    }
  }

  class JobHost {
    constructor() {
      this.nodeSelector = {};
    }
  }

  const PHASE_ERRORS = {
    ABORTED: "was aborted",
    CANCELED: "was canceled before starting",
    FAILED: "failed",
    SCHEDULING_FAILED: "scheduling failed",
    TIMED_OUT: "timed out",
  };

  class Job {
    constructor(name, image, event) {
      this.name = name;
      this.primaryContainer = new Container(image);
      this.sidecarContainers = {};
      this.timeoutSeconds = 900;
      this.host = new JobHost();
      this.fallible = false;
      // Mizzen's additions: what the job keeps for later jobs of the event
      // ({ save: [{ name, path, onFailure }], restore: [{ name, path }] })
      // and for the project's later events ([{ key, restoreKeys, path }]).
      // Not enumerable, so that a job still has Brigade's shape as JSON.
      Object.defineProperty(this, "artifacts", { value: { save: [], restore: [] }, writable: true, enumerable: false });
      Object.defineProperty(this, "caches", { value: [], writable: true, enumerable: false });
      Object.defineProperty(this, "event", { value: event, writable: true, enumerable: false });
      Object.defineProperty(this, "logger", { value: logger.child({ job: name }), writable: true, enumerable: false });
    }

    async run() {
      this.logger.info(`Creating job ${this.name}`);
      try {
        call(OP.JobStart, {
          name: this.name,
          spec: {
            primaryContainer: this.primaryContainer,
            sidecarContainers: this.sidecarContainers,
            timeoutSeconds: this.timeoutSeconds,
            host: this.host,
            fallible: this.fallible,
            artifacts: this.artifacts,
            caches: this.caches,
          },
        });
      } catch (e) {
        throw new Error(`Error creating job "${this.name}": ${e.message}`);
      }
      // The host logs how the job ended (with its exit code), once.
      const result = await submit(OP.JobWait, { name: this.name });
      if (this.fallible || result.phase === "SUCCEEDED") return;
      const what = PHASE_ERRORS[result.phase] || `ended ${result.phase}`;
      const error = new Error(`Job "${this.name}" ${what}`);
      error.phase = result.phase;
      if (result.exitCode !== undefined && result.exitCode !== null) error.exitCode = result.exitCode;
      if (result.reason) error.reason = result.reason;
      throw error;
    }

    async logs() {
      const result = await submit(OP.JobLogs, { name: this.name });
      return result.lines.join("\n");
    }

    static container(name, image, event) {
      return new Job(name, image, event);
    }

    static sequence(...runnables) {
      return new SerialGroup(...runnables);
    }

    static concurrent(...runnables) {
      return new ConcurrentGroup(...runnables);
    }
  }

  // Mizzen's addition: a container that lives as long as the event (or until
  // stop()), started once and reached by its name from every job of the
  // event, on the event's own network: one database for a sequence of jobs.
  // A service is named like a job (the two share the event's names).
  class Service extends Container {
    constructor(name, image) {
      super(image);
      Object.defineProperty(this, "name", { value: name, writable: true, enumerable: false });
      Object.defineProperty(this, "logger", { value: logger.child({ job: name }), writable: true, enumerable: false });
    }

    // Resolves once the service is ready (its readiness, or up for 3 s),
    // with the host ports it got: { ports: { "6379": 49153 } }.
    async start() {
      this.logger.info(`Starting service ${this.name}`);
      const container = {};
      for (const key of Object.keys(this)) container[key] = this[key];
      try {
        return await submit(OP.ServiceStart, { name: this.name, container });
      } catch (e) {
        const error = new Error(`Error starting service "${this.name}": ${e.message}`);
        error.code = e.code;
        throw error;
      }
    }

    // Stops the service; it would otherwise run until the event ends.
    async stop() {
      call(OP.JobCancel, { name: this.name });
    }

    // How the service ended: { phase, exitCode, reason }.
    async wait() {
      return submit(OP.JobWait, { name: this.name });
    }

    async logs() {
      const result = await submit(OP.JobLogs, { name: this.name });
      return result.lines.join("\n");
    }
  }

  class Group {
    constructor(...runnables) {
      this.runnables = runnables;
    }
    add(...runnables) {
      this.runnables.push(...runnables);
    }
    length() {
      return this.runnables.length;
    }
  }

  class SerialGroup extends Group {
    async run() {
      for (const runnable of this.runnables) {
        await runnable.run();
      }
    }
  }

  class ConcurrentGroup extends Group {
    async run() {
      await Promise.all(this.runnables.map((runnable) => runnable.run()));
    }
  }

  // ------------------------------------------------------------- workspace
  // Mizzen's addition: the event's workspace (what its jobs mount at
  // workspaceMountPath), for projects with useWorkspace. Paths are relative
  // to it; the host refuses anything that would lead out of it.
  const workspace = Object.freeze({
    readFile(path, encoding = "utf8") {
      return call(OP.WorkspaceRead, { path: String(path), encoding }).contents;
    },
    writeFile(path, contents, encoding = "utf8") {
      call(OP.WorkspaceWrite, { path: String(path), contents: String(contents), encoding });
    },
    list(path = "") {
      return call(OP.WorkspaceList, { path: String(path) }).entries;
    },
    remove(path) {
      call(OP.WorkspaceRemove, { path: String(path) });
    },
  });

  // ------------------------------------------------------------- artifacts
  // Mizzen's addition: what the event's jobs saved (job.artifacts.save), as
  // they end: listed, and small files read (8 MiB at most; each checked
  // against its SHA-256). Paths are within the artifact.
  const artifacts = Object.freeze({
    async list() {
      return (await submit(OP.ArtifactList, {})).artifacts;
    },
    async readFile(name, path = "", encoding = "utf8") {
      return (await submit(OP.ArtifactRead, { name: String(name), path: String(path), encoding })).contents;
    },
  });

  const brigadier = Object.freeze({
    artifacts,
    events,
    EventRegistry,
    Job,
    Container,
    Service,
    JobHost,
    SerialGroup,
    ConcurrentGroup,
    ImagePullPolicy,
    logger,
    Logger,
    workspace,
    setSummary: setSummaryNow,
  });

  // ------------------------------------------------------ Node's built-ins
  // The pure parts of Node that small packages use (runtime/core/src/bundle.rs
  // lets a script require these and refuses the others: fs, http, net,
  // child_process... have no meaning in the sandbox). Paths are POSIX, and
  // the working directory is "/".
  function pathParts(parts, absolute) {
    const out = [];
    for (const part of parts) {
      if (part === "" || part === ".") continue;
      if (part === "..") {
        if (out.length > 0 && out[out.length - 1] !== "..") out.pop();
        else if (!absolute) out.push("..");
      } else out.push(part);
    }
    return out;
  }
  const path = {
    sep: "/",
    delimiter: ":",
    isAbsolute: (p) => String(p).startsWith("/"),
    normalize(p) {
      p = String(p);
      if (p === "") return ".";
      const absolute = p.startsWith("/");
      let joined = pathParts(p.split("/"), absolute).join("/");
      if (joined === "" && !absolute) joined = ".";
      if (p.endsWith("/") && joined !== "" && joined !== ".") joined += "/";
      return (absolute ? "/" : "") + joined;
    },
    join: (...parts) => {
      const joined = parts.map(String).filter((p) => p !== "").join("/");
      return joined === "" ? "." : path.normalize(joined);
    },
    resolve: (...parts) => {
      let resolved = "";
      for (let i = parts.length - 1; i >= 0 && !resolved.startsWith("/"); i--) {
        const part = String(parts[i]);
        if (part !== "") resolved = resolved === "" ? part : `${part}/${resolved}`;
      }
      return "/" + pathParts(resolved.split("/"), true).join("/");
    },
    dirname(p) {
      p = String(p);
      const trimmed = p.replace(/\/+$/, "");
      if (trimmed === "") return p.startsWith("/") ? "/" : ".";
      const at = trimmed.lastIndexOf("/");
      return at < 0 ? "." : at === 0 ? "/" : trimmed.slice(0, at);
    },
    basename(p, ext) {
      const trimmed = String(p).replace(/\/+$/, "");
      let base = trimmed.slice(trimmed.lastIndexOf("/") + 1);
      if (ext && base !== ext && base.endsWith(ext)) base = base.slice(0, -ext.length);
      return base;
    },
    extname(p) {
      const base = path.basename(p);
      const at = base.lastIndexOf(".");
      return at <= 0 ? "" : base.slice(at);
    },
    relative(from, to) {
      const a = path.resolve(from).split("/").filter(Boolean);
      const b = path.resolve(to).split("/").filter(Boolean);
      let same = 0;
      while (same < a.length && same < b.length && a[same] === b[same]) same++;
      return [...Array(a.length - same).fill(".."), ...b.slice(same)].join("/");
    },
    parse(p) {
      p = String(p);
      const base = path.basename(p);
      const ext = path.extname(p);
      const dir = p.includes("/") ? path.dirname(p) : "";
      return { root: p.startsWith("/") ? "/" : "", dir, base, ext, name: ext ? base.slice(0, -ext.length) : base };
    },
    format: (o) => {
      const base = o.base || `${o.name || ""}${o.ext || ""}`;
      const dir = o.dir || o.root || "";
      return dir === "" ? base : dir.endsWith("/") ? dir + base : `${dir}/${base}`;
    },
  };
  path.posix = path;

  // EventEmitter as a constructor function: old packages subclass it with
  // `EventEmitter.call(this)` and util.inherits, which a class forbids.
  function EventEmitter() {
    this._events = new Map();
    this._maxListeners = undefined;
  }
  const listenersOf = (emitter) => {
    if (!(emitter._events instanceof Map)) emitter._events = new Map();
    return emitter._events;
  };
  function addListener(emitter, name, listener, prepend) {
    if (typeof listener !== "function") throw new TypeError('The "listener" argument must be of type function');
    const all = listenersOf(emitter);
    const list = all.get(name) || [];
    if (prepend) list.unshift(listener);
    else list.push(listener);
    all.set(name, list);
    return emitter;
  }
  Object.assign(EventEmitter.prototype, {
    on(name, listener) {
      return addListener(this, name, listener, false);
    },
    addListener(name, listener) {
      return addListener(this, name, listener, false);
    },
    prependListener(name, listener) {
      return addListener(this, name, listener, true);
    },
    once(name, listener) {
      const once = (...args) => {
        this.off(name, once);
        return listener.apply(this, args);
      };
      once.listener = listener;
      return addListener(this, name, once, false);
    },
    off(name, listener) {
      const all = listenersOf(this);
      const list = all.get(name);
      if (!list) return this;
      const at = list.findIndex((l) => l === listener || l.listener === listener);
      if (at >= 0) list.splice(at, 1);
      if (list.length === 0) all.delete(name);
      return this;
    },
    removeListener(name, listener) {
      return this.off(name, listener);
    },
    removeAllListeners(name) {
      if (name === undefined) listenersOf(this).clear();
      else listenersOf(this).delete(name);
      return this;
    },
    emit(name, ...args) {
      const list = listenersOf(this).get(name);
      if (!list || list.length === 0) {
        if (name === "error") {
          throw args[0] instanceof Error ? args[0] : new Error(`Unhandled error. (${inspect(args[0], 2, [null])})`);
        }
        return false;
      }
      for (const listener of [...list]) listener.apply(this, args);
      return true;
    },
    listenerCount(name) {
      const list = listenersOf(this).get(name);
      return list ? list.length : 0;
    },
    listeners(name) {
      return (listenersOf(this).get(name) || []).map((l) => l.listener || l);
    },
    eventNames() {
      return [...listenersOf(this).keys()];
    },
    setMaxListeners(n) {
      this._maxListeners = n;
      return this;
    },
    getMaxListeners() {
      return this._maxListeners === undefined ? EventEmitter.defaultMaxListeners : this._maxListeners;
    },
  });
  EventEmitter.EventEmitter = EventEmitter;
  EventEmitter.defaultMaxListeners = 10;
  EventEmitter.once = (emitter, name) =>
    new Promise((resolve, reject) => {
      const onError = (error) => {
        emitter.off(name, onEvent);
        reject(error);
      };
      const onEvent = (...args) => {
        if (name !== "error") emitter.off("error", onError);
        resolve(args);
      };
      emitter.once(name, onEvent);
      if (name !== "error") emitter.once("error", onError);
    });

  // Structural equality as Node's assert.deepStrictEqual sees it.
  function deepEqual(a, b, seen) {
    if (Object.is(a, b)) return true;
    if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
    if (Object.getPrototypeOf(a) !== Object.getPrototypeOf(b)) return false;
    seen = seen || [];
    if (seen.some(([x, y]) => x === a && y === b)) return true;
    seen = seen.concat([[a, b]]);
    if (a instanceof Date) return a.getTime() === b.getTime();
    if (a instanceof RegExp) return String(a) === String(b);
    if (a instanceof Map || a instanceof Set) {
      if (a.size !== b.size) return false;
      const left = [...a];
      const right = [...b];
      return left.every((x, i) => deepEqual(x, right[i], seen));
    }
    const keys = Object.keys(a);
    if (keys.length !== Object.keys(b).length) return false;
    return keys.every((k) => Object.prototype.hasOwnProperty.call(b, k) && deepEqual(a[k], b[k], seen));
  }

  const util = {
    format: (...args) => format(args),
    inspect: (value, options) => inspect(value, options && typeof options.depth === "number" ? options.depth : 2, [null]),
    inherits(constructor, superConstructor) {
      Object.setPrototypeOf(constructor.prototype, superConstructor.prototype);
      Object.setPrototypeOf(constructor, superConstructor);
      constructor.super_ = superConstructor;
    },
    promisify: (fn) => (...args) =>
      new Promise((resolve, reject) => fn(...args, (error, value) => (error ? reject(error) : resolve(value)))),
    deprecate: (fn) => fn,
    isDeepStrictEqual: (a, b) => deepEqual(a, b),
    types: {
      isPromise: (v) => v instanceof Promise,
      isDate: (v) => v instanceof Date,
      isRegExp: (v) => v instanceof RegExp,
    },
  };

  class AssertionError extends Error {
    constructor(message) {
      super(message);
      this.name = "AssertionError";
      this.code = "ERR_ASSERTION";
    }
  }
  const failed = (message, otherwise) => {
    if (message instanceof Error) throw message;
    throw new AssertionError(message === undefined ? otherwise : String(message));
  };
  const shown = (v) => inspect(v, 2, [null]);
  function assert(value, message) {
    if (!value) failed(message, "The expression evaluated to a falsy value");
  }
  Object.assign(assert, {
    ok: assert,
    AssertionError,
    fail: (message) => failed(message, "Failed"),
    equal: (a, b, m) => a == b || failed(m, `${shown(a)} == ${shown(b)}`),
    notEqual: (a, b, m) => a != b || failed(m, `${shown(a)} != ${shown(b)}`),
    strictEqual: (a, b, m) => Object.is(a, b) || failed(m, `Expected values to be strictly equal: ${shown(a)} !== ${shown(b)}`),
    notStrictEqual: (a, b, m) => !Object.is(a, b) || failed(m, `Expected "actual" to be strictly unequal to: ${shown(b)}`),
    deepEqual: (a, b, m) => deepEqual(a, b) || failed(m, `Expected values to be deeply equal: ${shown(a)} and ${shown(b)}`),
    deepStrictEqual: (a, b, m) => deepEqual(a, b) || failed(m, `Expected values to be strictly deep-equal: ${shown(a)} and ${shown(b)}`),
    notDeepStrictEqual: (a, b, m) => !deepEqual(a, b) || failed(m, `Expected "actual" not to be strictly deep-equal to: ${shown(b)}`),
    throws(fn, expected, message) {
      try {
        fn();
      } catch (error) {
        if (typeof expected === "function" && expected.prototype !== undefined && !(error instanceof expected)) throw error;
        if (expected instanceof RegExp && !expected.test(String(error && error.message))) throw error;
        return;
      }
      failed(typeof expected === "string" ? expected : message, "Missing expected exception.");
    },
    async rejects(promise, expected, message) {
      try {
        await (typeof promise === "function" ? promise() : promise);
      } catch (error) {
        if (typeof expected === "function" && expected.prototype !== undefined && !(error instanceof expected)) throw error;
        return;
      }
      failed(typeof expected === "string" ? expected : message, "Missing expected rejection.");
    },
  });
  assert.strict = assert;

  // The names a script requires them by (runtime/core/src/bundle.rs has the
  // same list, checked by its tests).
  const nodeModules = {
    path,
    "path/posix": path,
    events: EventEmitter,
    util,
    assert,
    "assert/strict": assert,
  };

  // ---------------------------------------------------------------- require
  const builtinModules = {
    "@brigadecore/brigadier": brigadier,
    brigadier: brigadier,
  };
  for (const [name, value] of Object.entries(nodeModules)) {
    builtinModules[name] = value;
    builtinModules[`node:${name}`] = value;
  }

  // Modules the host bundled with the script (runtime/core/src/bundle.rs):
  // the script ends with a hoisted function `__mizzen_modules` returning
  // the script's own table (specifier -> module id) and, for each module,
  // its table and its CommonJS factory. Each module runs once, on first use.
  let bundle = null;
  function bundled(table) {
    if (bundle === null) {
      const [main, modules] = table();
      bundle = { main, modules, cache: new Map() };
    }
    return bundle;
  }

  function notFound(name, from) {
    const e = new Error(`Cannot find module '${name}'${from ? ` from '${from}'` : ""}`);
    e.code = "MODULE_NOT_FOUND";
    return e;
  }

  // What converted ES modules use: export getters, `export *` and default
  // imports (a CommonJS module's default is its whole `module.exports`).
  const interop = {
    e(exports, name, get) {
      Object.defineProperty(exports, name, { enumerable: true, configurable: true, get });
    },
    s(exports, from) {
      for (const key of Object.keys(from)) {
        if (key !== "default" && !Object.prototype.hasOwnProperty.call(exports, key)) {
          Object.defineProperty(exports, key, { enumerable: true, get: () => from[key] });
        }
      }
    },
    d(m) {
      return m && m.__esModule ? m.default : m;
    },
  };

  function requireFrom(b, table, name, from) {
    if (Object.prototype.hasOwnProperty.call(builtinModules, name)) {
      return builtinModules[name];
    }
    if (!Object.prototype.hasOwnProperty.call(table, name)) throw notFound(name, from);
    const id = table[name];
    const cached = b.cache.get(id);
    if (cached !== undefined) return cached.exports;
    const [own, factory] = b.modules[id];
    const module = { exports: {}, id, filename: id, loaded: false };
    b.cache.set(id, module);
    const slash = id.lastIndexOf("/");
    const dirname = slash < 0 ? "." : id.slice(0, slash);
    const localRequire = (spec) => requireFrom(b, own, spec, id);
    factory.call(module.exports, module.exports, localRequire, module, id, dirname, interop);
    module.loaded = true;
    return module.exports;
  }

  function require(name) {
    if (Object.prototype.hasOwnProperty.call(builtinModules, name)) {
      return builtinModules[name];
    }
    // A CommonJS script's hoisted table is a global.
    const table = globalThis.__mizzen_modules;
    if (typeof table === "function") {
      const b = bundled(table);
      return requireFrom(b, b.main, name, scriptName);
    }
    throw notFound(name, "");
  }
  // An ES module script's imports, rewritten by the host, name their table.
  require.bundled = (table, name) => {
    const b = bundled(table);
    return requireFrom(b, b.main, name, scriptName);
  };
  require.interop = interop;

  // ----------------------------------------------------------------- timers
  // Timer ids are the host tickets of their Sleep operations; an interval
  // keeps its first id while each period gets a new ticket.
  const intervals = new Map();

  function schedule(ms, callback) {
    const delay = Math.max(0, Number(ms) || 0);
    const { ticket } = call(OP.Sleep, { ms: delay });
    pending.set(ticket, { resolve: callback, reject: () => {} });
    return ticket;
  }

  function setTimeout(callback, ms, ...args) {
    if (typeof callback !== "function") throw new TypeError("setTimeout: callback must be a function");
    return schedule(ms, () => callback(...args));
  }

  function clearTimeout(id) {
    const ticket = intervals.has(id) ? intervals.get(id) : id;
    intervals.delete(id);
    if (pending.delete(ticket)) call(OP.TicketCancel, { ticket });
  }

  function setInterval(callback, ms, ...args) {
    if (typeof callback !== "function") throw new TypeError("setInterval: callback must be a function");
    let id;
    const tick = () => {
      intervals.set(id, schedule(ms, tick));
      callback(...args);
    };
    id = schedule(ms, tick);
    intervals.set(id, id);
    return id;
  }

  // ---------------------------------------------------------------- process
  // A script may end itself with process.exit(code) or set process.exitCode.
  // There is no environment: the sandbox grants none.
  const processObject = {
    env: {},
    argv: [],
    platform: "wasi",
    exitCode: undefined,
    exit(code) {
      const n = code === undefined ? Number(processObject.exitCode || 0) : Number(code);
      call(OP.Exit, { code: Number.isInteger(n) ? n : 1 });
    },
  };

  // ----------------------------------------------------------------- errors
  let scriptName = "";
  // The name this file is evaluated under (guest-sdk/javy-plugin).
  const SDK_FILE = "mizzen:brigadier.js";

  // The location of an error in the user's script, from its stack.
  function location(error) {
    if (!error || typeof error.stack !== "string" || scriptName === "") return "";
    for (const line of error.stack.split("\n")) {
      const at = line.indexOf(scriptName + ":");
      if (at >= 0) {
        const m = /^([^):]+:\d+(:\d+)?)/.exec(line.slice(at));
        if (m) return m[1];
      }
    }
    return "";
  }

  // The stack without the library's own frames, which tell a script's
  // author nothing; null when nothing is left.
  function scriptStack(error) {
    if (typeof error.stack !== "string") return null;
    const frames = error.stack.split("\n").filter((line) => line.trim() !== "" && !line.includes(SDK_FILE));
    return frames.length > 0 ? frames.join("\n") : null;
  }

  function describe(reason) {
    if (reason instanceof Error) {
      const where = location(reason);
      const text = `${reason.name || "Error"}: ${reason.message}`;
      return { message: where ? `${where}: ${text}` : text, stack: scriptStack(reason) };
    }
    return { message: `non-error value thrown: ${inspect(reason)}`, stack: null };
  }

  function reportError(kind, reason) {
    const { message, stack } = describe(reason);
    call(OP.ScriptError, { kind, message, stack });
  }

  Object.assign(globalThis, {
    console: consoleObject,
    setTimeout,
    clearTimeout,
    setInterval,
    clearInterval: clearTimeout,
    setImmediate: (callback, ...args) => setTimeout(callback, 0, ...args),
    clearImmediate: clearTimeout,
    queueMicrotask: (callback) => {
      Promise.resolve().then(callback);
    },
    process: processObject,
    require,
    __filename: "",
    __dirname: ".",
  });
  // A CommonJS script runs as a global script and finds Node's `module` and
  // `exports` as globals, made on first use (few Brigade scripts export).
  let currentModule;
  const moduleObject = () => {
    if (currentModule === undefined) {
      currentModule = { exports: {}, id: ".", filename: scriptName, loaded: false };
    }
    return currentModule;
  };
  Object.defineProperties(globalThis, {
    module: { get: moduleObject, set: (value) => (currentModule = value), configurable: true },
    exports: { get: () => moduleObject().exports, set: (value) => (moduleObject().exports = value), configurable: true },
  });

  // An event's property names and object shapes, created once here so that
  // they are part of the snapshot: parsing each event's JSON then reuses them
  // instead of building them anew. The keys are in the host's order.
  const eventTemplate = JSON.parse(
    '{"id":"","project":{"id":"","kubernetes":{"namespace":""},"secrets":{}},"source":"","type":"",' +
      '"qualifiers":null,"labels":null,"shortTitle":"","longTitle":"","payload":"",' +
      '"worker":{"apiAddress":"","apiToken":"","logLevel":"INFO","configFilesDirectory":"",' +
      '"defaultConfigFiles":null,"git":{"cloneURL":"","commit":"","ref":"","initSubmodules":false}}}',
  );

  return {
    eventTemplate,
    brigadier,
    require,
    complete,
    reportError,
    exitCode: () => Number(processObject.exitCode || 0),
    // Whether any ticket is still wanted. Every ticket the script holds is
    // in `pending`, so when it is empty waiting on the host is pointless.
    waiting: () => pending.size > 0,
    // Called before each script runs.
    beginScript: (name) => {
      scriptName = name;
      bundle = null;
      currentModule = undefined;
      globalThis.__filename = name;
    },
  };
});
