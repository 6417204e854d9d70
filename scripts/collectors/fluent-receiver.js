#!/usr/bin/env node
// A Fluentd Forward-protocol receiver for Mizzen's tests of log forwarding:
// the decoding is a third party's, the FluentServer of @fluent-org/logger
// (Message, Forward, PackedForward and CompressedPackedForward modes, `chunk`
// acks, the shared-key HELO/PING/PONG handshake, TLS). scripts/setup-collectors
// installs the package and copies this file beside its node_modules; the tests
// start it as a child process and kill it:
//
//   node DIR/fluent-receiver.js --out FILE [--port N] [--host ADDR]
//       [--shared-key KEY [--hostname NAME]] [--tls-key FILE --tls-cert FILE]
//
// --port 0 (the default) takes any free port; --host defaults to 127.0.0.1.
// With --shared-key a client must pass the handshake, with a hostname other
// than the server's (NAME, default fluent-receiver); no user authorization.
//
// Once listening it prints `listening PORT` on stdout. Each entry received is
// appended to FILE as one JSON line:
//
//   {"tag":"app.web","time":1700000000.123456789,"record":{"msg":"hi"}}
//
// time is in seconds: an EventTime's seconds + nanoseconds/1e9 (a double, so
// about 0.2 µs of precision), or the integer or float the client sent.
// Binary values in the record are UTF-8 decoded into strings. A connection
// that fails to decode or to authenticate is closed, and nothing is written.
"use strict";
const fs = require("fs");
const path = require("path");
const { FluentServer, EventTime } = require(
  path.join(__dirname, "node_modules", "@fluent-org/logger"));

function usage(message) {
  process.stderr.write(`fluent-receiver: ${message}\n`);
  process.exit(2);
}

const opts = { port: "0", host: "127.0.0.1" };
const names = ["port", "host", "out", "shared-key", "hostname", "tls-key", "tls-cert"];
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i += 2) {
  const name = argv[i].replace(/^--/, "");
  if (!argv[i].startsWith("--") || !names.includes(name)) usage(`unknown argument ${argv[i]}`);
  if (i + 1 >= argv.length) usage(`${argv[i]} needs a value`);
  opts[name] = argv[i + 1];
}
const port = Number(opts.port);
if (!Number.isInteger(port) || port < 0 || port > 65535) usage(`bad --port ${opts.port}`);
if (!opts.out) usage("--out FILE is required");
if (!!opts["tls-key"] !== !!opts["tls-cert"]) usage("--tls-key and --tls-cert go together");
if (opts.hostname && !opts["shared-key"]) usage("--hostname is only for --shared-key");

const options = { listenOptions: { port, host: opts.host } };
if (opts["shared-key"]) {
  options.security = {
    serverHostname: opts.hostname || "fluent-receiver",
    sharedKey: opts["shared-key"],
    authorize: false,
    userDict: {},
  };
}
if (opts["tls-key"]) {
  options.tlsOptions = {
    key: fs.readFileSync(opts["tls-key"]),
    cert: fs.readFileSync(opts["tls-cert"]),
  };
}

// Binary values (msgpack bin, and also str values whose first byte is 0x92,
// 0xdc, 0xdd or 0x1f: the server's stream decoder takes those for packed
// entries) come as Uint8Array.
function plain(v) {
  if (v instanceof Uint8Array) return Buffer.from(v).toString("utf8");
  if (v instanceof EventTime) return v.epoch + v.nano / 1e9;
  if (Array.isArray(v)) return v.map(plain);
  if (v !== null && typeof v === "object") {
    const o = {};
    for (const [k, x] of Object.entries(v)) o[k] = plain(x);
    return o;
  }
  return v;
}

const fd = fs.openSync(opts.out, "a");

class Receiver extends FluentServer {
  // The server writes a chunk's ack and then hands over its entries, in the
  // same tick; but a socket write often reaches the kernel at once, so a
  // client could see the ack while the entries are not yet in FILE, and a
  // SIGKILL then would lose acked entries (a client reading FILE on each ack
  // missed the entry every time). Deferring the socket's writes (and its
  // end, to keep the order) to a microtask puts them after the synchronous
  // writes to FILE below. handleConnection is private in the typings only.
  handleConnection(socket) {
    for (const method of ["write", "end"]) {
      const f = socket[method].bind(socket);
      socket[method] = (...args) => { queueMicrotask(() => f(...args)); return true; };
    }
    return super.handleConnection(socket);
  }

  onEntry(tag, time, record) {
    fs.writeSync(fd, JSON.stringify({ tag, time: plain(time), record: plain(record) }) + "\n");
  }
}

const server = new Receiver(options);
// `server.server` is the net/tls server (private in the typings): without a
// listener, a failed listen (port in use) would only be a stack trace.
server.server.on("error", (e) => {
  process.stderr.write(`fluent-receiver: ${e.message}\n`);
  process.exit(1);
});
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    fs.closeSync(fd);
    process.exit(0);
  });
}
server.listen().then(() => {
  fs.writeSync(1, `listening ${server.port}\n`);
});
