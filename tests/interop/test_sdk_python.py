"""The Python device SDK (`sdk/python`, installed into the suite's venv by
run.sh) against a real node: telemetry and events reach the node, bad
credentials are refused as such, buffered telemetry is delivered after a node
restart, the offline buffer's bound holds, the example device runs; shadow and
commands end to end once the node's device service answers."""

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

import pytest

from cloud_procs import procs, start_cloud, start_node  # noqa: F401 (procs: fixture)
from test_paho_auth import cli_hash
from verge_interop import REPO, V5, Client, Node, node_api

verge_device = pytest.importorskip(
    "verge_device", reason="the SDK is not installed: run tests/interop/run.sh "
    "(it installs ./sdk/python)")
from verge_device import ConnectError, Device, ShadowRejected  # noqa: E402

SECRET = "s3cret-sdk"
DEVICES = ["sdk1", "sdk2", "sdk3", "sdk4", "sdk5", "sdk6"]


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
        # like the Rust SDK: every send is taken, the oldest are dropped
        taken = [d.send_telemetry({"seq": i}) for i in range(10)]
        assert taken == [True] * 10
        assert d.dropped == 6
        node.start()
        assert d.wait_connected(15)
        wait_for("the newest buffered readings stored",
                 lambda: stored_seqs(node, "sdk3") == [6, 7, 8, 9])
        time.sleep(1.5)  # nothing else arrives
        assert stored_seqs(node, "sdk3") == [6, 7, 8, 9]
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
    """The device's shadow as the node answers `$shadow/{d}/get`."""
    return d.get_shadow(timeout=5)


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


def cloud_call(url, token, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as r:
        raw = r.read()
        return json.loads(raw) if raw else None


def test_commands_from_the_cloud_are_answered_by_the_sdk(procs):
    """A command sent through the cloud's API reaches the SDK's handler
    through the node; the reply (or the failure) is stored with it."""
    workdir = tempfile.mkdtemp(prefix="verge-sdk-py-")
    cloud_url, admin = start_cloud(procs, workdir)
    created = cloud_call(cloud_url, admin, "POST", "/api/nodes", {"name": "edge-sdk"})
    node_id = created["node"]["id"]
    node, ports = start_node(procs, workdir, cloud_url, created["join_token"])
    wait_for("the node online", lambda: cloud_call(cloud_url, admin, "GET",
                                                     f"/api/nodes/{node_id}")["status"] == "online")
    secret = cloud_call(cloud_url, admin, "POST", "/api/devices",
                        {"name": "sdkc", "node_id": node_id})["secret"]
    d = Device(f"mqtt://127.0.0.1:{ports['tcp']}", "sdkc", secret, reconnect_max_s=1)
    # the node learns of the device with its next desired state
    wait_for("the device accepted by its node", lambda: _try_connect(d))
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

        def send(name, body):
            answer = cloud_call(cloud_url, admin, "POST", f"/api/devices/sdkc/commands/{name}", body)
            return answer["command"]["id"]

        def final(cid):
            def check():
                c = cloud_call(cloud_url, admin, "GET", f"/api/commands/{cid}")
                return c if c["status"] in ("replied", "failed", "expired") else None
            return wait_for(f"command {cid} answered", check, 30)

        ok = final(send("add", {"a": 2, "b": 3}))
        assert (ok["status"], ok["reply"]) == ("replied", {"sum": 5})
        bad = final(send("fail", {}))
        assert bad["status"] == "failed" and "cannot do that" in bad["error"]
        assert runs == [{"a": 2, "b": 3}], "each handler ran once"
    finally:
        d.close()


def _try_connect(d):
    try:
        d.connect(timeout=2)
        return True
    except ConnectError:
        return False


def test_rule_alarms_reach_the_cloud_also_from_offline(procs):
    """A rule's `alarm` action on a cloud-managed node raises the device's
    alarm in the cloud; a clear made while the cloud is down arrives when
    it is back (through the node's cache queue)."""
    from cloud_procs import Proc
    from cloud_procs import wait_for as proc_wait
    from verge_interop import free_port, port_open

    workdir = tempfile.mkdtemp(prefix="verge-sdk-alarms-")
    http, mqtt_port = free_port(), free_port()
    args = ["cloud", "--set", f"http.bind=127.0.0.1:{http}",
            "--set", f"mqtt.bind=127.0.0.1:{mqtt_port}",
            "--set", f"cloud.data_dir={workdir}/cloud"]
    cloud = Proc("cloud", args, workdir)
    procs.append(cloud)
    import re
    admin = proc_wait("the cloud's admin token", lambda: (
        m := re.search(r"admin token: (\S+)", cloud.output())) and m.group(1), cloud)
    proc_wait("the cloud listening", lambda: port_open(http), cloud)
    cloud_url = f"http://127.0.0.1:{http}"
    created = cloud_call(cloud_url, admin, "POST", "/api/nodes", {"name": "edge-alarms"})
    node_id = created["node"]["id"]
    node, ports = start_node(procs, workdir, cloud_url, created["join_token"])
    wait_for("the node online", lambda: cloud_call(cloud_url, admin, "GET",
                                                     f"/api/nodes/{node_id}")["status"] == "online")
    secret = cloud_call(cloud_url, admin, "POST", "/api/devices",
                        {"name": "sdka", "node_id": node_id})["secret"]
    cloud_call(cloud_url, admin, "POST", "/api/rules", {
        "id": "overheat", "node_id": node_id,
        "sql": 'SELECT temperature FROM "devices/+/telemetry"',
        "actions": [{"type": "alarm", "alarm_type": "overheat", "severity": "critical",
                     "message": "t={temperature}", "clear_when": "temperature < 50"}]})
    d = Device(f"mqtt://127.0.0.1:{ports['tcp']}", "sdka", secret, reconnect_max_s=1)
    wait_for("the device accepted by its node", lambda: _try_connect(d))

    def alarm():
        found = cloud_call(cloud_url, admin, "GET", "/api/devices/sdka/alarms")
        return found[0] if found else None

    try:
        # the rule reaches the node with its next desired state: send until raised
        def raised():
            d.send_telemetry({"temperature": 80})
            return alarm()
        a = wait_for("the alarm raised in the cloud", raised, 30)
        assert (a["type"], a["severity"], a["status"]) == ("overheat", "critical", "active")
        assert a["message"] == "t=80" and a["rule"] == "overheat" and a["node_id"] == node_id
        cloud.stop()
        d.send_telemetry({"temperature": 20})  # clears, while the cloud is down
        time.sleep(1)
        back = Proc("cloud-again", args, workdir)
        procs.append(back)
        proc_wait("the cloud listening again", lambda: port_open(http), back)
        a = wait_for("the clear made offline arriving", lambda: (
            (x := alarm()) and x["status"] == "cleared" and x), 30)
        assert a["type"] == "overheat"
    finally:
        d.close()
