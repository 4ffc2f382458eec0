"""The rule engine as outside clients see it: paho-mqtt devices publish to a
`verge node`, rules from the config file and from the node's HTTP API
republish what they select, windows aggregate; the HTTP API answers bad
input with JSON errors and exposes Prometheus metrics."""

import json
import urllib.error
import urllib.request
import uuid

import pytest

from verge_interop import V3, V5, Client, Node, node_request

RULES = r'''
[[rules]]
id = "hot"
sql = """
SELECT topic(2) AS device, temperature, clientid() AS client
FROM "devices/+/telemetry"
WHERE temperature > 30
"""
[[rules.actions]]
type = "republish"
topic = "alerts/{device}"
qos = 1

[[rules]]
id = "per-second"
sql = """SELECT topic(2) AS device, count(*) AS n, avg(temperature) AS avg_t
FROM "win/+/telemetry" GROUP BY topic(2), TUMBLING(1s)"""
[[rules.actions]]
type = "republish"
topic = "stats/{device}"
'''


@pytest.fixture(scope="module")
def node():
    n = Node(tail=RULES)
    yield n
    n.stop()


def api(node, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    try:
        with node_request(node, method, path, data) as r:
            text = r.read().decode()
            return r.status, (json.loads(text) if text and path != "/metrics" else text)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read().decode())


@pytest.mark.parametrize("proto", [V3, V5], ids=["v311", "v5"])
def test_config_rule_republishes_matching_readings(node, proto):
    dev = "d-" + uuid.uuid4().hex[:8]
    watcher = Client(node, proto)
    watcher.sub(f"alerts/{dev}", 1)
    device = Client(node, proto, cid=dev)
    device.pub(f"devices/{dev}/telemetry", json.dumps({"temperature": 21.0}), 1)
    device.pub(f"devices/{dev}/telemetry", json.dumps({"temperature": 35.5}), 1)
    device.pub(f"devices/{dev}/telemetry", "not json at all", 1)
    m = watcher.recv()
    assert m.topic == f"alerts/{dev}"
    assert json.loads(m.payload) == {"device": dev, "temperature": 35.5, "client": dev}
    watcher.nothing(0.5)
    watcher.close()
    device.close()


def test_tumbling_window_counts_per_device(node):
    watcher = Client(node, V5)
    watcher.sub("stats/+", 0)
    device = Client(node, V5)
    for t in (10, 20, 30):
        device.pub("win/w1/telemetry", json.dumps({"temperature": t}), 1)
    device.pub("win/w2/telemetry", json.dumps({"temperature": 5}), 1)
    got = {}
    # The window closes within about a second; readings may straddle two.
    while sum(v["n"] for v in got.get("stats/w1", [])) < 3:
        m = watcher.recv()
        got.setdefault(m.topic, []).append(json.loads(m.payload))
    if "stats/w2" not in got:
        m = watcher.recv()
        got.setdefault(m.topic, []).append(json.loads(m.payload))
    assert sum(v["n"] for v in got["stats/w1"]) == 3
    assert got["stats/w2"] == [{"device": "w2", "n": 1, "avg_t": 5.0}]
    watcher.close()
    device.close()


def test_api_creates_tests_and_deletes_rules(node):
    st, rules = api(node, "GET", "/api/rules")
    assert st == 200 and {r["id"] for r in rules} >= {"hot", "per-second"}

    st, r = api(node, "POST", "/api/rules", {
        "id": "api-rule",
        "sql": "SELECT upper(name) AS name FROM \"api/in\"",
        "actions": [{"type": "republish", "topic": "api/out"}],
    })
    assert st == 201, r
    watcher = Client(node, V3)
    watcher.sub("api/out", 0)
    p = Client(node, V3)
    p.pub("api/in", json.dumps({"name": "verge"}), 1)
    assert json.loads(watcher.recv().payload) == {"name": "VERGE"}

    st, out = api(node, "POST", "/api/rules/test", {
        "sql": "SELECT name, length(name) AS len FROM \"api/in\" WHERE length(name) > 2",
        "samples": [{"topic": "api/in", "payload": {"name": "ab"}},
                    {"topic": "api/in", "payload": {"name": "abc"}}],
    })
    assert st == 200, out
    assert out["rows"] == [{"name": "abc", "len": 3}]

    st, r = api(node, "DELETE", "/api/rules/api-rule")
    assert st == 204
    p.pub("api/in", json.dumps({"name": "gone"}), 1)
    watcher.nothing(0.5)
    watcher.close()
    p.close()


def test_api_errors_are_json_and_change_nothing(node):
    st, before = api(node, "GET", "/api/rules")
    st, e = api(node, "POST", "/api/rules", {"id": "bad", "sql": "SELECT temperature\nFROM devices"})
    assert st == 400
    assert e["error"]["code"] == "invalid_sql"
    assert e["error"]["line"] == 2, e
    st, e = api(node, "POST", "/api/rules", {"id": "hot", "sql": "SELECT * FROM \"x\""})
    assert (st, e["error"]["code"]) == (409, "exists")
    st, e = api(node, "PUT", "/api/rules/nope", {"sql": "SELECT * FROM \"x\""})
    assert (st, e["error"]["code"]) == (404, "not_found")
    st, e = api(node, "POST", "/api/rules", {"id": "x", "sql": "SELECT * FROM \"x\"",
                                             "actions": [{"type": "republish", "topic": "a/#"}]})
    assert (st, e["error"]["code"]) == (400, "invalid_action"), e
    st, after = api(node, "GET", "/api/rules")
    assert [r["id"] for r in after] == [r["id"] for r in before]


def test_metrics_expose_rule_counters(node):
    dev = "m-" + uuid.uuid4().hex[:8]
    p = Client(node, V3)
    p.pub(f"devices/{dev}/telemetry", json.dumps({"temperature": 40}), 1)
    p.close()
    st, text = api(node, "GET", "/metrics")
    assert st == 200
    assert 'verge_rule_running{rule="hot"} 1' in text
    assert "verge_broker_clients_connected" in text
    line = next(l for l in text.splitlines() if l.startswith('verge_rule_rows_total{rule="hot"}'))
    assert int(line.split()[-1]) >= 1, line


def test_live_rule_and_dry_run_read_payloads_exactly(node):
    # Issue 17: payload floats were read 1 ULP off, INT/FLOAT comparisons
    # rounded the INT, and the dry run sorted the keys of SELECT *.
    sql = ('SELECT *, a = 10928588.983213553 AS eq, m > 9007199254740992.0 AS gt '
           'FROM "exact/in"')
    payload = '{"z": 1, "a": 10928588.983213553, "m": 9007199254740993}'
    want = '{"z":1,"a":10928588.983213553,"m":9007199254740993,"eq":true,"gt":true}'
    st, r = api(node, "POST", "/api/rules", {
        "id": "exact", "sql": sql,
        "actions": [{"type": "republish", "topic": "exact/out"}],
    })
    assert st == 201, r
    watcher = Client(node, V5)
    watcher.sub("exact/out", 1)
    device = Client(node, V5)
    device.pub("exact/in", payload, 1)
    assert watcher.recv().payload.decode() == want
    st, out = api(node, "POST", "/api/rules/test", {
        "sql": sql, "samples": [{"topic": "exact/in", "payload": json.loads(payload)}],
    })
    assert st == 200, out
    assert len(out["rows"]) == 1, out
    assert json.dumps(out["rows"][0], separators=(",", ":")) == want
    st, _ = api(node, "DELETE", "/api/rules/exact")
    assert st == 204
    watcher.close()
    device.close()
