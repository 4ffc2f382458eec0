"""External broker mode with real processes: Mosquitto (Debian's) as the
nodes' MQTT broker, PostgreSQL (VERGE_TEST_POSTGRES_URL, a fresh database
dropped at the end), two `verge cloud` replicas with `mqtt.mode =
"external"` consuming `$share/verge-cloud/nodes/+/up/#`, and a real
`verge node` joined through replica A that talks MQTT to Mosquitto only.

- upstream: a device on the node publishes a numbered stream; replica B
  is killed -9 in the middle of it; every reading is stored exactly once
  (no loss, no duplicate), and replica A adopts B's broker session (the
  messages Mosquitto kept in flight or queued for B are drained and
  stored by A, then B's session is ended);
- downstream: a command made through replica A reaches the device
  through Mosquitto.

The test runs twice, once per way node credentials reach Mosquitto:
- `dynsec`, the production path on Debian's Mosquitto (which has no
  HTTP-auth plugin): the replicas run with
  `mqtt.external.provision = "mosquitto-dynsec"` and write the cloud's
  own user at start and each node's client and role at join into the
  broker's dynamic-security plugin; the test adds nothing by hand;
- `password-file`: the test itself adds the node's id and secret to
  Mosquitto's password file with `mosquitto_passwd` after the join and
  reloads Mosquitto (SIGHUP to the PID it started); the ACL file lets the
  cloud's user use `nodes/#` and each node only its own `nodes/{id}/up/#`
  (publish) and `nodes/{id}/down/#` (subscribe).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import types
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from cloud_procs import Mosquitto, Proc, api, database, dynsec_available, procs, start_node, wait_for  # noqa: F401 (fixtures)
from verge_interop import V5, WAIT, Client, free_port, port_open

READINGS = 600


def call(url, token, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method=method,
                                 headers={"Authorization": f"Bearer {token}",
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            raw = r.read()
            return json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        e.msg = f"{e.msg}: {method} {path}: {e.read().decode(errors='replace')}"
        raise


def metric(url, name):
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    m = re.search(rf"^{name} (\d+)$", text, re.M)
    return int(m.group(1)) if m else None


def until(what, check, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    pytest.fail(what)


# The cloud's consumers keep up to this many unacknowledged messages each
# (its receive maximum is 1000).
BROKER_LIMITS = ["persistence false", "max_inflight_messages 100", "max_queued_messages 10000",
                 "log_dest stdout", "log_type all"]


class PasswordFileBroker(Mosquitto):
    """Mosquitto with a password file and an ACL file."""

    def __init__(self, workdir, cloud_password):
        super().__init__(workdir)
        self.passwords = self.dir / "passwords"
        subprocess.run(["mosquitto_passwd", "-b", "-c", str(self.passwords), "cloud", cloud_password],
                       check=True, capture_output=True)
        acl = self.dir / "acl"
        acl.write_text("user cloud\ntopic readwrite nodes/#\n\n"
                       "pattern write nodes/%u/up/#\npattern read nodes/%u/down/#\n")
        self.configure(f"password_file {self.passwords}", f"acl_file {acl}", *BROKER_LIMITS)
        self.launch()

    def add_user(self, user, password):
        subprocess.run(["mosquitto_passwd", "-b", str(self.passwords), user, password],
                       check=True, capture_output=True)
        os.kill(self.proc.pid, signal.SIGHUP)

    def cloud_args(self):
        """What the replicas add for this broker's credentials: none."""
        return []


class DynsecBroker(Mosquitto):
    """Mosquitto with the dynamic-security plugin: the cloud writes its
    own user and every node's credentials into it."""

    def __init__(self, workdir, cloud_password):
        super().__init__(workdir)
        self.admin_password = "admin-" + uuid.uuid4().hex
        self.admin_file = self.dir / "admin-password"
        self.admin_file.write_text(self.admin_password + "\n")
        self.admin_file.chmod(0o600)
        self.configure(*self.dynsec_init(self.admin_password), *BROKER_LIMITS)
        self.launch()

    def add_user(self, user, password):
        """Nothing to do: the cloud provisioned the node at its join."""

    def cloud_args(self):
        return [
            "--set", "mqtt.external.provision=mosquitto-dynsec",
            "--set", f"mqtt.external.admin_url=mqtt://127.0.0.1:{self.port}",
            "--set", "mqtt.external.admin_username=admin",
            "--set", f"mqtt.external.admin_password_file={self.admin_file}",
        ]


def start_replica(procs, workdir, name, db, broker, password_file):
    http = free_port()
    cloud = Proc(name, [
        "cloud",
        "--set", f"http.bind=127.0.0.1:{http}",
        "--set", f"cloud.data_dir={workdir}/{name}",
        "--set", f"cloud.database={db}",
        "--set", "mqtt.mode=external",
        "--set", f"mqtt.external.url=mqtt://127.0.0.1:{broker.port}",
        "--set", "mqtt.external.username=cloud",
        "--set", f"mqtt.external.password_file={password_file}",
        "--set", "mqtt.external.adopt_after=5s",
        *broker.cloud_args(),
    ], workdir)
    procs.append(cloud)
    wait_for(f"{name} did not listen on 127.0.0.1:{http}", lambda: port_open(http), cloud, timeout=30)
    url = f"http://127.0.0.1:{http}"
    wait_for(f"{name}'s consumer did not connect to mosquitto",
             lambda: metric(url, "verge_cloud_external_connected") == 1, cloud, timeout=30)
    return cloud, url


