"""Process components on the node's broker, with paho-mqtt: the example
component examples/components/python-reader gets its own credentials from
the node, publishes telemetry and heartbeats, answers an MQTT 5 request,
calls the node's RPC (config.get, store.write), and is refused outside its
rights; the mqtt health check makes it healthy, and a component that stops
its heartbeat becomes unhealthy and is restarted."""

import json
import sys
import time
import uuid
from pathlib import Path

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from verge_interop import Client, Node, node_api

READER = Path(__file__).resolve().parents[2] / "examples/components/python-reader/reader.py"
WAIT = 20


def component(name, config, health):
    return f"""
[[components]]
name = "{name}"
version = "1.0"
command = "{sys.executable}"
args = ["{READER}"]
config = {config}
stop_timeout = "2s"
backoff_min = "100ms"
backoff_max = "500ms"
max_restarts = 100
[components.health]
{health}
"""


def until(what, f, timeout=WAIT):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = f()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"not {what} within {timeout} s; last: {last!r}")


def test_component_over_mqtt():
    tail = component(
        "reader",
        "{ interval = 0.2, store_every = 2, metric = \"temperature\", selfcheck = true }",
        'kind = "mqtt"\ninterval = "1s"\nfailures = 2\nstart_grace = "10s"',
    ) + component(
        "quitter",
        "{ interval = 0.2, heartbeat_for = 1.0 }",
        'kind = "mqtt"\ninterval = "500ms"\ntimeout = "100ms"\nfailures = 2\nstart_grace = "0s"',
    )
    node = Node(tail=tail)
    try:
        c = Client(node, 5, cid="tester")
        c.sub("components/reader/telemetry", 1)
        msg = c.recv()
        assert msg.topic == "components/reader/telemetry"
        assert "temperature" in json.loads(msg.payload)

        # An MQTT 5 request to the component: the reply comes on the
        # Response Topic with the same Correlation Data.
        c.sub("components/reader/answers/tester", 1)
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = "components/reader/answers/tester"
        corr = uuid.uuid4().bytes
        props.CorrelationData = corr
        c.pub("components/reader/rpc/read", "{}", 1, props=props)
        deadline = time.time() + WAIT
        while True:
            m = c.recv()
            if m.topic == "components/reader/answers/tester":
                break
            assert time.time() < deadline
        assert m.properties.CorrelationData == corr
        answer = json.loads(m.payload)
        assert answer["ok"] is True and "temperature" in answer["result"], answer

        # What its credentials must not do, and the node's RPC errors, as
        # the component saw them.
        c.sub("components/reader/status", 1)
        while True:
            m = c.recv()
            if m.topic == "components/reader/status":
                break
        status = json.loads(m.payload)
        assert status["forbidden_publish"] == 0x87, status
        assert status["other_component_publish"] == 0x87, status
        assert status["forbidden_subscribe"] == 0x87, status
        for bad in ("not_json", "oversized", "unknown_method"):
            assert status[bad]["ok"] is False, (bad, status)
        assert "not JSON" in status["not_json"]["error"]
        assert "too large" in status["oversized"]["error"]
        assert "unknown method" in status["unknown_method"]["error"]
        assert status["node_info"]["ok"] is True

        # store.write: the readings are in the node's store.
        def stored():
            series = node_api(node, "/api/store/series")
            return {"device": "reader", "metric": "temperature"} in series
        until("stored", stored)

        # Heartbeats make it healthy.
        until("reader healthy",
              lambda: node_api(node, "/api/components/reader")["state"] == "healthy")
        # A component that stops its heartbeat is restarted.
        info = until("quitter restarted",
                     lambda: (lambda i: i if i["restarts"] >= 1 else None)(
                         node_api(node, "/api/components/quitter")))
        assert "heartbeat" in (info.get("last_error") or ""), info

        # The secret (read from the component's environment, as the same
        # user) never shows in the node's log, API or metrics.
        pid = node_api(node, "/api/components/reader")["pid"]
        env = dict(kv.split("=", 1) for kv in
                   Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in kv)
        secret = env["VERGE_MQTT_PASSWORD"]
        assert len(secret) == 64
        assert env["VERGE_MQTT_USERNAME"] == "component:reader"
        assert env["VERGE_MQTT_URL"] == f"mqtt://127.0.0.1:{node.tcp}"
        seen = node.output() + json.dumps(node_api(node, "/api/components"))
        for name in ("reader", "quitter"):
            seen += json.dumps(node_api(node, f"/api/components/{name}/logs"))
        from verge_interop import node_request
        with node_request(node, "GET", "/metrics") as r:
            seen += r.read().decode()
        assert secret not in seen
        c.close()
    finally:
        node.stop()
    out = node.output()
    assert "panicked" not in out, out
