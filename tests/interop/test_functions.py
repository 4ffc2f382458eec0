"""Edge functions as outside clients see them: a `verge node` whose config
file deploys WebAssembly functions and the Python process-worker example;
paho-mqtt devices publish, rules hand rows to the functions, functions
triggered by their own subscriptions answer, misbehaving functions are
counted while the node keeps serving, and functions deployed at run time
through the HTTP API (urllib) are invoked and deleted."""

import base64
import json
import sys
import time
import urllib.error
import urllib.request
import uuid

import pytest

from verge_interop import REPO, V3, V5, WAIT, Client, Node, node_request

WAT = REPO / "crates" / "verge-functions" / "tests" / "wat"
HANDLER = REPO / "examples" / "functions" / "python" / "handler.py"

FUNCTIONS = f"""
[[functions]]
name = "cfg"
path = '{WAT / "config.wat"}'
config = {{ tag = "interop" }}

[[functions]]
name = "alert"
runtime = "process"
command = ['{sys.executable}', '{HANDLER}']
config = {{ above = 30 }}

[[functions]]
name = "echo-sub"
path = '{WAT / "echo.wat"}'
subscribe = ["echo-in/#"]

[[functions]]
name = "bad"
path = '{WAT / "bad.wat"}'
subscribe = ["bad/in"]
limits = {{ fuel = 1000000, memory = 1048576 }}

[[functions]]
name = "crash"
runtime = "process"
command = ['{sys.executable}', "-c", "import sys; sys.stdin.readline(); sys.exit(3)"]
subscribe = ["crash/in"]

[[rules]]
id = "to-cfg"
sql = 'SELECT * FROM "devices/+/telemetry"'
[[rules.actions]]
type = "function"
name = "cfg"

[[rules]]
id = "to-alert"
sql = 'SELECT * FROM "devices/+/telemetry"'
[[rules.actions]]
type = "function"
name = "alert"
"""


@pytest.fixture(scope="module")
def node():
    n = Node(tail=FUNCTIONS)
    yield n
    n.stop()


def api(node, method, path, body=None, raw=None, content_type="application/json"):
    """One request to the node's HTTP API: (status, parsed JSON or text)."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    try:
        with node_request(node, method, path, data, content_type, timeout=WAIT) as r:
            text = r.read().decode()
            return r.status, (json.loads(text) if text and path != "/metrics" else text)
    except urllib.error.HTTPError as e:
        text = e.read().decode()
        return e.code, (json.loads(text) if text else None)


def metrics_of(node, name):
    st, f = api(node, "GET", f"/api/functions/{name}")
    assert st == 200, f
    return f["metrics"]


def metrics_when(node, name, ready, timeout=WAIT):
    """Poll a function's metrics until `ready(metrics)`; return them."""
    deadline = time.time() + timeout
    while True:
        m = metrics_of(node, name)
        if ready(m):
            return m
        if time.time() > deadline:
            pytest.fail(f"{name}'s metrics not as expected within {timeout} s: {m}")
        time.sleep(0.05)


def until_echoed(sub, pub, topic):
    """The node subscribes for a function in the background: publish probes
    on `topic` (which the subscriber `sub` also sees) until one comes back
    twice, the device's copy and the echo function's, then drain."""
    deadline = time.time() + WAIT
    while time.time() < deadline:
        probe = "probe-" + uuid.uuid4().hex[:6]
        pub.pub(topic, probe, 1)
        seen = [m.payload for m in sub.drain(0.3)]
        if seen.count(probe.encode()) == 2:
            sub.drain(0.3)
            return
    pytest.fail(f"no function echoed a publish to {topic} within {WAIT} s")