@pytest.mark.skipif(shutil.which("mosquitto") is None, reason="mosquitto is not installed")
@pytest.mark.parametrize("credentials", ["dynsec", "password-file"])
def test_two_replicas_on_mosquitto_store_once_through_a_kill_and_send_commands(database, procs, credentials):
    if credentials == "dynsec" and not dynsec_available():
        pytest.skip("needs Debian's mosquitto_dynamic_security.so and mosquitto_ctrl")
    workdir = tempfile.mkdtemp(prefix="verge-external-")
    cloud_password = uuid.uuid4().hex
    password_file = Path(workdir, "cloud-mqtt-password")
    password_file.write_text(cloud_password + "\n")
    password_file.chmod(0o600)
    kind = DynsecBroker if credentials == "dynsec" else PasswordFileBroker
    broker = kind(workdir, cloud_password)
    try:
        run(procs, workdir, database, broker, password_file)
    except BaseException:
        print(f"----- mosquitto -----\n{broker.output()[-6000:]}")
        raise
    finally:
        broker.stop()


def run(procs, workdir, db, broker, password_file):
    a, a_url = start_replica(procs, workdir, "cloud-a", db, broker, password_file)
    admin = wait_for("replica A printed no admin token",
                     lambda: (m := re.search(r"admin token: ([0-9a-f]{16,})", a.output())) and m.group(1), a)
    b, b_url = start_replica(procs, workdir, "cloud-b", db, broker, password_file)
    # B's banner names the external broker, not an endpoint of its own.
    wait_for("replica B's banner", lambda: f"mqtt://127.0.0.1:{broker.port}  (external broker" in b.output(), b)

    created = call(a_url, admin, "POST", "/api/nodes", {"name": "edge-ext"})
    node_id = created["node"]["id"]
    node, ports = start_node(procs, workdir, a_url, created["join_token"])
    creds_file = Path(workdir, "node", "cloud", "credentials.json")
    creds = json.loads(wait_for("the node's credentials", lambda: creds_file.exists() and creds_file.read_text(), node))
    assert creds["mqtt_url"] == f"mqtt://127.0.0.1:{broker.port}", creds
    broker.add_user(node_id, creds["secret"])

    dev_secret = call(a_url, admin, "POST", "/api/devices", {"name": "d1", "node_id": node_id})["secret"]
    shim = types.SimpleNamespace(tcp=ports["tcp"], ws=ports["ws"])

    def device():
        deadline = time.time() + 30
        while True:
            c = Client(shim, V5, cid="d1", user=("d1", dev_secret))
            if not c.rc.is_failure:
                return c
            c.close()
            if time.time() > deadline:
                raise AssertionError(f"device d1 could not log in: {c.rc}")
            time.sleep(0.2)

    dev = device()
    # The node's link to Mosquitto is up once a first reading is stored.
    dev.pub("devices/d1/telemetry", json.dumps({"seq": -1}), qos=1)

    def stored():
        out = subprocess.run(
            ["psql", db, "-At", "-c",
             f"SELECT COUNT(*), COUNT(DISTINCT payload) FROM messages WHERE node_id = '{node_id}' "
             "AND topic = 'devices/d1/telemetry'"],
            check=True, capture_output=True, text=True).stdout.strip()
        total, distinct = out.split("|")
        return int(total), int(distinct)

    until("the first reading was not stored (node → mosquitto → replicas)", lambda: stored()[0] >= 1, timeout=60)

    # The stream; B is killed -9 once it has taken part in it.
    killed = False
    for seq in range(READINGS):
        dev.pub("devices/d1/telemetry", json.dumps({"seq": seq}), qos=1)
        if not killed and seq >= READINGS // 3 and (metric(b_url, "verge_cloud_ingest_messages_total") or 0) > 0:
            os.kill(b.proc.pid, signal.SIGKILL)
            b.proc.wait()
            killed = True
            killed_at = seq
        time.sleep(0.005)
    assert killed, "replica B never received a message of the stream"
    print(f"replica B killed -9 after reading {killed_at}")

    total = until(f"not every reading stored: {stored()}", lambda: (s := stored())[1] >= READINGS + 1 and s,
                  timeout=120)
    # Exactly once: as many rows as distinct readings.
    assert total == (READINGS + 1, READINGS + 1), total
    # Replica A took over B's broker session, drained it and ended it.
    until("replica A did not adopt B's session",
          lambda: (metric(a_url, "verge_cloud_external_sessions_adopted_total") or 0) >= 1, timeout=60)
    time.sleep(2)
    assert stored() == (READINGS + 1, READINGS + 1)
    print(f"replica A drained {metric(a_url, 'verge_cloud_external_adopted_messages_total')} "
          "message(s) from B's session")

    # Downstream: a command through replica A reaches the device via Mosquitto.
    assert dev.sub("devices/d1/commands/#", 1) == [1]
    cmd = call(a_url, admin, "POST", "/api/devices/d1/commands/blink", {"times": 2})["command"]
    deadline = time.time() + 30
    while True:
        m = dev.recv(timeout=max(0.1, deadline - time.time()))
        if m.topic.startswith("devices/d1/commands/"):
            break
    assert m.topic == f"devices/d1/commands/blink/{cmd['id']}", m.topic
    assert json.loads(m.payload) == {"times": 2}
    until("the command was not reported delivered",
          lambda: api(a_url, admin, f"/api/commands/{cmd['id']}")["status"] in ("delivered", "sent"),
          timeout=WAIT * 6)
    dev.close()
