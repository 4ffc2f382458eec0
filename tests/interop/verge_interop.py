"""Helpers of the interop suite: a Verge node run from the real binary, and a
paho-mqtt client wrapper with queues that the tests wait on (with timeouts, so
nothing hangs)."""

import asyncio
import json
import os
import queue
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

REPO = Path(__file__).resolve().parents[2]
V3, V5 = mqtt.MQTTv311, mqtt.MQTTv5
WAIT = 5  # seconds any single expected event may take


def verge_bin():
    """VERGE_BIN, else target/debug/verge of this checkout (or of CARGO_TARGET_DIR)."""
    if os.environ.get("VERGE_BIN"):
        return str(Path(os.environ["VERGE_BIN"]).resolve())
    target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
    if not target.is_absolute():
        target = REPO / target
    return str(target / "debug" / "verge")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def verge_env():
    """This environment without VERGE__* overrides: the config alone decides."""
    return {k: v for k, v in os.environ.items() if not k.startswith("VERGE__")}


def terminate(proc, timeout=5):
    """SIGTERM a still running process; SIGKILL it if it has not ended in `timeout` s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def node_token(data_dir):
    """The admin token a node made at its first start in `data_dir`."""
    with open(os.path.join(data_dir, "api-token")) as f:
        return f.read().strip()


def node_request(node, method, path, data=None, content_type="application/json", timeout=5):
    """A request to a node's HTTP API with its admin token."""
    req = urllib.request.Request(f"http://127.0.0.1:{node.http}{path}", data=data, method=method)
    req.add_header("authorization", f"Bearer {node.token}")
    if data is not None:
        req.add_header("content-type", content_type)
    return urllib.request.urlopen(req, timeout=timeout)


def node_api(node, path):
    """GET `path` of a node's HTTP API; the JSON body."""
    with node_request(node, "GET", path) as r:
        return json.loads(r.read().decode())


def own_topics_device(username, password_hash):
    """A `[[devices]]` entry of a device registry whose ACL allows the device
    only `devices/<its username>/...`."""
    return f"""[[devices]]
username = "{username}"
password_hash = "{password_hash}"
[[devices.acl]]
permission = "allow"
action = "all"
topic = "devices/%u/#"
[[devices.acl]]
permission = "deny"
action = "all"
topic = "#"
"""


class Node:
    """A `verge node --config FILE` process on free loopback ports (TCP,
    WebSocket and the HTTP API)."""

    def __init__(self, extra="", anonymous=True, acl_default="allow", tail=""):
        """`extra` goes into [broker]; `tail` (e.g. [[rules]] tables) at the end,
        or a function of the node (its ports chosen) returning that text."""
        self.dir = tempfile.mkdtemp(prefix="verge-interop-")
        self.tcp = free_port()
        self.ws = free_port()
        self.http = free_port()
        self.coap = free_port()
        self.config = os.path.join(self.dir, "node.toml")
        if callable(tail):
            tail = tail(self)
        with open(self.config, "w") as f:
            f.write(f"""
[node]
data_dir = "{self.dir}/data"
[broker]
allow_anonymous = {"true" if anonymous else "false"}
sys_interval = "1s"
acl_default = "{acl_default}"
{extra}
[broker.listeners.tcp]
enabled = true
bind = "127.0.0.1:{self.tcp}"
[broker.listeners.ws]
enabled = true
bind = "127.0.0.1:{self.ws}"
path = "/mqtt"
[broker.listeners.tls]
enabled = false
bind = "127.0.0.1:0"
[broker.listeners.wss]
enabled = false
bind = "127.0.0.1:0"
[http]
bind = "127.0.0.1:{self.http}"
[coap]
enabled = true
bind = "127.0.0.1:{self.coap}"
{tail}
""")
        self.log = open(os.path.join(self.dir, "verge.log"), "w+")
        self.start()

    def start(self):
        """Start the node process; returns when its ports accept connections."""
        self.proc = subprocess.Popen(
            [verge_bin(), "node", "--config", self.config],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=verge_env(),
        )
        deadline = time.time() + 10
        while time.time() < deadline:
            if port_open(self.tcp) and port_open(self.ws) and port_open(self.http):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"verge did not accept connections on 127.0.0.1:{self.tcp} within 10 s "
            f"(exit code {self.proc.returncode}); its output:\n{self.output()}"
        )

    def restart(self, down_s=0):
        """Stop the node (SIGTERM), wait `down_s` seconds, and start it again
        with the same config, ports and data dir (its log goes on)."""
        self.stop()
        time.sleep(down_s)
        self.start()

    @property
    def token(self):
        """The node API's admin token (made in the data dir at start)."""
        return node_token(os.path.join(self.dir, "data"))

    def output(self):
        self.log.flush()
        with open(self.log.name) as f:
            return f.read()

    def tail(self, lines=80):
        return "\n".join(self.output().splitlines()[-lines:])

    def stop(self):
        terminate(self.proc)