@pytest.mark.parametrize("proto", [V3, V5], ids=["v311", "v5"])
def test_rules_hand_readings_to_wasm_and_python_functions(node, proto):
    dev = "d-" + uuid.uuid4().hex[:8]
    watcher = Client(node, proto)
    watcher.sub("cfg", 1)
    watcher.sub(f"alerts/devices/{dev}/telemetry", 1)
    device = Client(node, proto, cid=dev)
    device.pub(f"devices/{dev}/telemetry", json.dumps({"temperature": 21.0}), 1)
    device.pub(f"devices/{dev}/telemetry", json.dumps({"temperature": 35.5}), 1)
    got = {}
    for m in watcher.recv_n(3):
        got.setdefault(m.topic, []).append(json.loads(m.payload))
    # The WebAssembly function answers every row with its config...
    assert got["cfg"] == [{"tag": "interop"}, {"tag": "interop"}]
    # ...the Python worker only the reading over 30.
    assert got[f"alerts/devices/{dev}/telemetry"] == [
        {"source": f"devices/{dev}/telemetry", "temperature": 35.5, "above": 30.0}
    ]
    watcher.nothing(0.5)
    for c in (watcher, device):
        c.close()
    assert metrics_of(node, "alert")["errors"] == 0


def test_subscribed_function_answers_and_is_not_fed_its_own_output(node):
    watcher = Client(node, V5)
    watcher.sub("echo-in/#", 1)
    device = Client(node, V5)
    until_echoed(watcher, device, "echo-in/probe")
    before = metrics_of(node, "echo-sub")["invocations"]
    device.pub("echo-in/d1", "hello", 1)
    # The device's message and the function's output, on the same topic
    # (echo.wat returns its input), which the function also subscribes to:
    # it is not called again for its own output.
    got = [(m.topic, m.payload) for m in watcher.recv_n(2)]
    assert got == [("echo-in/d1", b"hello"), ("echo-in/d1", b"hello")]
    watcher.nothing(0.5)
    assert metrics_of(node, "echo-sub")["invocations"] == before + 1
    for c in (watcher, device):
        c.close()


def test_misbehaving_functions_are_counted_and_the_node_keeps_serving(node):
    device = Client(node, V3)
    # Trap, endless loop (out of fuel), memory hog, returned error.
    for p in ("t", "l", "m", "e"):
        device.pub("bad/in", p, 1)
    # A worker that exits on its first request (and is restarted).
    device.pub("crash/in", "x", 1)

    m = metrics_when(node, "bad", lambda m: m["errors"] + m["timeouts"] >= 4)
    assert (m["invocations"], m["errors"], m["timeouts"]) == (4, 3, 1), m
    # The trigger runs up to `concurrency` calls at once: any of them may
    # have ended last.
    assert m["last_error"]["code"] in ("trap", "out_of_fuel", "function_error"), m
    m = metrics_when(node, "crash", lambda m: m["errors"] >= 1)
    assert m["last_error"]["code"] == "worker_exited", m

    # Everything else still works: rules into functions, and the functions
    # themselves (the bad one answers a harmless input).
    watcher = Client(node, V5)
    watcher.sub("cfg", 1)
    watcher.sub("alerts/devices/after/telemetry", 1)
    device.pub("devices/after/telemetry", json.dumps({"temperature": 40}), 1)
    topics = sorted(m.topic for m in watcher.recv_n(2))
    assert topics == ["alerts/devices/after/telemetry", "cfg"]
    st, out = api(node, "POST", "/api/functions/bad/invoke", {"payload": "fine"})
    assert (st, out["messages"]) == (200, []), out

    st, text = api(node, "GET", "/metrics")
    assert st == 200
    assert 'verge_function_errors_total{function="bad"} 3' in text.splitlines(), text
    assert 'verge_function_timeouts_total{function="bad"} 1' in text.splitlines(), text
    assert 'verge_function_invocations_total{function="cfg"}' in text
    assert "# TYPE verge_function_duration_seconds histogram" in text
    for c in (watcher, device):
        c.close()


