#!/usr/bin/env bash
# Rebuilds the Javy plugin (mizzen_plugin.wasm) from source, reproducibly.
#
#   guest-sdk/javy-plugin/build.sh           rebuild and replace the committed copy
#   guest-sdk/javy-plugin/build.sh --check   rebuild into a scratch directory and fail
#                                            when the committed copy is stale
#
# Users never need this: the built plugin is committed and embedded in the
# runtime. It needs a wasm32-wasip1 Rust standard library and a C compiler for
# QuickJS. `rustup target add` works where the internet does; where it does
# not, Debian's packages provide everything (rustc-web with its std sources,
# wasi-libc, clang, lld), and this script installs them when they are missing.
#
# The output is byte-for-byte reproducible for a given toolchain: paths are
# remapped and the lock file is honoured. mizzen_plugin.wasm.inputs records a
# hash of every input file, the hash of the output and the toolchain, so that
# --check can tell a stale plugin (inputs changed, not rebuilt) from a
# toolchain that merely differs.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="$here/mizzen_plugin.wasm"
record="$here/mizzen_plugin.wasm.inputs"
mode="${1:-build}"

# Every file the plugin is built from. Adding a source file means adding it here
# (host-api/tests/op_codes.rs checks that the op codes' file is listed).
inputs=(
  guest-sdk/js/brigadier.js
  host-api/src/op_codes.rs
  guest-sdk/javy-plugin/Cargo.toml
  guest-sdk/javy-plugin/Cargo.lock
  guest-sdk/javy-plugin/build.sh
  guest-sdk/javy-plugin/src/lib.rs
)

inputs_hash() {
  (cd "$repo" && sha256sum "${inputs[@]}") | sha256sum | cut -d' ' -f1
}

sysroot=/opt/wasi-sysroot

install_toolchain() {
  if [ -x /usr/bin/rustc ] && /usr/bin/rustc --version | grep -q '^rustc 1\.9[6-9]' \
    && [ -d /usr/lib/rustlib/src/rust/library ] && [ -f /usr/lib/wasm32-wasi/libc.a ] \
    && command -v clang-16 >/dev/null && [ -x /usr/bin/wasm-ld-16 ]; then
    return
  fi
  echo "build.sh: installing the wasm32-wasip1 toolchain from Debian's packages" >&2
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    rustc-web cargo-web rust-web-src wasi-libc lld-16 clang-16 llvm-16 libclang-rt-16-dev-wasm32 >/dev/null
}

toolchain_description() {
  echo "rustc: $(/usr/bin/rustc --version)"
  echo "clang: $(clang-16 --version | head -n1)"
}

build_into() {
  local target_dir="$1"
  install_toolchain
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  if [ ! -e "$sysroot/include" ]; then
    # The layout clang and bindgen expect of a WASI sysroot.
    $sudo mkdir -p "$sysroot/lib"
    $sudo ln -sfn /usr/include/wasm32-wasi "$sysroot/include"
    $sudo ln -sfn /usr/lib/wasm32-wasi "$sysroot/lib/wasm32-wasi"
  fi
  local cargo_home="${CARGO_HOME:-$HOME/.cargo}"
  # Debian's rustc builds the standard library from source (-Zbuild-std);
  # RUSTC_BOOTSTRAP lets the stable compiler accept that flag.
  export RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1
  # rquickjs-sys would download a WASI SDK; use the system's clang instead.
  export RQUICKJS_SYS_NO_WASI_SDK=1
  export CC_wasm32_wasip1=clang-16 AR_wasm32_wasip1=llvm-ar-16
  local maps="-ffile-prefix-map=$cargo_home=/cargo -ffile-prefix-map=$here=/plugin -ffile-prefix-map=$target_dir=/target"
  # WebAssembly features every current engine has (wasmtime among them): bulk
  # memory turns memcpy/memset into single instructions, sign extension and
  # non-trapping conversions avoid emulation sequences.
  local features="-mbulk-memory -msign-ext -mnontrapping-fptoint -mmutable-globals"
  export CFLAGS_wasm32_wasip1="--sysroot=$sysroot $features $maps"
  export BINDGEN_EXTRA_CLANG_ARGS_wasm32_wasip1="--sysroot=$sysroot --target=wasm32-wasi"
  export RUSTFLAGS="-C linker=/usr/bin/wasm-ld-16 -C link-self-contained=no \
-C target-feature=+bulk-memory,+sign-ext,+nontrapping-fptoint,+mutable-globals \
-L /usr/lib/wasm32-wasi -L /usr/lib/llvm-16/lib/clang/16/lib/wasi \
--remap-path-prefix=$cargo_home=/cargo --remap-path-prefix=$here=/plugin \
--remap-path-prefix=$target_dir=/target --remap-path-prefix=$repo=/mizzen"
  unset CARGO_BUILD_RUSTFLAGS CARGO_ENCODED_RUSTFLAGS
  (cd "$here" && /usr/bin/cargo build --quiet --release --locked --target wasm32-wasip1 \
    -Zbuild-std=std,panic_abort --target-dir "$target_dir")
}

case "$mode" in
  build)
    build_into "$here/target"
    cp "$here/target/wasm32-wasip1/release/mizzen_javy_plugin.wasm" "$out"
    {
      echo "inputs-sha256: $(inputs_hash)"
      echo "wasm-sha256: $(sha256sum "$out" | cut -d' ' -f1)"
      toolchain_description
    } >"$record"
    echo "built $out ($(stat -c %s "$out") bytes)"
    ;;
  --check)
    recorded_inputs="$(sed -n 's/^inputs-sha256: //p' "$record")"
    recorded_wasm="$(sed -n 's/^wasm-sha256: //p' "$record")"
    if [ "$recorded_inputs" != "$(inputs_hash)" ]; then
      echo "build.sh --check: the plugin's sources changed since mizzen_plugin.wasm was built;" >&2
      echo "  run guest-sdk/javy-plugin/build.sh and commit the result" >&2
      exit 1
    fi
    if [ "$recorded_wasm" != "$(sha256sum "$out" | cut -d' ' -f1)" ]; then
      echo "build.sh --check: mizzen_plugin.wasm is not the file recorded in mizzen_plugin.wasm.inputs" >&2
      exit 1
    fi
    scratch="$here/target/check"
    build_into "$scratch"
    rebuilt="$scratch/wasm32-wasip1/release/mizzen_javy_plugin.wasm"
    if cmp -s "$rebuilt" "$out"; then
      echo "build.sh --check: mizzen_plugin.wasm is up to date (byte-identical rebuild)"
      exit 0
    fi
    if [ "$(toolchain_description)" = "$(grep -E '^(rustc|clang): ' "$record")" ]; then
      echo "build.sh --check: a rebuild with the recorded toolchain differs from mizzen_plugin.wasm" >&2
      exit 1
    fi
    echo "build.sh --check: sources unchanged; the rebuild differs only because the toolchain does:" >&2
    echo "  recorded: $(grep -E '^(rustc|clang): ' "$record" | tr '\n' ' ')" >&2
    echo "  here:     $(toolchain_description | tr '\n' ' ')" >&2
    ;;
  *)
    echo "usage: $0 [--check]" >&2
    exit 2
    ;;
esac
