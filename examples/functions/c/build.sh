#!/usr/bin/env bash
# Build threshold.c into a WebAssembly module for the Verge ABI, version 1:
# freestanding (no libc, no WASI), so its only imports are the node's.
#   c/build.sh [OUT_DIR]   (default: <repo>/target/wasm-examples/c)
# Needs clang with the wasm32 target and wasm-ld (Debian: apt-get install
# clang lld). CC and WASM_LD override the tools found.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out_dir="${1:-$here/../../../target/wasm-examples/c}"

cc="${CC:-}"
if [ -z "$cc" ]; then
  for c in clang $(compgen -c clang- | grep -E '^clang-[0-9]+$' | sort -t- -k2 -rn); do
    if command -v "$c" >/dev/null; then cc="$c"; break; fi
  done
fi
[ -n "$cc" ] || { echo "c/build.sh: no clang found (apt-get install clang lld)" >&2; exit 1; }

# clang runs `wasm-ld` from PATH or its own bin directory; Debian's lld
# package may only install `wasm-ld-<version>`, so then name it explicitly.
ld_flags=()
if [ -n "${WASM_LD:-}" ]; then
  ld_flags=(-fuse-ld="$WASM_LD")
elif ! command -v wasm-ld >/dev/null && [ ! -x "$(dirname "$(command -v "$cc")")/wasm-ld" ]; then
  ld="$(compgen -c wasm-ld- | sort -t- -k3 -rn | head -n1)"
  [ -n "$ld" ] || { echo "c/build.sh: no wasm-ld found (apt-get install lld)" >&2; exit 1; }
  ld_flags=(-fuse-ld="$(command -v "$ld")")
fi

mkdir -p "$out_dir"
# Exports are marked in the source (export_name); --export-dynamic is not
# needed. wasm-ld exports `memory` by default.
"$cc" --target=wasm32 -nostdlib -ffreestanding -Os -Wall -Wextra -Werror \
  "${ld_flags[@]}" \
  -Wl,--no-entry -Wl,--strip-all \
  -o "$out_dir/threshold.wasm" "$here/threshold.c"
echo "$(cd "$out_dir" && pwd)/threshold.wasm"
