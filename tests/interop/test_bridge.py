"""Store-and-forward with Mosquitto standing in for the cloud: a node whose
cloud is down queues what paho publishes to it; Mosquitto comes up, is
stopped in the middle of the drain and started again (with persistence, as
a production broker would be); every message reaches the cloud subscriber
exactly once after de-duplication by its `verge-id`, in order per lane.
Commands published at the cloud under nodes/{node}/down/… reach a client of
the node. After a kill -9 of the cloud the link is back within the default
reconnect cap of the cloud listening again."""

import getpass
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

from verge_interop import V5, Client, Node, free_port, node_request

pytestmark = pytest.mark.skipif(
    shutil.which("mosquitto") is None, reason="mosquitto not installed (.ci/run installs it)"
)

N = 20_000
ALARMS = 200


class Mosquitto:
    """A mosquitto broker on a fixed loopback port, with persistence, so it
    can be stopped and started again with its sessions and queued messages."""

    def __init__(self, port, workdir):
        self.port = port
        self.conf = os.path.join(workdir, "mosquitto.conf")
        os.makedirs(os.path.join(workdir, "db"), exist_ok=True)
        with open(self.conf, "w") as f:
            f.write(
                f"listener {port} 127.0.0.1\n"
                "allow_anonymous true\n"
                "persistence true\n"
                f"persistence_location {workdir}/db/\n"
                "max_queued_messages 0\n"
                "max_queued_bytes 0\n"
                "log_dest none\n"
                # Started as root, mosquitto would switch to its own user,
                # which cannot write the persistence file here.
                f"user {getpass.getuser()}\n"
            )
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(["mosquitto", "-c", self.conf],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # saves its persistence file
            self.proc.wait(10)


class CloudPort:
    """Lets Client() connect to mosquitto: it reads .tcp from its node."""

    def __init__(self, port):
        self.tcp = port


def bridge_status(node):
    with node_request(node, "GET", "/api/bridge") as r:
        return json.load(r)


def wait_until(what, f, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if f():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def test_backlog_reaches_mosquitto_exactly_once_in_order_across_a_restart(tmp_path):
    port = free_port()
    cloud = Mosquitto(port, str(tmp_path))
    node = Node(tail=f"""
[bridge]
enabled = true
node = "edge-1"
url = "mqtt://127.0.0.1:{port}"
reconnect_min = "50ms"
reconnect_max = "300ms"
[[bridge.forwards]]
filter = "devices/#"
lane = "telemetry"
[[bridge.forwards]]
filter = "alarms/#"
lane = "alarms"
""")
    sub = None
    try:
        # The cloud subscriber's persistent session exists before the outage.
        cloud.start()
        sub = Client(CloudPort(port), V5, cid="cloud-app", clean=False, expiry=600)
        assert sub.sub("nodes/edge-1/up/#", 1) == [1]
        sub.drop()
        cloud.stop()

        # The cloud is down: paho publishes to the node, all acknowledged.
        dev = Client(node, V5)
        infos = []
        for i in range(N):
            infos.append(dev.c.publish(f"devices/d{i % 20}/telemetry", f"t-{i}", 1))
            if i % (N // ALARMS) == 0:
                infos.append(dev.c.publish(f"alarms/d{i % 3}", f"a-{i // (N // ALARMS)}", 1))
        for info in infos:
            info.wait_for_publish(30)
            assert info.is_published()
        dev.close()
        total = N + ALARMS
        wait_until("everything queued", lambda: bridge_status(node)["queue"]["depth"] == total)
        st = bridge_status(node)
        assert st["link"]["state"] != "connected"
        assert st["link"]["last_error"], "the connect failures are reported"

        # The cloud comes back; stop it again mid-drain, then for good.
        cloud.start()
        wait_until("the drain to start", lambda: bridge_status(node)["link"]["sent"] > total // 4)
        cloud.stop()
        cloud.start()
        wait_until("the queue to empty", lambda: bridge_status(node)["queue"]["depth"] == 0, 120)

        sub = Client(CloudPort(port), V5, cid="cloud-app", clean=False, expiry=600)
        seen, lanes, dups = set(), {}, 0
        deadline = time.time() + 60
        while len(seen) < total and time.time() < deadline:
            m = sub.recv(timeout=30)
            props = dict(getattr(m.properties, "UserProperty", []) or [])
            mid = props["verge-id"]
            if mid in seen:
                dups += 1
                continue
            seen.add(mid)
            _, lane, seq = mid.rsplit("/", 2)
            lanes.setdefault(lane, []).append((int(seq), m.payload.decode()))
        assert len(seen) == total, f"{len(seen)} of {total} arrived"
        tele = lanes["telemetry"]
        assert [p for _, p in tele] == [f"t-{i}" for i in range(N)]
        assert [s for s, _ in tele] == sorted(s for s, _ in tele)
        assert [p for _, p in lanes["alarms"]] == [f"a-{i}" for i in range(ALARMS)]
        link = bridge_status(node)["link"]
        assert link["connects"] >= 2, link
        assert link["sent"] >= total, link
    finally:
        if sub:
            sub.close()
        node.stop()
        cloud.stop()


def test_cloud_commands_reach_a_device_on_the_node(tmp_path):
    port = free_port()
    cloud = Mosquitto(port, str(tmp_path))
    cloud.start()
    node = Node(tail=f"""
[bridge]
enabled = true
node = "edge-2"
url = "mqtt://127.0.0.1:{port}"
reconnect_min = "50ms"
""")
    try:
        device = Client(node, V5)
        device.sub("devices/d1/commands/#", 1)
        wait_until("the link", lambda: bridge_status(node)["link"]["state"] == "connected")
        app = Client(CloudPort(port), V5)
        # The bridge's SUBACK may trail its CONNACK: publish until one arrives.
        deadline = time.time() + 10
        got = None
        while got is None and time.time() < deadline:
            app.pub("nodes/edge-2/down/devices/d1/commands/reboot", b'{"delay":1}', 1)
            msgs = device.drain(0.3)
            got = msgs[0] if msgs else None
        assert got is not None, "no command arrived"
        assert got.topic == "devices/d1/commands/reboot"
        assert got.payload == b'{"delay":1}'
        app.close()
        device.close()
    finally:
        node.stop()
        cloud.stop()


def test_link_is_back_within_the_backoff_cap_after_the_cloud_is_killed(tmp_path):
    """Issue 17, cloud link: after a kill -9 of the cloud (down 20 s) the
    link came back 13.6 s after the cloud listened again, because the
    backoff doubled up to 30 s and reset only after 30 s of uptime. With
    the default backoff the link is back within its cap (+20 % jitter) of
    the cloud listening, outage after outage; the bound is derived from the
    documented default, with margin for the connection itself."""
    default = subprocess.run([os.environ["VERGE_BIN"], "config", "default"], capture_output=True,
                             text=True, check=True).stdout
    cap = float(re.search(r'^reconnect_max = "(\d+)s"', default, re.M).group(1))
    bound = cap * 1.2 + 3
    assert bound < 10, "the default cap is a few seconds"
    port = free_port()
    cloud = Mosquitto(port, str(tmp_path))
    cloud.start()
    node = Node(tail=f"""
[bridge]
enabled = true
node = "edge-3"
url = "mqtt://127.0.0.1:{port}"
[[bridge.forwards]]
filter = "devices/#"
lane = "telemetry"
""")
    try:
        dev = Client(node, V5)
        wait_until("the link", lambda: bridge_status(node)["link"]["state"] == "connected")
        dev.pub("devices/d1/telemetry", b"0", 1)
        wait_until("the first message sent", lambda: bridge_status(node)["link"]["sent"] >= 1)
        for outage in (1, 2):
            connects = bridge_status(node)["link"]["connects"]
            cloud.proc.kill()  # kill -9: no goodbye to the node
            cloud.proc.wait(10)
            wait_until("the link to notice",
                       lambda: bridge_status(node)["link"]["state"] != "connected")
            time.sleep(9)  # long enough for the backoff to reach its cap
            cloud.start()
            listening = time.time()
            wait_until("the link back", lambda: bridge_status(node)["link"]["connects"] > connects)
            took = time.time() - listening
            assert took < bound, f"outage {outage}: link back {took:.1f} s after the cloud (bound {bound} s)"
            sent = bridge_status(node)["link"]["sent"]
            dev.pub("devices/d1/telemetry", str(outage).encode(), 1)
            wait_until("a message sent", lambda: bridge_status(node)["link"]["sent"] > sent)
        dev.close()
    finally:
        node.stop()
        cloud.stop()
