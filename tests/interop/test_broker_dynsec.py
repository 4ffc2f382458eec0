"""Node credentials on Mosquitto (Debian's 2.0, which has no HTTP-auth
plugin) through its dynamic-security plugin: a real `verge cloud` with
`mqtt.external.provision = "mosquitto-dynsec"` writes each joined node's
client and role into the broker; paho clients then check what a node may
do there. The cloud's own node channel stays embedded here: provisioning
does not depend on it."""

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from types import SimpleNamespace

import pytest

from cloud_procs import Mosquitto, dynsec_available, procs, start_cloud, wait_for  # noqa: F401 - fixture
from verge_interop import V5, Client, terminate


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


class DynsecBroker(Mosquitto):
    """Mosquitto with the dynamic-security plugin."""

    def __init__(self, workdir, admin_password):
        super().__init__(workdir)
        self.admin_password = admin_password
        self.configure(*self.dynsec_init(admin_password), "persistence false")
        self.launch()
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


@pytest.fixture
def mosquitto(tmp_path):
    if not dynsec_available():
        pytest.skip("needs Debian's mosquitto with mosquitto_dynamic_security.so and mosquitto_ctrl")
    m = DynsecBroker(tmp_path, "admin-" + uuid.uuid4().hex)
    yield m
    m.stop()
    print(f"----- mosquitto ({m.log_path}) -----\n{m.output()[-4000:]}")


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
    mosquitto.launch()
    deadline = time.time() + 30
    while True:
        s, v = call(url, None, "POST", "/api/agent/join", {"token": join_token, "hostname": "h"})
        if s != 503 or time.time() > deadline:
            break
        time.sleep(0.5)
    assert s == 200, v
    assert not refused(mosquitto.node("n1", v["secret"]))
