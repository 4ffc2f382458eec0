#!/usr/bin/env bash
# Runs `verge bench broker` and `verge bench connections` against a Verge node
# and a Mosquitto broker (Debian package) on this machine, one after the
# other, each broker in its own process. Prints the bench's tables.
# Usage: scripts/bench-vs-mosquitto.sh [DURATION_SECS]
set -euo pipefail
cd "$(dirname "$0")/.."
dur=${1:-10}
B=target/release/verge
[ -x "$B" ] || cargo build --release -p verge
command -v mosquitto >/dev/null || { echo "install mosquitto (apt-get install mosquitto)" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)" || true
tmp=$(mktemp -d)
VPORT=21883 MPORT=21884
cat > "$tmp/node.toml" <<TOML
[node]
data_dir = "$tmp/data"
[broker]
allow_anonymous = true
sys_interval = "0s"
max_connections = 200000
[broker.listeners.tcp]
enabled = true
bind = "127.0.0.1:$VPORT"
[broker.listeners.ws]
enabled = false
bind = "127.0.0.1:0"
path = "/mqtt"
TOML
cat > "$tmp/mosquitto.conf" <<CONF
listener $MPORT 127.0.0.1
allow_anonymous true
set_tcp_nodelay true
max_queued_messages 10000
CONF
"$B" node --config "$tmp/node.toml" >"$tmp/verge.log" 2>&1 & vpid=$!
mosquitto -c "$tmp/mosquitto.conf" >"$tmp/mosquitto.log" 2>&1 & mpid=$!
trap 'kill $vpid $mpid 2>/dev/null; wait $vpid $mpid 2>/dev/null; rm -rf "$tmp"' EXIT
sleep 1
for p in $vpid $mpid; do
  kill -0 "$p" 2>/dev/null || { echo "a broker failed to start:" >&2; cat "$tmp"/*.log >&2; exit 1; }
done
echo "### idle connections (10,000), on fresh brokers"
"$B" bench connections --port $VPORT --pid $vpid --count 10000 | grep -E "opened|RSS|per connection"
"$B" bench connections --port $MPORT --pid $mpid --count 10000 | grep -E "opened|RSS|per connection"

run() { # name port args...
  local name=$1 port=$2; shift 2
  echo "### $name: $*"
  "$B" bench broker --port "$port" --duration "$dur" "$@" | grep -E "published|delivered|p50|p99|lost"
}
for shape in "--publishers 1 --subscribers 1 --qos 0" \
             "--publishers 4 --subscribers 4 --qos 0" \
             "--publishers 1 --subscribers 1 --qos 1" \
             "--publishers 4 --subscribers 4 --qos 1" \
             "--publishers 1 --subscribers 1 --qos 0 --rate 10000" \
             "--publishers 1 --subscribers 1 --qos 1 --rate 10000"; do
  run verge $VPORT $shape
  run mosquitto $MPORT $shape
done
