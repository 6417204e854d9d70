#!/usr/bin/env bash
# Builds a Rust script (a bin crate that uses guest-sdk/rust) into a
# brigade.wasm module, reproducibly.
#
#   guest-sdk/rust/build.sh <module-dir> <output.wasm>           build, replace <output.wasm>
#                                                                and record <output.wasm>.inputs
#   guest-sdk/rust/build.sh <module-dir> <output.wasm> --check   fail when <output.wasm> is stale:
#                                                                sources changed since it was
#                                                                built, or a rebuild differs
#
# <module-dir> holds Cargo.toml, Cargo.lock and src/main.rs, with a path
# dependency on this directory. The module is a WASI command for
# wasm32-wasip1 (it exports `_start` and `memory`). It needs a wasm32-wasip1
# Rust standard library and wasm-ld: `rustup target add wasm32-wasip1` works
# where the internet does; where it does not, Debian's packages provide
# everything (rustc-web with its std sources, wasi-libc, lld), and this script
# installs them when they are missing. No C compiler is needed.
#
# The output is byte-for-byte reproducible for a given toolchain, wherever
# the repository is: paths are remapped, the lock file is honoured, and a
# module inside the repository is built from a copy at a fixed place (cargo
# hashes a path dependency's location into its symbols, so a clone elsewhere
# would otherwise build another module). <output.wasm>.inputs records a hash
# of every input file (this SDK, the host's op codes, the module's Cargo.toml,
# Cargo.lock and src/), the hash of the output and the toolchain, so that
# --check can tell a stale module (inputs changed, not rebuilt) from a
# toolchain that merely differs.
set -euo pipefail

sdk="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$sdk/../.." && pwd)"

usage() {
  echo "usage: $0 <module-dir> <output.wasm> [--check]" >&2
  exit 2
}

mode=build
args=()
for arg in "$@"; do
  case "$arg" in
    --check) mode=check ;;
    -*) usage ;;
    *) args+=("$arg") ;;
  esac
done
[ "${#args[@]}" -eq 2 ] || usage
[ -f "${args[0]}/Cargo.toml" ] || { echo "build.sh: ${args[0]}/Cargo.toml not found" >&2; exit 2; }
[ -f "${args[0]}/Cargo.lock" ] || { echo "build.sh: ${args[0]}/Cargo.lock not found (run cargo generate-lockfile there)" >&2; exit 2; }
module="$(cd "${args[0]}" && pwd)"
mkdir -p "$(dirname "${args[1]}")"
out="$(cd "$(dirname "${args[1]}")" && pwd)/$(basename "${args[1]}")"
record="$out.inputs"

# Every file a module is built from: the SDK's (named from the repository's
# root), and the module's own (named module/<path>, so that the record does not
# depend on where the module lives).
sdk_inputs=(
  guest-sdk/rust/build.sh
  guest-sdk/rust/Cargo.toml
  host-api/src/op_codes.rs
)
while IFS= read -r file; do
  sdk_inputs+=("guest-sdk/rust/$file")
done < <(cd "$sdk" && find src -type f | LC_ALL=C sort)
module_inputs=(Cargo.toml Cargo.lock)
while IFS= read -r file; do
  module_inputs+=("$file")
done < <(cd "$module" && find src -type f | LC_ALL=C sort)
for extra in build.rs .cargo/config.toml; do
  [ -f "$module/$extra" ] && module_inputs+=("$extra")
done

inputs_hash() {
  {
    (cd "$repo" && sha256sum "${sdk_inputs[@]}")
    (cd "$module" && sha256sum "${module_inputs[@]}") | sed 's|  |  module/|'
  } | sha256sum | cut -d' ' -f1
}

install_toolchain() {
  if [ -x /usr/bin/rustc ] && /usr/bin/rustc --version | grep -q '^rustc 1\.9[6-9]' \
    && [ -x /usr/bin/cargo ] && [ -d /usr/lib/rustlib/src/rust/library ] \
    && [ -f /usr/lib/wasm32-wasi/libc.a ] && [ -f /usr/lib/wasm32-wasi/crt1-command.o ] \
    && [ -x /usr/bin/wasm-ld-16 ]; then
    return
  fi
  echo "build.sh: installing the wasm32-wasip1 toolchain from Debian's packages" >&2
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    rustc-web cargo-web rust-web-src wasi-libc lld-16 >/dev/null
}

toolchain_description() {
  echo "rustc: $(/usr/bin/rustc --version)"
  echo "wasm-ld: $(/usr/bin/wasm-ld-16 --version | head -n1)"
}

