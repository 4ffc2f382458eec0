#!/usr/bin/env bash
# Interop tests of the Verge broker with the third-party Python client
# paho-mqtt (and mosquitto_pub/sub where installed).
#
#   bash tests/interop/run.sh [pytest args...]
#
# Needs the verge binary: VERGE_BIN, default target/debug/verge (or
# $CARGO_TARGET_DIR/debug/verge), as built by `cargo build` / `cargo test`.
# Uses a venv at .venv in the repo root. Exits with pytest's exit code.
set -euo pipefail
cd "$(dirname "$0")/../.."
default_bin="${CARGO_TARGET_DIR:-target}/debug/verge"
VERGE_BIN="${VERGE_BIN:-$default_bin}"
case "$VERGE_BIN" in /*) ;; *) VERGE_BIN="$PWD/$VERGE_BIN" ;; esac
export VERGE_BIN
if [ ! -x "$VERGE_BIN" ]; then
  echo "run.sh: no verge binary at $VERGE_BIN; build it first: cargo build -p verge" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r tests/interop/requirements.txt
# The Python device SDK from this checkout (test_sdk_python.py uses it).
.venv/bin/python -m pip install -q --disable-pip-version-check ./sdk/python
set +e
.venv/bin/python -m pytest tests/interop -q -p no:cacheprovider "$@"
exit $?
