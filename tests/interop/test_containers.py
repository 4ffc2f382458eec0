"""A container component reaches the node's broker: Podman's Docker
Engine API service runs an image holding the verge binary (built offline
by tests/containers/engine.sh), whose `verge device simulate` connects to
the node on 127.0.0.1 through the host network with its secret from the
environment; a paho subscriber sees its telemetry, and the node's API
shows the component healthy with its container id and its output.

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

import argon2
import pytest

from verge_interop import REPO, V5, Client, Node, device_telemetry, node_api, own_topics_device, verge_bin


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


def test_container_component_publishes_to_the_node_broker(tmp_path):
    sock, image = engine()
    reg = tmp_path / "devices.toml"
    reg.write_text(own_topics_device("boxed-sensor", argon2.PasswordHasher().hash("c0ntainer")))

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
args = ["device", "simulate", "--node", "127.0.0.1:{node.tcp}",
        "--device", "boxed-sensor", "--interval", "200ms"]
env = {{ VERGE_DEVICE_SECRET = "c0ntainer" }}
stop_timeout = "2s"
"""

    n = Node(extra=f'devices_file = "{reg}"', tail=components)
    sub = None
    try:
        sub = Client(n, V5)
        sub.sub("devices/boxed-sensor/telemetry", 1)
        device_telemetry(sub, "boxed-sensor", lambda doc: True, timeout=60)
        deadline = time.time() + 10
        while True:
            info = node_api(n, "/api/components/sim")
            if info["state"] == "healthy" and info.get("container_id"):
                break
            assert time.time() < deadline, info
            time.sleep(0.1)
        assert len(info["container_id"]) == 12, info
        logs = node_api(n, "/api/components/sim/logs?tail=100")
        assert logs["lines"], f"no output from the container: {logs}"
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
