"""Node credentials on Mosquitto (Debian's 2.0, which has no HTTP-auth
plugin) through its dynamic-security plugin: a real `verge cloud` with
`mqtt.external.provision = "mosquitto-dynsec"` writes each joined node's
client and role into the broker; paho clients then check what a node may
do there. The cloud's own node channel stays embedded here: provisioning
does not depend on it."""

import getpass
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from cloud_procs import procs, start_cloud, wait_for  # noqa: F401 - fixture
from verge_interop import V5, Client, free_port, port_open, terminate

DYNSEC = Path("/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so")


def private(path, text):
    path.write_text(text)
    os.chmod(path, 0o600)
    return path


def call(url, token, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


class Mosquitto:
    """Mosquitto with the dynamic-security plugin on a free loopback port."""

    def __init__(self, workdir, admin_password):
        self.port = free_port()
        self.dir = Path(workdir) / "mosquitto"
        self.dir.mkdir()
        self.config = self.dir / "dynsec.json"
        subprocess.run(["mosquitto_ctrl", "dynsec", "init", str(self.config), "admin", admin_password],
                       check=True, capture_output=True)
        self.admin_password = admin_password
        conf = self.dir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous false\n"
            f"plugin {DYNSEC}\n"
            f"plugin_opt_config_file {self.config}\n"
            "persistence false\n"
            # Started as root, mosquitto would switch to its own user,
            # which may not read the test's files.
            f"user {getpass.getuser()}\n"
        )
        self.log_path = self.dir / "mosquitto.log"
        self.log = open(self.log_path, "w+")
        self.proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=self.log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.time() + 10
        while not port_open(self.port):
            if time.time() > deadline or self.proc.poll() is not None:
                self.stop()
                pytest.fail(f"mosquitto did not listen:\n{self.log_path.read_text()}")
            time.sleep(0.05)
        self.endpoint = SimpleNamespace(tcp=self.port)

    def ctrl(self, *args):
        """`mosquitto_ctrl dynsec …` as the admin; its output."""
        r = subprocess.run(["mosquitto_ctrl", "-h", "127.0.0.1", "-p", str(self.port), "-u", "admin",
                            "-P", self.admin_password, "dynsec", *args],
                           capture_output=True, text=True, timeout=20)
        return r.stdout + r.stderr

    def client(self, user, password, cid=None):
        return Client(self.endpoint, V5, cid=cid, user=(user, password))

    def node(self, node, password, cid=None):
        """Node `node` connecting, by default with its bridge's client id
        (the one its broker client is bound to)."""
        return self.client(node, password, cid or f"verge-node-{node}")

    def stop(self):
        terminate(self.proc)
        print(f"----- mosquitto ({self.log_path}) -----\n{self.log_path.read_text()[-4000:]}")


@pytest.fixture
def mosquitto(tmp_path):
    if not shutil.which("mosquitto") or not shutil.which("mosquitto_ctrl") or not DYNSEC.exists():
        pytest.skip("needs Debian's mosquitto with mosquitto_dynamic_security.so and mosquitto_ctrl")
    m = Mosquitto(tmp_path, "admin-" + uuid.uuid4().hex)
    yield m
    m.stop()


def refused(c):
    return c.rc.is_failure


def join(url, token, name):
    s, v = call(url, token, "POST", "/api/nodes", {"name": name})
    assert s == 201, v
    s, v = call(url, None, "POST", "/api/agent/join", {"token": v["join_token"], "hostname": "h"})
    assert s == 200, v
    return v["secret"]


