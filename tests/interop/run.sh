#!/usr/bin/env bash
# Interop tests of the Verge broker with the third-party Python client
# paho-mqtt. Needs the verge binary (VERGE_BIN, default target/debug/verge).
set -euo pipefail
cd "$(dirname "$0")/../.."
export VERGE_BIN="${VERGE_BIN:-$PWD/target/debug/verge}"
[ -x "$VERGE_BIN" ] || { echo "build verge first: cargo build -p verge" >&2; exit 1; }
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -r tests/interop/requirements.txt
exec .venv/bin/python -m pytest tests/interop -q -p no:cacheprovider "$@"