def test_failed_invokes_answer_json_errors(node):
    st, out = api(node, "POST", "/api/functions/bad/invoke", {"payload": "t"})
    assert (st, out["error"]["code"]) == (422, "trap"), out
    st, out = api(node, "POST", "/api/functions/bad/invoke", {"payload": "l"})
    assert (st, out["error"]["code"]) == (504, "out_of_fuel"), out
    st, out = api(node, "POST", "/api/functions/nobody/invoke", {"payload": "x"})
    assert (st, out["error"]["code"]) == (404, "not_found"), out
    st, out = api(node, "POST", "/api/functions", {"name": "no good", "path": str(WAT / "echo.wat")})
    assert (st, out["error"]["code"]) == (400, "invalid_function"), out
    # Finding 2: the API reads no file on the node, and says nothing of it.
    st, out = api(node, "POST", "/api/functions", {"name": "peek", "path": "/etc/passwd"})
    assert (st, out["error"]["code"]) == (400, "invalid_function"), out
    assert "root:" not in out["error"]["message"], out
    # Finding 4: a cross-site "simple" POST (text/plain) deploys nothing.
    spec = json.dumps({"name": "xsite", "module_base64": base64.b64encode((WAT / "echo.wat").read_bytes()).decode(),
                       "subscribe": ["#"]}).encode()
    st, out = api(node, "POST", "/api/functions", raw=spec, content_type="text/plain")
    assert st == 415, out
    st, out = api(node, "GET", "/api/functions/xsite")
    assert st == 404, out
    st, out = api(node, "POST", "/api/functions",
                  {"name": "junk", "module_base64": base64.b64encode(b"junk").decode()})
    assert (st, out["error"]["code"]) == (422, "unusable_function"), out


def test_deploy_invoke_and_delete_at_run_time(node):
    echo = (WAT / "echo.wat").read_bytes()
    st, f = api(node, "POST", "/api/functions",
                {"name": "rt", "module_base64": base64.b64encode(echo).decode()})
    assert st == 201, f
    assert (f["name"], f["version"], f["runtime"]) == ("rt", 1, "wasm")

    st, out = api(node, "POST", "/api/functions/rt/invoke",
                  {"topic": "rt/in", "payload": {"temperature": 21.5}})
    assert st == 200, out
    assert out["messages"][0]["topic"] == "rt/in"
    assert json.loads(out["messages"][0]["payload"]) == {"temperature": 21.5}

    # With publish, a paho subscriber gets the output.
    watcher = Client(node, V5)
    watcher.sub("rt/out", 1)
    st, out = api(node, "POST", "/api/functions/rt/invoke",
                  {"topic": "rt/out", "payload": "to the broker", "publish": True})
    assert (st, out["published"]) == (200, True), out
    m = watcher.recv()
    assert (m.topic, m.payload) == ("rt/out", b"to the broker")

    # A new module by raw upload keeps the name and makes version 2.
    st, f = api(node, "PUT", "/api/functions/rt", raw=(WAT / "config.wat").read_bytes(),
                content_type="application/wasm")
    assert (st, f["version"]) == (200, 2), f
    st, out = api(node, "POST", "/api/functions/rt/invoke", {"payload": "x"})
    assert (st, out["messages"][0]["topic"], out["messages"][0]["payload"]) == (200, "cfg", "{}"), out

    # A function deployed at run time with `subscribe` is triggered.
    st, f = api(node, "PUT", "/api/functions/rt-sub",
                {"module_base64": base64.b64encode(echo).decode(), "subscribe": ["rt-sub/#"]})
    assert st == 201, f
    watcher.sub("rt-sub/#", 1)
    device = Client(node, V3)
    until_echoed(watcher, device, "rt-sub/probe")

    st, listed = api(node, "GET", "/api/functions")
    assert st == 200
    assert {"rt", "rt-sub", "cfg", "alert"} <= {f["name"] for f in listed}
    st, state = api(node, "GET", "/api/functions/rt/state")
    assert (st, state) == (200, {})

    for name in ("rt", "rt-sub"):
        st, _ = api(node, "DELETE", f"/api/functions/{name}")
        assert st == 204
        st, out = api(node, "GET", f"/api/functions/{name}")
        assert (st, out["error"]["code"]) == (404, "not_found"), out
    # Deleted, its subscription is gone too: only the device's copy arrives.
    device.pub("rt-sub/after", "alone", 1)
    m = watcher.recv()
    assert (m.topic, m.payload) == ("rt-sub/after", b"alone")
    watcher.nothing(0.5)
    for c in (watcher, device):
        c.close()