_CONNACK_LOG = re.compile(r"Received CONNACK \((\d+), (\d+)\)")


class Client:
    """A paho client (callback API version 2) with its network loop running.

    Everything the broker sends is put on a queue: messages, CONNACKs,
    SUBACK reason codes, PUBACK/PUBCOMP reason codes (by message id) and
    disconnects.
    """

    def __init__(self, node, proto, cid=None, transport="tcp", clean=True, expiry=None,
                 will=None, user=None, connect=True):
        # A device's client id goes under its username (the broker's default
        # client_id_binding = "prefix").
        default = f"{user[0]}:" if user else "c-"
        self.cid = cid or default + uuid.uuid4().hex[:10]
        kw = {"clean_session": clean} if proto == V3 else {}
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.cid, protocol=proto,
                             transport=transport, reconnect_on_failure=False, **kw)
        self.proto, self.node, self.transport = proto, node, transport
        self.clean, self.expiry = clean, expiry
        self.msgs = queue.Queue()
        self.subacks = queue.Queue()
        self.connacks = queue.Queue()
        self.pubacks = {}
        self.disconnects = queue.Queue()
        self.raw_connack = None  # (flags, return code) as on the wire, 3.1.1 only
        self.c.on_connect = self._on_connect
        self.c.on_message = lambda c, u, m: self.msgs.put(m)
        self.c.on_subscribe = lambda c, u, mid, rcs, props: self.subacks.put([r.value for r in rcs])
        self.c.on_publish = self._on_publish
        self.c.on_disconnect = lambda c, u, flags, rc, props: self.disconnects.put(rc)
        self.c.on_log = self._on_log
        if transport == "websockets":
            self.c.ws_set_options(path="/mqtt")
        if will:
            self.c.will_set(*will)
        if user:
            self.c.username_pw_set(*user)
        if connect:
            self.connect()

    def _on_connect(self, c, u, flags, rc, props):
        self.connacks.put((flags.session_present, rc, props))

    def _on_publish(self, c, u, mid, rc, props):
        self.pubacks.setdefault(mid, queue.Queue()).put(rc)

    def _on_log(self, c, u, level, buf):
        m = _CONNACK_LOG.match(buf)
        if m:
            self.raw_connack = (int(m.group(1)), int(m.group(2)))

    def connect(self):
        port = self.node.ws if self.transport == "websockets" else self.node.tcp
        if self.proto == V5:
            props = Properties(PacketTypes.CONNECT)
            if self.expiry is not None:
                props.SessionExpiryInterval = self.expiry
            self.c.connect("127.0.0.1", port, 30, clean_start=self.clean, properties=props)
        else:
            self.c.connect("127.0.0.1", port, 30)
        self.c.loop_start()
        try:
            self.session_present, self.rc, self.connack_props = self.connacks.get(timeout=WAIT)
        except queue.Empty:
            self.c.loop_stop()
            pytest.fail(f"no CONNACK within {WAIT} s for client {self.cid}")
        return self

    def sub(self, topic, qos=0, options=None, props=None):
        """Subscribe and return the SUBACK reason codes as ints."""
        if options is not None:
            self.c.subscribe(topic, options=options, properties=props)
        else:
            self.c.subscribe(topic, qos, properties=props)
        try:
            return self.subacks.get(timeout=WAIT)
        except queue.Empty:
            pytest.fail(f"no SUBACK within {WAIT} s for {topic!r}")

    def pub(self, topic, payload, qos=0, retain=False, props=None):
        """Publish; for QoS > 0 wait for the flow to finish and return the
        final reason code (PUBACK or PUBCOMP; 5.0 carries a real one)."""
        info = self.c.publish(topic, payload, qos, retain, props)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, f"publish not sent: {info.rc}"
        info.wait_for_publish(WAIT)
        assert info.is_published(), f"QoS {qos} publish to {topic!r} not acknowledged within {WAIT} s"
        if qos == 0:
            return None
        try:
            return self.pubacks.setdefault(info.mid, queue.Queue()).get(timeout=WAIT)
        except queue.Empty:
            pytest.fail(f"no acknowledgement callback for publish to {topic!r}")

    def recv(self, timeout=WAIT):
        try:
            return self.msgs.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"client {self.cid}: no message within {timeout} s")

    def recv_n(self, n, timeout=WAIT):
        return [self.recv(timeout) for _ in range(n)]

    def nothing(self, timeout=0.5):
        """Assert that no message arrives within `timeout` seconds."""
        try:
            m = self.msgs.get(timeout=timeout)
        except queue.Empty:
            return
        pytest.fail(f"client {self.cid}: unexpected message on {m.topic!r}: {m.payload!r} "
                    f"(qos {m.qos}, retain {m.retain})")

    def drain(self, seconds):
        """All messages that arrive within `seconds`."""
        out, deadline = [], time.time() + seconds
        while True:
            left = deadline - time.time()
            if left <= 0:
                return out
            try:
                out.append(self.msgs.get(timeout=left))
            except queue.Empty:
                return out

    def close(self):
        """A normal DISCONNECT."""
        self.c.disconnect()
        self.c.loop_stop()

    def drop(self):
        """End the TCP connection without DISCONNECT (as a crashed device would)."""
        self.c.loop_stop()
        sock = self.c.socket()
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()


