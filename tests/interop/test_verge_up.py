"""`verge up`, the command a new user runs: a cloud center, a node joined
to it with all four listeners (TLS ones on a self-signed certificate made
in the data dir), simulated devices, and the demo rule and function set in
the cloud; a second `up` in the same directory reuses all of it."""

import os
import queue
import socket
import subprocess
import tempfile
import time
import json
import re
import urllib.error
import urllib.request
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from conftest import free_port
from verge_interop import node_token


def start_up(d, ports):
    env = dict(os.environ)
    for k in ("tcp", "tls", "ws", "wss"):
        env[f"VERGE__BROKER__LISTENERS__{k.upper()}__BIND"] = f"127.0.0.1:{ports[k]}"
    env["VERGE__HTTP__BIND"] = f"127.0.0.1:{ports['http']}"
    env["VERGE__COAP__BIND"] = f"127.0.0.1:{ports['coap']}"
    log = open(os.path.join(d, "up.log"), "a+")
    log.seek(0, os.SEEK_END)
    offset = log.tell()  # a second `up` appends: read only its own output
    proc = subprocess.Popen(
        [os.environ.get("VERGE_BIN", "target/debug/verge"), "up",
         "--cloud-set", f"http.bind=127.0.0.1:{ports['cloud']}",
         "--cloud-set", f"mqtt.bind=127.0.0.1:{ports['cloud_mqtt']}"],
        cwd=d, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    banner = ""
    while time.time() < deadline:
        log.flush()
        log.seek(offset)
        banner = log.read()
        if "the walkthrough is running" in banner and "press Ctrl-C" in banner.split("the walkthrough is running")[-1]:
            break
        assert proc.poll() is None, banner
        time.sleep(0.1)
    else:
        proc.terminate()
        raise AssertionError("no banner:\n" + banner)
    return proc, log, banner.split("the walkthrough is running")[-1]


def admin_token(banner):
    m = re.search(r"admin token\s+(\S+)", banner)
    assert m, banner
    return m.group(1)


def api(ports, token, path):
    req = urllib.request.Request(f"http://127.0.0.1:{ports['cloud']}{path}",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.load(r)


def eventually(what, f, timeout=30):
    deadline = time.time() + timeout
    while True:
        v = f()
        if v:
            return v
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def up():
    d = tempfile.mkdtemp(prefix="verge-up-")
    ports = {k: free_port() for k in ("tcp", "tls", "ws", "wss", "http", "coap", "cloud", "cloud_mqtt")}
    proc, log, banner = start_up(d, ports)
    yield d, ports, log, banner
    proc.terminate()
    assert proc.wait(20) == 0


def roundtrip(port, transport="tcp", cafile=None):
    got = queue.Queue()
    clients = []
    for _ in range(2):
        c = mqtt.Client(CallbackAPIVersion.VERSION2, transport=transport, protocol=mqtt.MQTTv5)
        if transport == "websockets":
            c.ws_set_options(path="/mqtt")
        if cafile:
            c.tls_set(ca_certs=cafile)
        c.connect("127.0.0.1", port)
        c.loop_start()
        clients.append(c)
    sub, pub = clients
    sub.on_message = lambda c, u, m: got.put(m.payload)
    topic = f"devices/{uuid.uuid4().hex[:6]}/telemetry"
    sub.subscribe(topic, 1)
    time.sleep(0.3)
    pub.publish(topic, "hello", 1).wait_for_publish(5)
    try:
        return got.get(timeout=5)
    finally:
        for c in clients:
            c.disconnect()
            c.loop_stop()


def test_up_prints_every_listener_and_serves_them(up):
    d, ports, log, _ = up
    log.flush()
    log.seek(0)
    banner = log.read()
    for scheme, key in (("mqtt", "tcp"), ("mqtts", "tls"), ("ws", "ws"), ("wss", "wss")):
        assert f"{scheme}://127.0.0.1:{ports[key]}" in banner, banner
    cafile = os.path.join(d, "verge-data", "tls", "cert.pem")
    assert os.path.exists(cafile)
    assert roundtrip(ports["tcp"]) == b"hello"
    assert roundtrip(ports["ws"], "websockets") == b"hello"
    assert roundtrip(ports["tls"], cafile=cafile) == b"hello"
    assert roundtrip(ports["wss"], "websockets", cafile=cafile) == b"hello"


def test_up_demo_rule_runs_the_demo_function(up):
    """The walkthrough's last steps on one machine: a reading goes through
    the demo rule into the demo WebAssembly function, whose output a paho
    subscriber sees on processed/<topic>, and whose metrics the API shows."""
    import json
    import urllib.request

    d, ports, log, banner = up
    eventually("the cloud's rule on the node", lambda: _node_has_rule(d, ports, "demo-function"))
    got = queue.Queue()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sub.on_message = lambda c, u, m: got.put((m.topic, m.payload))
    sub.connect("127.0.0.1", ports["tcp"])
    sub.loop_start()
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    pub.connect("127.0.0.1", ports["tcp"])
    pub.loop_start()
    try:
        sub.subscribe("processed/#", 1)
        time.sleep(0.3)
        pub.publish("devices/fn1/telemetry", json.dumps({"temperature": 22.5}), 1).wait_for_publish(5)
        topic, payload = got.get(timeout=10)
        assert topic == "processed/devices/fn1/telemetry"
        doc = json.loads(payload)
        assert doc["tagged_by"] == "demo-tag"
        assert doc["row"] == {"device": "fn1", "temperature": 22.5}
        with urllib.request.urlopen(_node_req(d, ports, "/api/functions/demo-tag"), timeout=5) as r:
            info = json.load(r)
        assert info["metrics"]["invocations"] >= 1
        assert info["metrics"]["errors"] == 0
    finally:
        for c in (sub, pub):
            c.disconnect()
            c.loop_stop()


def _node_req(d, ports, path):
    """A GET of the demo node's API with the token it keeps in its data dir."""
    req = urllib.request.Request(f"http://127.0.0.1:{ports['http']}{path}")
    req.add_header("authorization", f"Bearer {node_token(os.path.join(d, 'verge-data'))}")
    return req


def _node_has_rule(d, ports, rule):
    try:
        with urllib.request.urlopen(_node_req(d, ports, f"/api/rules/{rule}"), timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


def test_up_prints_the_admin_token_once_and_keeps_secrets_private(up):
    """Finding 8: `verge up` printed the admin token twice, once inside a
    suggested command line; its files were readable by others."""
    import stat

    d, ports, log, _ = up
    log.flush()
    log.seek(0)
    out = log.read()
    with open(os.path.join(d, "verge-data", "cloud-center", "admin-token")) as f:
        admin = f.read().strip()
    # The first start's output (a later test may start `up` again).
    head, rest = out.split("the walkthrough is running", 1)
    first_run = head + rest.split("press Ctrl-C to stop", 1)[0]
    assert first_run.count(admin) == 1, first_run
    assert "--token-file" in first_run, first_run
    data = os.path.join(d, "verge-data")
    for path in ("api-token", "cloud-center/admin-token", "cloud-center/cloud.db", "tls/key.pem"):
        mode = stat.S_IMODE(os.stat(os.path.join(data, path)).st_mode)
        assert mode == 0o600, f"{path}: {oct(mode)}"
    assert stat.S_IMODE(os.stat(data).st_mode) == 0o700
    # The node's API asks for its token.
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{ports['http']}/api/rules", timeout=5)
        raise AssertionError("the node's API answered without a token")
    except urllib.error.HTTPError as e:
        assert e.code == 401


def test_up_runs_the_walkthrough_through_the_cloud(up):
    """Steps 1-6 as `up` runs them: the node is online in the cloud, the
    simulated devices' telemetry and the function's output reach the
    cloud's API, and the console is served."""
    d, ports, log, banner = up
    token = admin_token(banner)
    assert f"http://127.0.0.1:{ports['cloud']}/" in banner
    node = eventually("the node online", lambda: [n for n in api(ports, token, "/api/nodes")
                                                  if n["status"] == "online"])
    node_id = node[0]["id"]
    dev = eventually("d1's telemetry", lambda: api(ports, token, "/api/devices/d1")["last_telemetry"])
    assert "temperature" in dev
    out = eventually("the function's output in the cloud", lambda: api(
        ports, token, f"/api/nodes/{node_id}/messages?topic=processed%2Fdevices%2Fd1%2F%23&limit=5"))
    assert out[-1]["payload"]["tagged_by"] == "demo-tag"
    with urllib.request.urlopen(f"http://127.0.0.1:{ports['cloud']}/", timeout=5) as r:
        assert r.status == 200
        assert "text/html" in r.headers["content-type"]


def test_second_up_reuses_the_data():
    d = tempfile.mkdtemp(prefix="verge-up2-")
    ports = {k: free_port() for k in ("tcp", "tls", "ws", "wss", "http", "coap", "cloud", "cloud_mqtt")}
    proc, log, banner = start_up(d, ports)
    token = admin_token(banner)
    proc.terminate()
    assert proc.wait(20) == 0
    proc, log, banner2 = start_up(d, ports)
    try:
        assert admin_token(banner2) == token, "the demo keeps its admin token"
        nodes = api(ports, token, "/api/nodes")
        assert len(nodes) == 1, nodes
        devices = api(ports, token, "/api/devices")
        assert sorted(x["id"] for x in devices) == ["d1", "d2", "d3"]
        # The simulated devices log in again with their stored secrets.
        before = api(ports, token, "/api/devices/d1")["last_telemetry_ms"] or 0
        eventually("new telemetry after the restart",
                   lambda: (api(ports, token, "/api/devices/d1")["last_telemetry_ms"] or 0) > before)
    finally:
        proc.terminate()
        assert proc.wait(20) == 0
