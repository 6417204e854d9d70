#!/usr/bin/env python3
"""An OTLP/HTTP receiver (protobuf encoding) for Mizzen's tests of log and
trace export: the decoding is the official generated classes of PyPI's
opentelemetry-proto. scripts/setup-collectors installs them in DIR/venv and
copies this file to DIR; the tests start it as a child process and kill it:

    DIR/venv/bin/python DIR/otlp-receiver.py --out FILE [--port N]
        [--host ADDR] [--fail-first N]

--port 0 (the default) takes any free port; --host defaults to 127.0.0.1.
--fail-first N answers the first N POSTs (to any path) with 503 and records
nothing of them.

Routes: POST /v1/logs and POST /v1/traces, with a body of
ExportLogsServiceRequest / ExportTraceServiceRequest, optionally
Content-Encoding: gzip. Anything else is 404 (a Content-Type other than
application/x-protobuf is 415); a body that does not decode is 400 with the
error as text. A request is answered 200 with the empty Export*ServiceResponse
only once its records are written to FILE, one JSON line each:

    {"kind": "log", "resource": {ATTRS}, "scope": "NAME",
     "time_unix_nano": N, "observed_time_unix_nano": N,
     "severity_number": N, "severity_text": "...", "body": VALUE,
     "attributes": {ATTRS}}
    {"kind": "span", "resource": {ATTRS}, "scope": "NAME",
     "trace_id": "32 hex", "span_id": "16 hex", "parent_span_id": "hex or ''",
     "name": "...", "start_time_unix_nano": N, "end_time_unix_nano": N,
     "attributes": {ATTRS}, "status_code": N}

An AnyValue becomes its Python value (string, int, bool, float; bytes as hex;
arrays as lists, kvlists as objects; unset as null). Once listening it prints
`listening PORT` on stdout.
"""
import argparse
import gzip
import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest, ExportLogsServiceResponse)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest, ExportTraceServiceResponse)


def value(v):
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return attrs(v.kvlist_value.values)
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, kind)


def attrs(kvs):
    return {kv.key: value(kv.value) for kv in kvs}


def log_lines(req):
    for rl in req.resource_logs:
        resource = attrs(rl.resource.attributes)
        for sl in rl.scope_logs:
            for r in sl.log_records:
                yield {"kind": "log", "resource": resource, "scope": sl.scope.name,
                       "time_unix_nano": r.time_unix_nano,
                       "observed_time_unix_nano": r.observed_time_unix_nano,
                       "severity_number": r.severity_number,
                       "severity_text": r.severity_text,
                       "body": value(r.body), "attributes": attrs(r.attributes)}


def span_lines(req):
    for rs in req.resource_spans:
        resource = attrs(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                yield {"kind": "span", "resource": resource, "scope": ss.scope.name,
                       "trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(),
                       "parent_span_id": s.parent_span_id.hex(), "name": s.name,
                       "start_time_unix_nano": s.start_time_unix_nano,
                       "end_time_unix_nano": s.end_time_unix_nano,
                       "attributes": attrs(s.attributes), "status_code": s.status.code}


ROUTES = {
    "/v1/logs": (ExportLogsServiceRequest, ExportLogsServiceResponse, log_lines),
    "/v1/traces": (ExportTraceServiceRequest, ExportTraceServiceResponse, span_lines),
}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as exporters expect

    def reply(self, code, body=b"", content_type="text/plain"):
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.reply(404, b"not found\n")

    def do_POST(self):
        # Read the body first, whatever the answer, so the connection stays usable.
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        server = self.server
        with server.lock:
            if server.failures_left > 0:
                server.failures_left -= 1
                return self.reply(503, b"failing as asked (--fail-first)\n")
        route = ROUTES.get(self.path.split("?")[0])
        if route is None:
            return self.reply(404, b"not found\n")
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        if content_type != "application/x-protobuf":
            return self.reply(415, f"unsupported Content-Type {content_type!r}\n".encode())
        request_class, response_class, lines = route
        try:
            if (self.headers.get("Content-Encoding") or "").lower() == "gzip":
                body = gzip.decompress(body)
            request = request_class.FromString(body)
            text = "".join(json.dumps(line) + "\n" for line in lines(request))
        except Exception as e:  # DecodeError, a bad gzip stream, ...
            return self.reply(400, f"{type(e).__name__}: {e}\n".encode())
        data = text.encode()
        with server.lock:  # one request's lines together, in the order answered
            while data:
                data = data[os.write(server.out, data):]
        self.reply(200, response_class().SerializeToString(), "application/x-protobuf")

    def log_message(self, format, *args):
        pass  # no line on stderr for each request


def main():
    parser = argparse.ArgumentParser(description="OTLP/HTTP protobuf receiver for tests")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--out", required=True)
    parser.add_argument("--fail-first", type=int, default=0)
    args = parser.parse_args()

    try:
        server = ThreadingHTTPServer((args.host, args.port), Handler)
    except OSError as e:
        sys.exit(f"otlp-receiver: cannot listen on {args.host}:{args.port}: {e}")
    server.daemon_threads = True
    server.lock = threading.Lock()
    server.failures_left = args.fail_first
    # Unbuffered: a request's lines are in FILE (one write) before its answer.
    server.out = os.open(args.out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    # Nothing is left to flush when stopped: exit at once, whatever the
    # request threads are doing.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: os._exit(0))
    print(f"listening {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