# Builds the module with target directory $1 and prints the path of the
# module it made.
build_into() {
  local target_dir="$1"
  install_toolchain
  local build_dir="$module"
  case "$module/" in
    "$repo"/*)
      # The SDK, the op codes and the module, copied to the same place for
      # every clone, under one lock (two builds at once would share it).
      local stage="${TMPDIR:-/tmp}/mizzen-rust-guest-build"
      mkdir -p "$stage"
      exec 9>"$stage.lock"
      flock 9
      local relative="${module#"$repo"/}"
      rm -rf "$stage/guest-sdk" "$stage/host-api" "$stage/$relative"
      mkdir -p "$stage/guest-sdk/rust" "$stage/host-api/src" "$stage/$relative"
      cp -r "$sdk/Cargo.toml" "$sdk/Cargo.lock" "$sdk/src" "$stage/guest-sdk/rust/"
      cp "$repo/host-api/src/op_codes.rs" "$stage/host-api/src/"
      (cd "$module" && tar cf - "${module_inputs[@]}") | tar xf - -C "$stage/$relative"
      build_dir="$stage/$relative"
      ;;
  esac
  local cargo_home="${CARGO_HOME:-$HOME/.cargo}"
  # Debian's rustc builds the standard library from source (-Zbuild-std);
  # RUSTC_BOOTSTRAP lets the stable compiler accept that flag.
  export RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1
  # A WASI command: wasi-libc's crt1-command.o provides `_start`, which calls
  # main and then proc_exit with a non-zero code. Paths that could end up in
  # the module (panic locations) are remapped; the module's own files are
  # compiled under their relative names (src/main.rs) already. The flags are
  # the same for every module, so that modules share one build of std.
  export RUSTFLAGS="-C linker=/usr/bin/wasm-ld-16 -C link-self-contained=no \
-C link-arg=/usr/lib/wasm32-wasi/crt1-command.o \
-C target-feature=+bulk-memory,+sign-ext,+nontrapping-fptoint,+mutable-globals \
-L /usr/lib/wasm32-wasi \
--remap-path-prefix=$cargo_home=/cargo --remap-path-prefix=$repo=/mizzen \
--remap-path-prefix=$sdk=/brigadier --remap-path-prefix=${TMPDIR:-/tmp}/mizzen-rust-guest-build=/mizzen \
--remap-path-prefix=$target_dir=/target"
  unset CARGO_BUILD_RUSTFLAGS CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_TARGET_DIR CARGO_TARGET_DIR
  # What every module needs whatever its Cargo.toml says: panics abort (std
  # is built with panic_abort), one codegen unit and LTO (small and
  # deterministic), no debug info. opt-level is the module's choice.
  export CARGO_PROFILE_RELEASE_PANIC=abort CARGO_PROFILE_RELEASE_LTO=true \
    CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 CARGO_PROFILE_RELEASE_STRIP=debuginfo \
    CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_INCREMENTAL=false
  local messages
  messages="$(cd "$build_dir" && /usr/bin/cargo build --quiet --release --locked --target wasm32-wasip1 \
    -Zbuild-std=std,panic_abort --target-dir "$target_dir" --message-format=json-render-diagnostics)"
  local wasm
  wasm="$(printf '%s\n' "$messages" | grep '"reason":"compiler-artifact"' \
    | sed -n 's/.*"executable":"\([^"]*\.wasm\)".*/\1/p' | tail -n1)"
  if [ -z "$wasm" ] || [ ! -f "$wasm" ]; then
    echo "build.sh: cargo built no .wasm executable in $module (is it a bin crate?)" >&2
    exit 1
  fi
  echo "$wasm"
}

case "$mode" in
  build)
    wasm="$(build_into "$sdk/target/wasm")"
    cp "$wasm" "$out"
    {
      echo "inputs-sha256: $(inputs_hash)"
      echo "wasm-sha256: $(sha256sum "$out" | cut -d' ' -f1)"
      toolchain_description
    } >"$record"
    echo "built $out ($(stat -c %s "$out") bytes)"
    ;;
  check)
    name="${out#"$repo"/}"
    if [ ! -f "$out" ] || [ ! -f "$record" ]; then
      echo "build.sh --check: $name or its .inputs record is missing; run guest-sdk/rust/build.sh" >&2
      exit 1
    fi
    recorded_inputs="$(sed -n 's/^inputs-sha256: //p' "$record")"
    recorded_wasm="$(sed -n 's/^wasm-sha256: //p' "$record")"
    if [ "$recorded_inputs" != "$(inputs_hash)" ]; then
      echo "build.sh --check: the sources of $name changed since it was built;" >&2
      echo "  run guest-sdk/rust/build.sh ${args[0]} ${args[1]} and commit the result" >&2
      exit 1
    fi
    if [ "$recorded_wasm" != "$(sha256sum "$out" | cut -d' ' -f1)" ]; then
      echo "build.sh --check: $name is not the file recorded in $(basename "$record")" >&2
      exit 1
    fi
    rebuilt="$(build_into "$sdk/target/wasm-check")"
    if cmp -s "$rebuilt" "$out"; then
      echo "build.sh --check: $name is up to date (byte-identical rebuild)"
      exit 0
    fi
    if [ "$(toolchain_description)" = "$(grep -E '^(rustc|wasm-ld): ' "$record")" ]; then
      echo "build.sh --check: a rebuild of $name with the recorded toolchain differs from it" >&2
      exit 1
    fi
    echo "build.sh --check: sources of $name unchanged; the rebuild differs only because the toolchain does:" >&2
    echo "  recorded: $(grep -E '^(rustc|wasm-ld): ' "$record" | tr '\n' ' ')" >&2
    echo "  here:     $(toolchain_description | tr '\n' ' ')" >&2
    ;;
esac
