"""The Python device SDK (`sdk/python`, installed into the suite's venv by
run.sh) against a real node: telemetry and events reach the node, bad
credentials are refused as such, buffered telemetry is delivered after a node
restart, the offline buffer's bound holds, the example device runs; shadow and
commands end to end once the node's device service answers."""

import json
import os
import subprocess
import sys
import time
import urllib.parse
import uuid

import pytest

from test_paho_auth import cli_hash
from verge_interop import REPO, V5, Client, Node, node_api

verge_device = pytest.importorskip(
    "verge_device", reason="the SDK is not installed: run tests/interop/run.sh "
    "(it installs ./sdk/python)")
from verge_device import ConnectError, Device, ShadowRejected  # noqa: E402

SECRET = "s3cret-sdk"
DEVICES = ["sdk1", "sdk2", "sdk3", "sdk4", "sdk5", "sdk6"]
NO_DEVICE_SERVICE = ("the node's device service (issue 20, node part) does not answer "
                     "$shadow/{d}/get yet")


def registry(h):
    """Devices allowed their own `devices/%u/#` and `$shadow/%u/#`."""
    out = ""
    for d in DEVICES:
        out += f"""[[devices]]
username = "{d}"
password_hash = "{h}"
[[devices.acl]]
permission = "allow"
action = "all"
topic = "devices/%u/#"
[[devices.acl]]
permission = "allow"
action = "all"
topic = "$shadow/%u/#"
[[devices.acl]]
permission = "deny"
action = "all"
topic = "#"
"""
    return out


# What the node receives from a device is written to its store by this
# rule, so a test can read it from the node's API after a restart.
SEEN_RULE = """
[[rules]]
id = "seen"
sql = '''SELECT topic(2) AS device, seq FROM "devices/+/telemetry"'''
[[rules.actions]]
type = "store"
"""


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    reg = tmp_path_factory.mktemp("registry") / "devices.toml"
    reg.write_text(registry(cli_hash(SECRET)))
    n = Node(extra=f'devices_file = "{reg}"', tail=SEEN_RULE)
    yield n
    n.stop()


def url(node):
    return f"mqtt://127.0.0.1:{node.tcp}"


def device(node, name, **kw):
    kw.setdefault("reconnect_min_s", 0.2)
    kw.setdefault("reconnect_max_s", 1)
    return Device(url(node), name, SECRET, **kw)


def stored_seqs(node, name):
    q = urllib.parse.urlencode({"device": name, "metric": "seq", "from": 0, "limit": 1000})
    answer = node_api(node, f"/api/store/query?{q}")
    return sorted(int(s["value"]) for s in answer["samples"])


def wait_for(what, check, timeout=20):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    pytest.fail(f"{what} within {timeout} s; last: {last!r}")


def test_telemetry_and_events_reach_the_node(node):
    spy = Client(node, V5)
    spy.sub("devices/sdk1/#", 1)
    d = device(node, "sdk1").connect(timeout=5)
    try:
        assert d.connected
        assert d.send_telemetry({"temperature": 21.5, "seq": 1})
        m = spy.recv()
        assert m.topic == "devices/sdk1/telemetry"
        assert json.loads(m.payload) == {"temperature": 21.5, "seq": 1}
        d.send_event("door", {"open": True})
        m = spy.recv()
        assert (m.topic, json.loads(m.payload)) == ("devices/sdk1/events/door", {"open": True})
    finally:
        d.close()
        spy.close()


def test_bad_credentials_are_refused_as_such(node):
    d = Device(url(node), "sdk1", "wrong")
    with pytest.raises(ConnectError) as e:
        d.connect(timeout=5)
    assert "credentials" in str(e.value)
    assert e.value.reason_code in (134, 135)
    d.close()
    with pytest.raises(ConnectError) as e:
        Device("mqtt://127.0.0.1:1", "sdk1", SECRET).connect(timeout=1)
    assert "cannot reach" in str(e.value)


