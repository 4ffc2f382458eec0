"""A container component reaches the node's broker: Podman's Docker
Engine API service runs an image holding the verge binary (built offline
by tests/containers/engine.sh), whose `verge device simulate` connects to
the node on 127.0.0.1 through the host network with the component's own
MQTT credentials from its environment (VERGE_MQTT_USERNAME/PASSWORD, made
by the node) and publishes on the topic its spec's rights allow; a paho
subscriber sees its telemetry, and the node's API shows the component
healthy with its container id and its output. Killed from outside, it is
restarted with new credentials and publishes again.

Without Podman the test skips, saying so; in CI (`CI` or
`VERGE_REQUIRE_ENGINE` set) it fails instead."""

import http.client
import json
import os
import shutil
import socket
import urllib.parse
import subprocess
import time

import pytest

from verge_interop import REPO, V5, Client, Node, device_telemetry, node_api, verge_bin


def engine():
    """The engine socket and the verge image, or skip/fail."""
    required = os.environ.get("VERGE_REQUIRE_ENGINE") or os.environ.get("CI")

    def missing(why):
        if required:
            pytest.fail(f"the container engine is required here: {why}")
        pytest.skip(f"no container engine: {why}")

    if shutil.which("podman") is None:
        missing("podman is not installed (see tests/containers/engine.sh)")
    r = subprocess.run(
        ["bash", str(REPO / "tests/containers/engine.sh")],
        env={**os.environ, "VERGE_BIN": verge_bin()},
        capture_output=True, text=True, timeout=600,
    )
    if r.returncode != 0:
        missing(f"tests/containers/engine.sh failed:\n{r.stderr[-2000:]}")
    exports = dict(
        line.removeprefix("export ").split("=", 1)
        for line in r.stdout.splitlines() if line.startswith("export ")
    )
    return exports["VERGE_TEST_ENGINE"], exports["VERGE_TEST_VERGE_IMAGE"]


def engine_get(sock, path):
    """GET `path` of the engine's API on its unix socket; the JSON body."""
    conn = http.client.HTTPConnection("engine")
    conn.sock = socket.socket(socket.AF_UNIX)
    conn.sock.connect(sock.removeprefix("unix://"))
    conn.request("GET", path)
    body = conn.getresponse().read()
    conn.close()
    return json.loads(body)


def engine_post(sock, path):
    """POST `path` of the engine's API (no body); the status."""
    conn = http.client.HTTPConnection("engine")
    conn.sock = socket.socket(socket.AF_UNIX)
    conn.sock.connect(sock.removeprefix("unix://"))
    conn.request("POST", path)
    r = conn.getresponse()
    r.read()
    conn.close()
    return r.status


def test_container_component_publishes_to_the_node_broker(tmp_path):
    sock, image = engine()
    # The component's MQTT username is `component:sim`; it publishes as a
    # device of that name, on the topics its spec asks rights for.
    topic = "devices/component:sim/telemetry"

    def components(node):
        return f"""
[containers]
engine = "{sock}"
pull = false

[[components]]
name = "sim"
version = "1.0.0"
kind = "container"
image = "{image}"
command = "sh"
args = ["-c", 'exec verge device simulate --node 127.0.0.1:{node.tcp} --device "$VERGE_MQTT_USERNAME" --secret "$VERGE_MQTT_PASSWORD" --interval 200ms']
stop_timeout = "2s"
backoff_min = "100ms"
mqtt = {{ publish = ["{topic}"], subscribe = ["devices/component:sim/commands/#"] }}
"""

    n = Node(tail=components)
    sub = None
    try:
        sub = Client(n, V5)
        sub.sub(topic, 1)
        device_telemetry(sub, "component:sim", lambda doc: True, timeout=60)
        deadline = time.time() + 10
        while True:
            info = node_api(n, "/api/components/sim")
            if info["state"] == "healthy" and info.get("container_id"):
                break
            assert time.time() < deadline, info
            time.sleep(0.1)
        assert len(info["container_id"]) == 12, info
        # The engine's attach stream may bring the output a moment after
        # the broker has the telemetry.
        deadline = time.time() + 20
        while not (logs := node_api(n, "/api/components/sim/logs?tail=100"))["lines"]:
            assert time.time() < deadline, f"no output from the container: {logs}"
            time.sleep(0.1)

        # Killed from outside the node: a new container, new credentials,
        # telemetry again.
        first = info["container_id"]
        assert engine_post(sock, f"/v1.41/containers/{first}/kill") == 204
        deadline = time.time() + 60
        while True:
            info = node_api(n, "/api/components/sim")
            if info["restarts"] >= 1 and info["state"] == "healthy" \
                    and info.get("container_id") not in (None, first):
                break
            assert time.time() < deadline, info
            time.sleep(0.1)
        assert "exited with status" in (info.get("last_error") or ""), info
        while not sub.msgs.empty():  # what the first container sent
            sub.msgs.get_nowait()
        device_telemetry(sub, "component:sim", lambda doc: True, timeout=60)
    finally:
        if sub:
            sub.close()
        n.stop()
    out = n.output()
    assert "component failed" not in out, out[-3000:]
    # The node's stop stopped and removed the container.
    filters = urllib.parse.quote(json.dumps({"label": ["io.verge.component=sim"]}))
    left = [c for c in engine_get(sock, f"/v1.41/containers/json?all=true&filters={filters}")
            if c["Names"] and c["Names"][0].lstrip("/").startswith("verge-")
            and c["Labels"].get("io.verge.node") == "verge-node"
            and info["container_id"] in c["Id"]]
    assert left == [], left
