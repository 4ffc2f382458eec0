#!/usr/bin/env bash
# Build every example function as a WebAssembly module:
#   Rust -> <repo>/target/wasm-examples/wasm32-unknown-unknown/release/<name>.wasm
#   C    -> <repo>/target/wasm-examples/c/threshold.wasm (only when clang is found)
# and print where they are. Usage: examples/functions/build.sh (from anywhere).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
target_dir="$repo/target/wasm-examples"
triple=wasm32-unknown-unknown

# The wasm32 standard library must be installed for the toolchain in use.
if [ ! -d "$(rustc --print sysroot)/lib/rustlib/$triple/lib" ]; then
  if command -v rustup >/dev/null; then
    rustup target add "$triple"
  else
    echo "build.sh: the $triple target is not installed (rustup target add $triple)" >&2
    exit 1
  fi
fi

cargo build --release --target "$triple" \
  --manifest-path "$here/Cargo.toml" --target-dir "$target_dir"

echo "Rust modules:"
for name in threshold unit_convert json_reshape counter echo; do
  f="$target_dir/$triple/release/$name.wasm"
  [ -f "$f" ] || { echo "build.sh: $f was not built" >&2; exit 1; }
  printf '  %-60s %7d bytes\n' "$f" "$(wc -c <"$f")"
done

if command -v clang >/dev/null || compgen -c clang- | grep -qE '^clang-[0-9]+$'; then
  c_out="$(bash "$here/c/build.sh" "$target_dir/c")"
  echo "C module:"
  printf '  %-60s %7d bytes\n' "$c_out" "$(wc -c <"$c_out")"
else
  echo "C module: skipped, no clang (apt-get install clang lld)"
fi
