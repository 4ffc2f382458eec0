#!/usr/bin/env python3
"""A Verge process component: a simulated sensor reader.

It connects to the node's broker with the credentials the node hands it in
its environment (VERGE_MQTT_URL, VERGE_MQTT_USERNAME, VERGE_MQTT_PASSWORD,
VERGE_MQTT_CLIENT_ID), asks the node for its configuration (`config.get`
over the node's MQTT RPC), then every `interval` seconds:

- publishes a reading to `components/<name>/telemetry`,
- publishes a heartbeat to `components/<name>/heartbeat` (for the node's
  `mqtt` health check; only for the first `heartbeat_for` seconds when set),
- every `store_every` readings writes them into the node's local store
  (`store.write`).

It answers MQTT 5 requests on `components/<name>/rpc/read` with the latest
reading, on the request's Response Topic with its Correlation Data (the
response topic must lie under `components/<name>/`: the component may
publish nowhere else).

With `selfcheck = true` in its config it also tries what its credentials
must not allow (publish and subscribe outside its rights) and a few bad
RPC requests, and publishes what happened, retained, to
`components/<name>/status`.

Needs paho-mqtt 2.x. Never prints its password.
"""

import json
import math
import os
import signal
import threading
import time
import uuid
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

NAME = os.environ["VERGE_COMPONENT_NAME"]
OWN = f"components/{NAME}"
REPLY = f"{OWN}/reply"

stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
signal.signal(signal.SIGINT, lambda *_: stop.set())


class Node:
    """The MQTT connection and the node's RPC (`$verge/rpc/<name>/<method>`)."""

    def __init__(self):
        url = urlparse(os.environ["VERGE_MQTT_URL"])
        if url.scheme != "mqtt":
            raise SystemExit(f"this example speaks plain mqtt://, not {url.scheme}://")
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2,
                             client_id=os.environ["VERGE_MQTT_CLIENT_ID"],
                             protocol=mqtt.MQTTv5)
        self.c.username_pw_set(os.environ["VERGE_MQTT_USERNAME"], os.environ["VERGE_MQTT_PASSWORD"])
        self.pending = {}
        self.lock = threading.Lock()
        self.latest = None
        self.connected = threading.Event()
        self.subacks = {}
        self.pubacks = {}
        self.c.on_connect = self.on_connect
        self.c.on_message = self.on_message
        self.c.on_subscribe = self.on_subscribe
        self.c.on_publish = self.on_publish
        for _ in range(100):
            try:
                self.c.connect(url.hostname, url.port or 1883, 30)
                break
            except OSError:
                time.sleep(0.1)
        self.c.loop_start()
        if not self.connected.wait(10):
            raise SystemExit("no connection to the node's broker")

    def on_connect(self, c, userdata, flags, rc, props):
        if rc.is_failure:
            print(f"connect refused: {rc}", flush=True)
            return
        c.subscribe([(REPLY, 1), (f"{OWN}/rpc/+", 1)])
        self.connected.set()

    def on_subscribe(self, c, userdata, mid, rcs, props):
        with self.lock:
            self.subacks[mid] = [r.value for r in rcs]

    def on_publish(self, c, userdata, mid, rc, props):
        with self.lock:
            self.pubacks[mid] = rc.value

    def on_message(self, c, userdata, msg):
        props = getattr(msg, "properties", None)
        corr = getattr(props, "CorrelationData", None)
        if msg.topic == REPLY:
            with self.lock:
                waiter = self.pending.pop(corr, None)
            if waiter is not None:
                waiter[1] = json.loads(msg.payload)
                waiter[0].set()
            return
        # A request to this component from another client.
        method = msg.topic.rsplit("/", 1)[-1]
        reply_to = getattr(props, "ResponseTopic", None)
        if not reply_to or not reply_to.startswith(OWN + "/"):
            return
        if method == "read":
            answer = {"ok": True, "result": self.latest}
        else:
            answer = {"ok": False, "error": f"unknown method {method}"}
        out = Properties(PacketTypes.PUBLISH)
        if corr is not None:
            out.CorrelationData = corr
        c.publish(reply_to, json.dumps(answer), 1, properties=out)

    def call(self, method, params=None, raw=None, timeout=10):
        """Ask the node; its answer `{"ok": …, "result"|"error": …}`."""
        corr = uuid.uuid4().bytes
        done = [threading.Event(), None]
        with self.lock:
            self.pending[corr] = done
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = REPLY
        props.CorrelationData = corr
        body = raw if raw is not None else json.dumps({"params": params or {}})
        self.c.publish(f"$verge/rpc/{NAME}/{method}", body, 1, properties=props)
        if not done[0].wait(timeout):
            with self.lock:
                self.pending.pop(corr, None)
            return {"ok": False, "error": "no answer from the node"}
        return done[1]

    def publish(self, topic, payload, retain=False):
        self.c.publish(topic, payload, 1, retain)

    def try_publish(self, topic):
        """The PUBACK reason code of a QoS 1 publish."""
        info = self.c.publish(topic, "x", 1)
        info.wait_for_publish(10)
        for _ in range(100):
            with self.lock:
                if info.mid in self.pubacks:
                    return self.pubacks[info.mid]
            time.sleep(0.05)
        return None

    def try_subscribe(self, topic):
        """The SUBACK reason code of a subscription."""
        _, mid = self.c.subscribe(topic, 1)
        for _ in range(100):
            with self.lock:
                if mid in self.subacks:
                    return self.subacks[mid][0]
            time.sleep(0.05)
        return None


def selfcheck(node):
    return {
        "forbidden_publish": node.try_publish(f"elsewhere/{NAME}"),
        "forbidden_subscribe": node.try_subscribe("#"),
        "other_component_publish": node.try_publish("components/someone-else/x"),
        "not_json": node.call("config.get", raw=b"\xffnot json"),
        "oversized": node.call("config.get", raw=json.dumps({"params": "x" * 70000})),
        "unknown_method": node.call("no.such.method"),
        "node_info": node.call("node.info"),
    }


def main():
    node = Node()
    answer = node.call("config.get")
    if not answer.get("ok"):
        raise SystemExit(f"config.get failed: {answer.get('error')}")
    config = answer["result"]
    print(f"{NAME}: connected; config {json.dumps(config)}", flush=True)
    interval = float(config.get("interval", 1.0))
    heartbeat_for = config.get("heartbeat_for")
    store_every = int(config.get("store_every", 5))
    metric = config.get("metric", "temperature")
    if config.get("selfcheck"):
        node.publish(f"{OWN}/status", json.dumps(selfcheck(node)), retain=True)
    started = time.monotonic()
    batch = []
    seq = 0
    while not stop.is_set():
        seq += 1
        value = round(20 + 5 * math.sin(seq / 10), 3)
        node.latest = {"seq": seq, metric: value}
        node.publish(f"{OWN}/telemetry", json.dumps(node.latest))
        if heartbeat_for is None or time.monotonic() - started < float(heartbeat_for):
            node.publish(f"{OWN}/heartbeat", "{}")
        batch.append({"metric": metric, "value": value, "time_ms": int(time.time() * 1000)})
        if len(batch) >= store_every:
            r = node.call("store.write", {"points": batch})
            if not r.get("ok"):
                print(f"store.write failed: {r.get('error')}", flush=True)
            batch = []
        stop.wait(interval)
    node.c.disconnect()
    node.c.loop_stop()


if __name__ == "__main__":
    main()
