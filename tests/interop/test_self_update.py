"""Self-update of the node, against real processes: a `verge cloud`, and a
node run from a copy of the binary in a temporary directory by a restart
loop (a bash `while`, standing in for systemd's Restart=always). The second
build (VERGE_TEST_SECOND_BUILD: the same source built with
VERGE_BUILD_TAG=b2, so it reports `<version>+b2`) is the release.

In order, on one node:
1. a release signed with another key is refused: a failed item `release`,
   nothing swapped;
2. a release that does not report healthy within the grace (the cloud is
   stopped while the new binary runs) is reverted: the old binary runs
   again and the cloud shows the attempt rolled back with the reason;
3. the release assigned again: the node runs b2, keeps the old binary as
   `verge-previous`, and the revision is applied.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from cloud_procs import procs, start_cloud, wait_for  # noqa: F401 (procs: fixture)
from test_components_cloud import cloud_call
from verge_interop import free_port, port_open, verge_bin, verge_env

GRACE_S = 10


def second_build():
    path = os.environ.get("VERGE_TEST_SECOND_BUILD")
    if path:
        return Path(path).resolve()
    if os.environ.get("CI") or os.environ.get("VERGE_REQUIRE_SELF_UPDATE"):
        pytest.fail("VERGE_TEST_SECOND_BUILD is not set (a verge built with VERGE_BUILD_TAG=b2)")
    pytest.skip("set VERGE_TEST_SECOND_BUILD to a verge built with VERGE_BUILD_TAG=b2")


def run(*args):
    return subprocess.run([str(a) for a in args], check=True, capture_output=True,
                          text=True, env=verge_env(), timeout=60).stdout


def version_of(binary):
    return run(binary, "--version").split()[1]


class Loop:
    """`verge node` from `binary`, restarted by a bash loop whenever it ends."""

    def __init__(self, binary, args, workdir, env):
        self.log_path = Path(workdir) / "node.log"
        self.log = open(self.log_path, "w+")
        script = 'while true; do "$@"; echo "== node exited with $?"; sleep 0.5; done'
        self.proc = subprocess.Popen(
            ["bash", "-c", script, "loop", str(binary), "node", *args],
            env=env, cwd=workdir, stdout=self.log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        self.name = "node (restart loop)"

    def output(self):
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        if self.proc.poll() is None:
            # The loop and the node: its whole process group.
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def test_self_update_refused_reverted_and_applied(procs, tmp_path):
    b2 = second_build()
    original = Path(verge_bin())
    v1, v2 = version_of(original), version_of(b2)
    assert v2 == f"{v1}+b2", (v1, v2)

    # The node runs from its own copy: target/debug/verge is never replaced.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "verge"
    shutil.copy2(original, exe)
    original_bytes = exe.read_bytes()
    b2_bytes = b2.read_bytes()

    key = run(original, "release", "keygen", "--out", tmp_path / "release.key").strip()
    run(original, "release", "keygen", "--out", tmp_path / "other.key")

    # A debug build is larger than the default limit (128 MiB).
    url, token = start_cloud(procs, tmp_path, ["--set", f"cloud.max_release_bytes={1 << 30}"])
    cloud = procs[-1]
    call = lambda method, path, body=None, ct="application/json": cloud_call(url, token, method, path, body, ct)  # noqa: E731
    created = call("POST", "/api/nodes", {"name": "edge-1"})
    data = tmp_path / "node"
    ports = {k: free_port() for k in ("tcp", "ws", "http", "coap")}
    args = [
        "--cloud", url,
        "--set", f"node.data_dir={data}",
        "--set", f"broker.listeners.tcp.bind=127.0.0.1:{ports['tcp']}",
        "--set", f"broker.listeners.ws.bind=127.0.0.1:{ports['ws']}",
        "--set", f"http.bind=127.0.0.1:{ports['http']}",
        "--set", f"coap.bind=127.0.0.1:{ports['coap']}",
    ]
    # Join once (with the release key); the loop then runs on the stored
    # credentials, as a service would.
    joined = subprocess.Popen(
        [str(exe), "node", *args, "--join", created["join_token"], "--release-key", key],
        env=verge_env(), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 20
        while not port_open(ports["tcp"]) and time.time() < deadline:
            time.sleep(0.1)
        assert port_open(ports["tcp"]), "the node did not start to join"
    finally:
        joined.send_signal(signal.SIGTERM)
        joined.wait(20)
    creds = json.loads((data / "cloud" / "credentials.json").read_text())
    assert creds["release_key"] == key

    env = {**verge_env(), "VERGE_RELEASE_GRACE_S": str(GRACE_S)}
    node = Loop(exe, args, tmp_path, env)
    procs.append(node)
    wait_for("the node did not start", lambda: port_open(ports["tcp"]), node, timeout=30)

    def node_info():
        return call("GET", "/api/nodes/edge-1")

    def reported_version():
        return ((node_info().get("report") or {}).get("agent_version")) or ""

    wait_for("the node did not report", lambda: reported_version() == v1, node, timeout=30)

    def attempt_of(revision):
        a = node_info().get("last_attempt") or {}
        return a if a.get("version") == revision and a.get("state") != "applying" else None

    def assign():
        call("PUT", "/api/nodes/edge-1/release", {"version": v2})
        return node_info()["desired_version"]

    def release(key_file):
        signed = json.loads(run(original, "release", "sign", "--key", key_file, "--version", v2, b2))
        call("POST", "/api/releases", signed)
        call("PUT", f"/api/releases/{v2}/binary", b2_bytes, "application/octet-stream")

    # 1. Signed with another key: refused, nothing swapped.
    release(tmp_path / "other.key")
    revision = assign()
    a = wait_for("the release signed with another key was not refused", lambda: attempt_of(revision), node, timeout=60)
    assert a["state"] == "rolled_back", a
    failed = [i for i in a["items"] if i["kind"] == "release"]
    assert failed and failed[0]["result"] == "failed", a
    assert "does not match the node's release key" in failed[0]["error"], a
    assert exe.read_bytes() == original_bytes
    assert not (data / "release" / "verge-previous").exists()
    call("DELETE", "/api/nodes/edge-1/release")
    call("DELETE", f"/api/releases/{v2}")

    # 2. Not healthy within the grace: the cloud stops answering once the
    #    node has the binary, so the new process never gets a heartbeat
    #    through. The old binary runs again and reports the failure.
    release(tmp_path / "release.key")
    staged = data / "release" / f"verge-{v2}"
    revision = assign()
    wait_for("the node did not download the release", staged.exists, node, timeout=60)
    os.kill(cloud.proc.pid, signal.SIGSTOP)
    try:
        wait_for("the new binary was not put in place", lambda: exe.read_bytes() == b2_bytes, node, timeout=30)
        wait_for("the old binary was not put back", lambda: exe.read_bytes() == original_bytes,
                 node, timeout=GRACE_S + 60)
    finally:
        os.kill(cloud.proc.pid, signal.SIGCONT)
    a = wait_for("the cloud did not see the attempt rolled back", lambda: attempt_of(revision), node, timeout=60)
    assert a["state"] == "rolled_back", a
    assert f"release {v2} did not report healthy within {GRACE_S} s; {v1} runs again" in a["error"], a
    wait_for("the node does not report the old version", lambda: reported_version() == v1, node, timeout=30)
    assert not (data / "release" / "update.json").exists()
    assert "== node exited" not in node.output(), "the node restarted by exec, not by exiting"

    # 3. Assigned again (a new revision): the node runs b2.
    call("DELETE", "/api/nodes/edge-1/release")
    revision = assign()
    a = wait_for("the release was not applied", lambda: attempt_of(revision), node, timeout=90)
    assert a["state"] == "applied", a
    assert {"kind": "release", "name": v2, "result": "applied"} in [
        {k: i.get(k) for k in ("kind", "name", "result")} for i in a["items"]], a
    wait_for("the node does not report b2", lambda: reported_version().endswith("+b2"), node, timeout=30)
    assert exe.read_bytes() == b2_bytes
    assert (data / "release" / "verge-previous").read_bytes() == original_bytes
    assert not staged.exists(), "the download is removed once the release is confirmed"
    deployment = node_info()["deployment"]
    assert deployment["state"] == "in_sync" and deployment["applied_revision"] == revision, deployment


def test_a_new_binary_that_stops_before_its_agent_runs_is_put_back(tmp_path):
    """A binary on trial that stops before its agent runs (here: its MQTT
    port is taken) counts each start; the start after the third puts the
    previous binary back at the executable's path and executes it with the
    same arguments. The "previous binary" is a script that records that it
    ran, so the test needs no second build and no cloud (the node runs on
    stored credentials, offline)."""
    original = Path(verge_bin())
    running = version_of(original)
    exe = tmp_path / "bin" / "verge"
    exe.parent.mkdir()
    shutil.copy2(original, exe)
    data = tmp_path / "node"
    (data / "release").mkdir(parents=True)
    (data / "cloud").mkdir()
    for d in (data, data / "release", data / "cloud"):
        d.chmod(0o700)
    creds = data / "cloud" / "credentials.json"
    creds.write_text(json.dumps({
        "cloud_url": f"http://127.0.0.1:{free_port()}", "node_id": "edge-1", "secret": "s" * 32,
        "mqtt_url": f"mqtt://127.0.0.1:{free_port()}"}))
    creds.chmod(0o600)
    update = data / "release" / "update.json"
    update.write_text(json.dumps({
        "state": "trial", "from": "0.0.1", "to": running, "revision": 2, "previous_revision": 1,
        "boots": 0, "started_ms": int(time.time() * 1000)}))
    marker = tmp_path / "previous-ran"
    previous = data / "release" / "verge-previous"
    previous.write_text(f'#!/bin/sh\necho "$@" > {marker}\n')
    previous.chmod(0o755)
    previous_bytes = previous.read_bytes()

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    args = [exe, "node", "--cloud", json.loads(creds.read_text())["cloud_url"],
            "--set", f"node.data_dir={data}",
            "--set", f"broker.listeners.tcp.bind=127.0.0.1:{taken.getsockname()[1]}",
            "--set", f"broker.listeners.ws.bind=127.0.0.1:{free_port()}",
            "--set", f"http.bind=127.0.0.1:{free_port()}",
            "--set", f"coap.bind=127.0.0.1:{free_port()}"]
    try:
        for boots in (1, 2, 3):
            r = subprocess.run([str(a) for a in args], capture_output=True, text=True,
                               env=verge_env(), cwd=tmp_path, timeout=60)
            assert r.returncode != 0, r.stdout + r.stderr
            assert json.loads(update.read_text())["boots"] == boots, r.stderr
            assert exe.read_bytes() != previous_bytes
            assert not marker.exists()
        r = subprocess.run([str(a) for a in args], capture_output=True, text=True,
                           env=verge_env(), cwd=tmp_path, timeout=60)
    finally:
        taken.close()
    assert r.returncode == 0, r.stdout + r.stderr
    assert exe.read_bytes() == previous_bytes, "the previous binary is not back"
    assert marker.read_text().split()[:2] == ["node", "--cloud"], marker.read_text()
    # Left for the previous binary's agent, which reports the trial as
    # rolled back (the agent's tests cover that part).
    assert json.loads(update.read_text())["boots"] == 4
