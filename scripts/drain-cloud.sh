#!/usr/bin/env bash
# Drain of a queued backlog into a real cloud center (SQLite, or PostgreSQL
# when a URL is given), three runs (see BENCHMARKS.md).
# usage: scripts/drain-cloud.sh <label> [postgres-url]
set -euo pipefail
V=${VERGE_BIN:-target/release/verge}
D=$(mktemp -d /tmp/drain-cloud-XXXX)
DB=()
if [ -n "${2:-}" ]; then DB=(--set "cloud.database=$2"); fi
touch $D/reset.log
if [ -n "${2:-}" ]; then $V cloud "${DB[@]}" --set cloud.data_dir=$D --reset-admin-token > $D/reset.log; fi
$V cloud "${DB[@]}" --set http.bind=127.0.0.1:38080 --set mqtt.bind=127.0.0.1:38884 --set cloud.data_dir=$D > $D/cloud.log 2>&1 &
CP=$!
sleep 4
T=$(awk "/admin token: [0-9a-f]/{print \$3; exit}" $D/reset.log $D/cloud.log 2>/dev/null || true)
NAME=bench$RANDOM
J=$(VERGE_TOKEN=$T $V ctl --cloud http://127.0.0.1:38080 nodes create $NAME | python3 -c "import json,sys;print(json.load(sys.stdin)['join_token'])")
S=$(curl -s -X POST http://127.0.0.1:38080/api/agent/join -H 'content-type: application/json' -d "{\"token\":\"$J\"}" | python3 -c "import json,sys;print(json.load(sys.stdin)['secret'])")
for i in 1 2 3; do
  $V bench queue --policies group --duration 1 --backlog 0 --drain-messages 100000 --cloud-port 38884 --cloud-username $NAME --cloud-password $S 2>&1 | grep -iE "drain|link" | tail -3
done
kill $CP; wait $CP 2>/dev/null || true
