#!/usr/bin/env bash
# Idle RSS of a cloud center and a joined node after three devices were
# created and logged in (see BENCHMARKS.md, "Build and footprint").
# usage: scripts/cloud-rss.sh [VAR=value for the node process]
set -uo pipefail
V=${VERGE_BIN:-target/release/verge}
D=$(mktemp -d /tmp/noderss-XXXX)
$V cloud --set http.bind=127.0.0.1:58080 --set mqtt.bind=127.0.0.1:58884 --set cloud.data_dir=$D/cloud > $D/cloud.log 2>&1 & CP=$!
sleep 3
export VERGE_TOKEN=$(awk '/admin token: [0-9a-f]/{print $3; exit}' $D/cloud.log)
C="--cloud http://127.0.0.1:58080"
J=$($V ctl $C nodes create n1 | python3 -c "import json,sys;print(json.load(sys.stdin)['join_token'])")
declare -A SEC
for d in a1 a2 a3; do SEC[$d]=$($V ctl $C devices create $d --node n1 | python3 -c "import json,sys;print(json.load(sys.stdin)['secret'])"); done
env ${1:-X=1} $V node $C --join $J --set node.data_dir=$D/node --set broker.listeners.tcp.bind=127.0.0.1:51883 --set broker.listeners.ws.enabled=false --set coap.enabled=false --set http.bind=127.0.0.1:58081 > $D/node.log 2>&1 & NP=$!
sleep 3
echo "node before devices: $(grep VmRSS /proc/$NP/status)"
PIDS=()
for d in a1 a2 a3; do $V device simulate --node 127.0.0.1:51883 --device $d --secret ${SEC[$d]} --quiet > /dev/null 2>&1 & PIDS+=($!); done
sleep 8
echo "node with 3 devices: $(grep VmRSS /proc/$NP/status)"
echo "cloud: $(grep VmRSS /proc/$CP/status)"
kill ${PIDS[@]} $NP $CP; wait 2>/dev/null; rm -rf $D
