"""`verge up`, the command a new user runs: the demo node with all four
listeners, TLS ones on a self-signed certificate made in the data dir."""

import os
import queue
import socket
import subprocess
import tempfile
import time
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from conftest import free_port


@pytest.fixture(scope="module")
def up():
    d = tempfile.mkdtemp(prefix="verge-up-")
    ports = {k: free_port() for k in ("tcp", "tls", "ws", "wss", "http")}
    env = dict(os.environ)
    for k, p in ports.items():
        if k != "http":
            env[f"VERGE__BROKER__LISTENERS__{k.upper()}__BIND"] = f"127.0.0.1:{p}"
    env["VERGE__HTTP__BIND"] = f"127.0.0.1:{ports['http']}"
    env["VERGE__COAP__BIND"] = f"127.0.0.1:{free_port()}"
    log = open(os.path.join(d, "up.log"), "w+")
    proc = subprocess.Popen([os.environ.get("VERGE_BIN", "target/debug/verge"), "up"],
                            cwd=d, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", ports["wss"]), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield d, ports, log
    proc.terminate()
    proc.wait(10)


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
    d, ports, log = up
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

    d, ports, log = up
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
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['http']}/api/functions/demo-tag", timeout=5) as r:
            info = json.load(r)
        assert info["metrics"]["invocations"] >= 1
        assert info["metrics"]["errors"] == 0
    finally:
        for c in (sub, pub):
            c.disconnect()
            c.loop_stop()