def test_node_credentials_on_mosquitto_dynsec(tmp_path, procs, mosquitto):  # noqa: F811
    # A stale node client, as a node deleted while the cloud was down
    # leaves it: the cloud's reconcile at start removes it.
    mosquitto.ctrl("createRole", "verge-node-ghost")
    mosquitto.ctrl("createClient", "ghost", "-p", "ghost-pw")
    mosquitto.ctrl("addClientRole", "ghost", "verge-node-ghost")
    # An observer that may read everything (the leak detector).
    mosquitto.ctrl("createRole", "spy")
    mosquitto.ctrl("addRoleACL", "spy", "subscribePattern", "#", "allow")
    mosquitto.ctrl("createClient", "spy", "-p", "spy-pw")
    mosquitto.ctrl("addClientRole", "spy", "spy")

    admin_pw = private(tmp_path / "admin.pw", mosquitto.admin_password + "\n")
    cloud_pw = private(tmp_path / "cloud.pw", "cloud-" + uuid.uuid4().hex + "\n")
    url, token = start_cloud(procs, tmp_path, extra=[
        "--set", "mqtt.external.provision=mosquitto-dynsec",
        "--set", f"mqtt.external.admin_url=mqtt://127.0.0.1:{mosquitto.port}",
        "--set", "mqtt.external.admin_username=admin",
        "--set", f"mqtt.external.admin_password_file={admin_pw}",
        "--set", "mqtt.external.username=verge-cloud",
        "--set", f"mqtt.external.password_file={cloud_pw}",
    ])
    cloud = procs[-1]
    wait_for("the cloud did not reconcile the broker's credentials",
             lambda: "broker credentials reconciled" in cloud.output(), cloud)
    assert "Client not found" in mosquitto.ctrl("getClient", "ghost")

    s1, s2 = join(url, token, "n1"), join(url, token, "n2")

    spy = mosquitto.client("spy", "spy-pw")
    assert not refused(spy)
    assert spy.sub("#", 1) == [1]
    # the cloud's user, written by the cloud at start
    cl = mosquitto.client("verge-cloud", cloud_pw.read_text().strip())
    assert not refused(cl)
    assert cl.sub("$share/verge-cloud/nodes/+/up/#", 1) == [1]
    assert cl.sub("#", 1)[0] >= 0x80

    n1 = mosquitto.node("n1", s1)
    assert not refused(n1)
    n2 = mosquitto.node("n2", s2)
    assert not refused(n2)

    # its own topics: up reaches the cloud, down reaches the node
    n1.pub("nodes/n1/up/x", b"hello", qos=1)
    m = cl.recv()
    assert (m.topic, m.payload) == ("nodes/n1/up/x", b"hello")
    assert spy.recv().topic == "nodes/n1/up/x"
    assert n1.sub("nodes/n1/down/#", 1) == [1]
    assert n2.sub("nodes/n2/down/#", 1) == [1]
    cl.pub("nodes/n1/down/cmd", b"for-n1", qos=1)
    m = n1.recv()
    assert (m.topic, m.payload) == ("nodes/n1/down/cmd", b"for-n1")
    assert spy.recv().topic == "nodes/n1/down/cmd"
    n2.nothing()

    # not another node's topics, not its own down topics, not the wildcards
    for topic in ("nodes/n2/up/x", "nodes/n1/down/x", "nodes/n2/down/x", "other/x"):
        n1.pub(topic, b"nope", qos=1)
    spy.nothing(1.0)
    cl.nothing()
    n2.nothing()
    for f in ("#", "nodes/+/down/#", "nodes/n2/down/#", "nodes/n1/#", "$share/g/nodes/+/up/#"):
        assert n1.sub(f, 1)[0] >= 0x80, f
    # the client id is bound to the node: no other node's, no replica's
    # (n2's connection is not taken over: it still gets its message below)
    assert refused(mosquitto.node("n1", s1, cid="verge-node-n2"))
    assert refused(mosquitto.node("n1", s1, cid="verge-cloud-x"))
    assert refused(mosquitto.node("n1", s1, cid="n1-other"))
    cl.pub("nodes/n2/down/secret", b"for-n2", qos=1)
    assert n2.recv().payload == b"for-n2"
    n1.nothing(1.0)

    # a wrong secret is refused, another node's secret too
    assert refused(mosquitto.node("n1", "wrong"))
    assert refused(mosquitto.node("n1", s2))

    # a rejoin replaces the secret: the old one stops working
    s, v = call(url, token, "POST", "/api/nodes/n2/join-token")
    assert s == 200, v
    s, v = call(url, None, "POST", "/api/agent/join", {"token": v["join_token"], "hostname": "h"})
    assert s == 200, v
    assert refused(mosquitto.node("n2", s2))
    assert not refused(mosquitto.node("n2", v["secret"]))

    # deleted: the connection ends and the secret no longer logs in
    s, v = call(url, token, "DELETE", "/api/nodes/n1")
    assert s == 204, v
    n1.disconnects.get(timeout=5)
    assert refused(mosquitto.node("n1", s1))
    assert "Client not found" in mosquitto.ctrl("getClient", "n1")
    for c in (spy, cl):
        c.close()


def test_join_is_refused_while_the_broker_is_down_and_the_token_still_works(tmp_path, procs, mosquitto):  # noqa: F811
    admin_pw = private(tmp_path / "admin.pw", mosquitto.admin_password + "\n")
    url, token = start_cloud(procs, tmp_path, extra=[
        "--set", "mqtt.external.provision=mosquitto-dynsec",
        "--set", f"mqtt.external.admin_url=mqtt://127.0.0.1:{mosquitto.port}",
        "--set", "mqtt.external.admin_username=admin",
        "--set", f"mqtt.external.admin_password_file={admin_pw}",
    ])
    s, v = call(url, token, "POST", "/api/nodes", {"name": "n1"})
    assert s == 201, v
    join_token = v["join_token"]
    terminate(mosquitto.proc)  # by its PID
    s, v = call(url, None, "POST", "/api/agent/join", {"token": join_token, "hostname": "h"})
    assert s == 503, v
    assert v["error"]["code"] == "broker_unavailable", v
    # the broker comes back (same config file): the same token joins
    mosquitto.proc = subprocess.Popen(["mosquitto", "-c", str(mosquitto.dir / "mosquitto.conf")],
                                      stdout=mosquitto.log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL)
    wait_for("mosquitto did not come back", lambda: port_open(mosquitto.port), procs[-1])
    deadline = time.time() + 30
    while True:
        s, v = call(url, None, "POST", "/api/agent/join", {"token": join_token, "hostname": "h"})
        if s != 503 or time.time() > deadline:
            break
        time.sleep(0.5)
    assert s == 200, v
    assert not refused(mosquitto.node("n1", v["secret"]))
