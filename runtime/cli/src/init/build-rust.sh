#!/usr/bin/env bash
# Builds script/ (Rust, with the brigadier SDK in brigadier/) into
# .brigade/brigade.wasm: a wasm32-wasip1 WASI command, which `mizzen run .`
# and a Mizzen server run once per event.
#
# With rustup's wasm32-wasip1 target installed (`rustup target add
# wasm32-wasip1`) this is a plain `cargo build`. Without it (no internet for
# rustup), Debian's packages provide the same: rustc-web with its standard
# library's sources, wasi-libc and lld; they are installed when missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
mkdir -p .brigade
target="${CARGO_TARGET_DIR:-$PWD/script/target}"
if command -v rustup >/dev/null && rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
  (cd script && cargo build --release --target wasm32-wasip1 --target-dir "$target")
else
  if ! { [ -x /usr/bin/rustc ] && [ -d /usr/lib/rustlib/src/rust/library ] \
    && [ -f /usr/lib/wasm32-wasi/crt1-command.o ] && [ -x /usr/bin/wasm-ld-16 ]; }; then
    echo "build.sh: installing the wasm32-wasip1 toolchain from Debian's packages" >&2
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      rustc-web cargo-web rust-web-src wasi-libc lld-16 >/dev/null
  fi
  # Debian's rustc builds the standard library from source (-Zbuild-std),
  # which RUSTC_BOOTSTRAP lets a stable compiler do; wasi-libc's
  # crt1-command.o makes the module a command (its `_start` calls main).
  export RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1
  export RUSTFLAGS="-C linker=/usr/bin/wasm-ld-16 -C link-self-contained=no \
-C link-arg=/usr/lib/wasm32-wasi/crt1-command.o \
-C target-feature=+bulk-memory,+sign-ext,+nontrapping-fptoint,+mutable-globals \
-L /usr/lib/wasm32-wasi"
  (cd script && /usr/bin/cargo build --release --target wasm32-wasip1 \
    -Zbuild-std=std,panic_abort --target-dir "$target")
fi
cp "$target/wasm32-wasip1/release/script.wasm" .brigade/brigade.wasm
echo "built .brigade/brigade.wasm ($(stat -c %s .brigade/brigade.wasm) bytes)"