class LoopThread:
    """A third-party server on its own thread and asyncio event loop. A
    subclass defines `async _start()` and calls `start_loop(what)` once its
    own state is set up."""

    def start_loop(self, what):
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        if not self.ready.wait(30) or self.error:
            raise RuntimeError(f"{what} did not start: {self.error}")

    def _run(self):
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._start())
        except Exception as e:  # noqa: BLE001 - reported to the test
            self.error = e
            self.ready.set()
            return
        self.ready.set()
        self.loop.run_forever()

    def stop_loop(self, shutdown):
        """Run the coroutine `shutdown` on the loop, then end the loop and its thread."""
        try:
            asyncio.run_coroutine_threadsafe(shutdown, self.loop).result(10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


def device_telemetry(client, device, pred, timeout):
    """The next telemetry of `device` for which `pred` holds."""
    deadline = time.time() + timeout
    seen = []
    while time.time() < deadline:
        try:
            m = client.msgs.get(timeout=max(0.01, deadline - time.time()))
        except Exception:  # noqa: BLE001 - queue.Empty
            break
        if m.topic != f"devices/{device}/telemetry":
            continue
        doc = json.loads(m.payload)
        seen.append(doc)
        if pred(doc):
            return doc
    pytest.fail(f"no matching telemetry from {device} within {timeout} s; last: {seen[-3:]}")


def write_command(client, device, point, value, timeout):
    """Send a write command; return its reply."""
    reply = f"devices/{device}/commands/write/reply"
    client.sub(reply, 1)
    client.pub(f"devices/{device}/commands/write", json.dumps({"point": point, "value": value}), 1)
    deadline = time.time() + timeout
    while time.time() < deadline:
        m = client.recv(timeout)
        if m.topic == reply:
            return json.loads(m.payload)
    pytest.fail(f"no reply on {reply}")