def test_buffered_telemetry_is_delivered_after_a_node_restart(node):
    d = device(node, "sdk2").connect(timeout=5)
    try:
        for i in range(3):
            assert d.send_telemetry({"seq": i})
        wait_for("the first readings stored", lambda: stored_seqs(node, "sdk2") == [0, 1, 2])
        node.stop()
        wait_for("the device to see the connection drop", lambda: not d.connected, 10)
        for i in range(3, 8):
            assert d.send_telemetry({"seq": i}), "taken into the offline buffer"
        node.start()
        assert d.wait_connected(15), "the device reconnected"
        wait_for("every reading stored, the buffered ones too",
                 lambda: stored_seqs(node, "sdk2") == list(range(8)))
        assert d.dropped == 0
        # and it goes on sending on the new connection
        assert d.send_telemetry({"seq": 8})
        wait_for("a reading after the restart", lambda: 8 in stored_seqs(node, "sdk2"))
    finally:
        d.close()


def test_the_offline_buffer_bound_holds(node):
    d = device(node, "sdk3", offline_buffer=4).connect(timeout=5)
    try:
        node.stop()
        wait_for("the device to see the connection drop", lambda: not d.connected, 10)
        taken = [d.send_telemetry({"seq": i}) for i in range(10)]
        assert taken == [True] * 4 + [False] * 6
        assert d.dropped == 6
        node.start()
        assert d.wait_connected(15)
        wait_for("the buffered readings stored", lambda: stored_seqs(node, "sdk3") == [0, 1, 2, 3])
        time.sleep(1.5)  # nothing else arrives
        assert stored_seqs(node, "sdk3") == [0, 1, 2, 3]
    finally:
        d.close()


def test_the_example_device_runs(node):
    spy = Client(node, V5)
    spy.sub("devices/sdk4/telemetry", 1)
    env = dict(os.environ, VERGE_SECRET=SECRET)
    out = subprocess.run(
        [sys.executable, str(REPO / "examples/devices/python/device.py"), "--url", url(node),
         "--device", "sdk4", "--interval", "0.1", "--count", "3"],
        env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    readings = [json.loads(m.payload) for m in spy.recv_n(3)]
    assert [r["seq"] for r in readings] == [0, 1, 2]
    assert all(isinstance(r["temperature"], float) for r in readings)
    assert "sent 3 readings" in out.stderr
    spy.close()


def shadow_service(d):
    """Skip unless the node answers the device's `$shadow/{d}/get`."""
    try:
        return d.get_shadow(timeout=3)
    except verge_device.Timeout:
        pytest.skip(NO_DEVICE_SERVICE)


def test_shadow_get_update_conflict_and_delta(node):
    d = device(node, "sdk5").connect(timeout=5)
    try:
        doc = shadow_service(d)
        deltas = []
        d.on_delta(lambda state, version: deltas.append((state, version)))
        v = doc.get("version", 0)
        doc = d.update_reported({"fw": "1.0"}, version=v)
        assert doc["reported"]["fw"] == "1.0" and doc["version"] == v + 1
        with pytest.raises(ShadowRejected) as e:
            d.update_reported({"fw": "2.0"}, version=v)
        assert e.value.code == "version_conflict"
        assert d.get_shadow()["reported"]["fw"] == "1.0"
        d.update_desired({"led": "on"})
        wait_for("a delta", lambda: [s for s, _ in deltas if s.get("led") == "on"], 10)
    finally:
        d.close()


def test_commands_are_answered_through_the_node(node):
    d = device(node, "sdk6").connect(timeout=5)
    try:
        shadow_service(d)
        runs = []

        @d.command("add")
        def add(payload):
            runs.append(payload)
            return {"sum": payload["a"] + payload["b"]}

        @d.command("fail")
        def fail(payload):
            raise RuntimeError("cannot do that")

        spy = Client(node, V5)
        spy.sub("devices/sdk6/replies/#", 1)
        now = int(time.time() * 1000)
        ok_id, bad_id = uuid.uuid4().hex, uuid.uuid4().hex
        for cid, name in [(ok_id, "add"), (bad_id, "fail")]:
            req = {"id": cid, "device": "sdk6", "name": name, "payload": {"a": 2, "b": 3},
                   "created_ms": now, "expires_ms": now + 60_000}
            # what the node's bridge publishes locally for a cloud's command
            spy.pub("$verge/commands/sdk6", json.dumps(req), 1)
        got = {m.topic: m.payload for m in spy.recv_n(2, timeout=10)}
        assert json.loads(got[f"devices/sdk6/replies/{ok_id}"]) == {"sum": 5}
        assert got[f"devices/sdk6/replies/{bad_id}/failed"] == b"cannot do that"
        assert len(runs) == 1
        spy.close()
    finally:
        d.close()
