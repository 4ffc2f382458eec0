"""Devices end to end with real processes: a `verge cloud`, a joined
`verge node` and devices played by third-party clients (paho-mqtt over
MQTT 5 and 3.1.1, aiocoap over CoAP).

- shadow: get/update/delta over MQTT, update and read over CoAP, a stale
  version refused, desired set in the cloud reaching the device, reported
  state reaching the cloud;
- offline edits on both sides (the cloud paused with SIGSTOP while the
  device reports and a local app changes desired on the node, after the
  cloud changed desired while the node was stopped) merge by the
  documented rule;
- commands: sent while the node is stopped, delivered when it returns
  (MQTT 5 properties and the 3.1.1 topic convention), the reply stored;
  a command whose time to live ends first is expired; a device that drops
  before replying gets the same id again;
- alarms: a rule's `alarm` action raises while the cloud is unreachable,
  the alarm arrives when it returns; acknowledged and cleared through the
  API;
- history: readings a rule's `store` action keeps in the node's store come
  back through the cloud's `/history` (raw and averaged over buckets).
"""

import asyncio
import json
import os
import signal
import tempfile
import time
import types
import urllib.error
import urllib.request
from pathlib import Path

from aiocoap import Code, Context, Message
from aiocoap.numbers import ContentFormat
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud_procs import api, procs, start_cloud, start_node, wait_for  # noqa: F401 (procs: fixture)
from verge_interop import V3, V5, WAIT, Client


COAP = ("--set", "coap.enabled=true")


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
        e.body = e.read()
        e.msg = f"{e.msg}: {method} {path}: {e.body.decode(errors='replace')}"
        raise


def call_error(url, token, method, path, body=None):
    try:
        call(url, token, method, path, body)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.body)["error"]
    raise AssertionError(f"{method} {path} succeeded")


class Fleet:
    """A cloud with one node and devices on it."""

    def __init__(self, procs):
        self.procs = procs
        self.workdir = tempfile.mkdtemp(prefix="verge-devices-")
        self.cloud_url, self.admin = start_cloud(procs, self.workdir)
        self.cloud = procs[-1]
        created = self.call("POST", "/api/nodes", {"name": "edge-1"})
        self.node_id = created["node"]["id"]
        self.node, self.ports = start_node(procs, self.workdir, self.cloud_url, created["join_token"],
                                          extra=COAP)
        self.secrets = {}
        token_file = Path(self.workdir, "node", "api-token")
        self.node_token = wait_for("the node's API token",
                                   lambda: token_file.exists() and token_file.read_text().strip(),
                                   self.node)

    def call(self, method, path, body=None):
        return call(self.cloud_url, self.admin, method, path, body)

    def get(self, path):
        return api(self.cloud_url, self.admin, path)

    def node_call(self, method, path, body=None):
        return call(f"http://127.0.0.1:{self.ports['http']}", self.node_token, method, path, body)

    def add_device(self, name):
        created = self.call("POST", "/api/devices", {"name": name, "node_id": self.node_id})
        self.secrets[name] = created["secret"]
        return created["secret"]

    def connect(self, name, proto=V5, **kw):
        """A paho client logged in as device `name` (retried until the node
        runs the revision that has the device)."""
        shim = types.SimpleNamespace(tcp=self.ports["tcp"], ws=self.ports["ws"])
        deadline = time.time() + 30
        while True:
            c = Client(shim, proto, cid=name, user=(name, self.secrets[name]), **kw)
            ok = c.rc == 0 if proto == V3 else not c.rc.is_failure
            if ok:
                return c
            c.close()
            if time.time() > deadline:
                raise AssertionError(f"device {name} could not log in: {c.rc}")
            time.sleep(0.2)

    def restart_node(self):
        self.node.stop()
        self.node, _ = start_node(self.procs, self.workdir, self.cloud_url, None, ports=self.ports,
                                  extra=COAP)

    def pause_cloud(self):
        os.kill(self.cloud.proc.pid, signal.SIGSTOP)

    def resume_cloud(self):
        os.kill(self.cloud.proc.pid, signal.SIGCONT)

    def wait(self, what, check, timeout=30):
        return wait_for(what, check, self.cloud, timeout=timeout)


def shadow_request(dev, device, op, body, token):
    """Publish a shadow request and wait for its accepted/rejected answer
    carrying `token` (answers to other requests are skipped)."""
    dev.pub(f"$shadow/{device}/{op}", json.dumps({**body, "client_token": token}), qos=1)
    deadline = time.time() + WAIT
    while time.time() < deadline:
        m = dev.recv(timeout=max(0.1, deadline - time.time()))
        if m.topic.startswith(f"$shadow/{device}/{op}/"):
            doc = json.loads(m.payload)
            if doc.get("client_token") == token:
                return m.topic.rsplit("/", 1)[1], doc
    raise AssertionError(f"no answer to {op} {token}")


def next_message(dev, prefix, timeout=WAIT):
    deadline = time.time() + timeout
    while time.time() < deadline:
        m = dev.recv(timeout=max(0.1, deadline - time.time()))
        if m.topic.startswith(prefix):
            return m
    raise AssertionError(f"no message under {prefix}")


def test_shadow_over_mqtt_and_coap_with_the_cloud(procs):
    f = Fleet(procs)
    secret = f.add_device("d1")
    dev = f.connect("d1")
    assert dev.sub("$shadow/d1/#", 1) == [1]

    # get: an empty shadow at version 0
    dev.pub("$shadow/d1/get", b"{}", qos=1)
    got = next_message(dev, "$shadow/d1/get/")
    assert got.topic == "$shadow/d1/get/accepted", got.topic
    assert json.loads(got.payload)["version"] == 0

    # the device reports; the answer is the new document
    kind, doc = shadow_request(dev, "d1", "update", {"reported": {"fw": "1.0", "interval": 10}}, "t1")
    assert kind == "accepted", doc
    assert doc["reported"] == {"fw": "1.0", "interval": 10} and doc["version"] == 1, doc

    # a stale version is refused and changes nothing
    kind, doc = shadow_request(dev, "d1", "update", {"reported": {"fw": "0.9"}, "version": 0}, "t2")
    assert kind == "rejected" and doc["code"] == "version_conflict", doc

    # the report reaches the cloud
    shadow = f.wait("the reported state in the cloud", lambda: (
        (s := f.get("/api/devices/d1/shadow"))["reported"].get("interval") == 10 and s))
    assert shadow["reported"]["fw"] == "1.0", shadow

    # the cloud sets desired; the device is told the delta
    f.call("PATCH", "/api/devices/d1/shadow", {"desired": {"interval": 5}, "version": shadow["version"]})
    delta = next_message(dev, "$shadow/d1/update/delta", timeout=15)
    assert json.loads(delta.payload)["state"] == {"interval": 5}, delta.payload
    # a PATCH against an old version is refused with 409
    code, err = call_error(f.cloud_url, f.admin, "PATCH", "/api/devices/d1/shadow",
                           {"desired": {"interval": 7}, "version": shadow["version"]})
    assert code == 409 and err["code"] == "version_conflict", err
    # the device applies it and reports; the cloud's delta empties
    kind, doc = shadow_request(dev, "d1", "update", {"reported": {"interval": 5}}, "t3")
    assert kind == "accepted" and doc["desired"]["interval"] == 5, doc
    f.wait("the cloud's delta empty after the report",
           lambda: (s := f.get("/api/devices/d1/shadow"))["delta"] == {} and s["reported"]["interval"] == 5)

    # CoAP: the same shadow through the gateway, with the device's credentials
    coap = f.ports["coap"]
    auth = f"u=d1&p={secret}"

    async def coap_update_and_read():
        ctx = await Context.create_client_context()
        try:
            msg = Message(code=Code.POST, uri=f"coap://127.0.0.1:{coap}/ps/$shadow/d1/update?{auth}",
                          payload=json.dumps({"reported": {"battery": 88}}).encode(),
                          content_format=ContentFormat.JSON)
            posted = await ctx.request(msg).response
            assert posted.code.is_successful(), posted
            for _ in range(50):
                r = await ctx.request(Message(
                    code=Code.GET, uri=f"coap://127.0.0.1:{coap}/ps/$shadow/d1/document?{auth}")).response
                if r.code == Code.CONTENT and json.loads(r.payload)["reported"].get("battery") == 88:
                    return json.loads(r.payload)
                await asyncio.sleep(0.1)
            raise AssertionError(f"the CoAP document never showed the update: {r.code} {r.payload!r}")
        finally:
            await ctx.shutdown()

    doc = asyncio.run(asyncio.wait_for(coap_update_and_read(), 4 * WAIT))
    assert doc["reported"]["interval"] == 5, doc
    f.wait("the CoAP report in the cloud",
           lambda: f.get("/api/devices/d1/shadow")["reported"].get("battery") == 88)

    # another device may not touch d1's shadow
    f.add_device("d2")
    other = f.connect("d2")
    rc = other.pub("$shadow/d1/update", json.dumps({"reported": {"fw": "evil"}}), qos=1)
    assert rc.is_failure, rc
    dev.close()
    other.close()


def test_offline_edits_on_both_sides_merge_by_the_rule(procs):
    f = Fleet(procs)
    f.add_device("d1")
    dev = f.connect("d1")
    assert dev.sub("$shadow/d1/#", 1) == [1]
    kind, _ = shadow_request(dev, "d1", "update", {"reported": {"rate": 1}, "desired": {"rate": 1}}, "a")
    assert kind == "accepted"
    f.wait("the first report in the cloud",
           lambda: f.get("/api/devices/d1/shadow")["reported"].get("rate") == 1)
    dev.close()

    # the node is stopped while the cloud changes desired
    f.node.stop()
    f.call("PATCH", "/api/devices/d1/shadow", {"desired": {"rate": 5, "mode": "eco"}})
    time.sleep(0.05)
    # the cloud becomes unreachable; the node comes back on its own
    f.pause_cloud()
    try:
        f.node, _ = start_node(procs, f.workdir, f.cloud_url, None, ports=f.ports, extra=COAP)
        dev = f.connect("d1")
        assert dev.sub("$shadow/d1/#", 1) == [1]
        kind, _ = shadow_request(dev, "d1", "update", {"reported": {"rate": 2}}, "b")
        assert kind == "accepted"
        # a local app changes desired on the node, later than the cloud did
        f.node_call("PATCH", "/api/devices/d1/shadow", {"desired": {"mode": "boost"}})
    finally:
        f.resume_cloud()

    def converged():
        s = f.get("/api/devices/d1/shadow")
        return (s["desired"].get("rate") == 5 and s["desired"].get("mode") == "boost"
                and s["reported"].get("rate") == 2 and s["synced"] and s)
    cloud_side = f.wait("the cloud's copy converged", converged, timeout=60)
    node_side = f.wait("the node's copy converged", lambda: (
        (s := f.node_call("GET", "/api/devices/d1/shadow"))["desired"].get("rate") == 5 and s))
    for s in (cloud_side, node_side):
        assert s["desired"]["mode"] == "boost", s  # the node's later edit
        assert s["desired"]["rate"] == 5, s  # the cloud's edit
        assert s["reported"]["rate"] == 2, s  # the device's report
    dev.close()


def test_commands_reach_an_offline_node_when_it_returns_and_replies_are_stored(procs):
    f = Fleet(procs)
    f.add_device("d1")
    f.add_device("old")
    # the devices exist on the node before it stops
    f.connect("d1").close()
    f.node.stop()

    sent = f.call("POST", "/api/devices/d1/commands/reboot?ttl=5m", {"delay": 3})["command"]
    assert sent["status"] == "queued" and sent["name"] == "reboot", sent
    legacy = f.call("POST", "/api/devices/old/commands/blink", {"times": 2})["command"]
    short = f.call("POST", "/api/devices/d1/commands/short?ttl=1s", {})["command"]
    code, err = call_error(f.cloud_url, f.admin, "POST", "/api/devices/d1/commands/x?ttl=30d", {})
    assert code == 400, err
    f.wait("the short command expired in the cloud",
           lambda: f.get(f"/api/commands/{short['id']}")["status"] == "expired")

    f.node, _ = start_node(procs, f.workdir, f.cloud_url, None, ports=f.ports, extra=COAP)
    f.wait("the command at the node", lambda: f.get(f"/api/commands/{sent['id']}")["status"] == "sent")

    # an MQTT 5 device gets it with its id, a response topic and correlation data
    dev = f.connect("d1")
    assert dev.sub("devices/d1/commands/#", 1) == [1]
    m = next_message(dev, "devices/d1/commands/", timeout=15)
    assert m.topic == f"devices/d1/commands/reboot/{sent['id']}", m.topic
    assert json.loads(m.payload) == {"delay": 3}
    assert m.properties.ResponseTopic == f"devices/d1/replies/{sent['id']}"
    assert m.properties.CorrelationData == sent["id"].encode()
    f.wait("delivered", lambda: f.get(f"/api/commands/{sent['id']}")["status"] == "delivered")
    # it drops before replying: at least once, the same id comes again
    dev.drop()
    dev = f.connect("d1")
    assert dev.sub("devices/d1/commands/#", 1) == [1]
    again = next_message(dev, "devices/d1/commands/", timeout=15)
    assert again.topic == m.topic, again.topic
    props = Properties(PacketTypes.PUBLISH)
    props.CorrelationData = m.properties.CorrelationData
    dev.pub(m.properties.ResponseTopic, json.dumps({"ok": True, "uptime": 12}), qos=1, props=props)
    done = f.wait("the reply in the cloud",
                  lambda: (c := f.get(f"/api/commands/{sent['id']}"))["status"] == "replied" and c)
    assert done["reply"] == {"ok": True, "uptime": 12}, done
    listed = f.get("/api/devices/d1/commands")
    statuses = {c["id"]: c["status"] for c in listed}
    assert statuses == {sent["id"]: "replied", short["id"]: "expired"}, listed
    assert listed[0]["created_ms"] >= listed[-1]["created_ms"], "newest first"

    # a 3.1.1 device: the id is in the topic, it answers on the failed topic
    old = f.connect("old", proto=V3)
    old.sub("devices/old/commands/#", 1)
    m = next_message(old, "devices/old/commands/", timeout=15)
    cid = m.topic.rsplit("/", 1)[1]
    assert cid == legacy["id"] and m.topic.startswith("devices/old/commands/blink/"), m.topic
    old.pub(f"devices/old/replies/{cid}/failed", b"led broken", qos=1)
    failed = f.wait("the failure in the cloud",
                    lambda: (c := f.get(f"/api/commands/{cid}"))["status"] == "failed" and c)
    assert "led broken" in (failed["error"] or ""), failed
    dev.close()
    old.close()


def test_an_alarm_raised_while_the_cloud_is_unreachable_arrives_and_is_acknowledged_and_cleared(procs):
    f = Fleet(procs)
    f.add_device("d1")
    f.call("POST", "/api/rules", {
        "id": "overheat", "node_id": f.node_id,
        "sql": 'SELECT * FROM "devices/+/telemetry"',
        "actions": [{"type": "alarm", "alarm_type": "overheat", "severity": "critical",
                     "message": "temperature {temp}", "clear_when": "temp < 70"}],
    })
    f.wait("the rule on the node", lambda: any(
        r.get("id") == "overheat" for r in f.node_call("GET", "/api/rules")))
    dev = f.connect("d1")
    f.pause_cloud()
    try:
        dev.pub("devices/d1/telemetry", json.dumps({"temp": 91}), qos=1)
        time.sleep(1)
    finally:
        f.resume_cloud()
    alarm = f.wait("the alarm in the cloud", lambda: (
        (a := f.get("/api/alarms?device_id=d1")) and a[0]["status"] == "active" and a[0]), timeout=60)
    assert alarm["type"] == "overheat" and alarm["severity"] == "critical", alarm
    assert alarm["message"] == "temperature 91" and alarm["acknowledged"] is False, alarm
    acked = f.call("POST", f"/api/alarms/{alarm['id']}/ack")
    assert acked["acknowledged"] is True and acked["status"] == "active", acked
    # the device cools down: the rule clears it
    dev.pub("devices/d1/telemetry", json.dumps({"temp": 50}), qos=1)
    cleared = f.wait("the alarm cleared by the rule",
                     lambda: (a := f.get(f"/api/devices/d1/alarms")) and a[0]["status"] == "cleared" and a[0])
    assert cleared["id"] == alarm["id"] and cleared["acknowledged"] is True, cleared
    # raised again: a new alarm; cleared through the API
    dev.pub("devices/d1/telemetry", json.dumps({"temp": 95}), qos=1)
    again = f.wait("a new alarm", lambda: (
        (a := f.get("/api/alarms?device_id=d1&status=active")) and a[0]))
    assert again["id"] != alarm["id"], again
    closed = f.call("POST", f"/api/alarms/{again['id']}/clear")
    assert closed["status"] == "cleared", closed
    dev.close()


def test_shadow_reports_and_replies_survive_a_kill_9_of_the_node(procs):
    """What the node acknowledged to a device while the cloud was
    unreachable (a shadow report, a command's reply) reaches the cloud
    after the node is killed with SIGKILL and started again."""
    f = Fleet(procs)
    f.add_device("d1")
    dev = f.connect("d1")
    assert dev.sub("$shadow/d1/#", 1) == [1]
    assert dev.sub("devices/d1/commands/#", 1) == [1]
    sent = f.call("POST", "/api/devices/d1/commands/ping", {"n": 1})["command"]
    m = next_message(dev, "devices/d1/commands/", timeout=15)
    assert m.topic == f"devices/d1/commands/ping/{sent['id']}", m.topic
    f.wait("delivered", lambda: f.get(f"/api/commands/{sent['id']}")["status"] == "delivered")

    f.pause_cloud()
    try:
        kind, _ = shadow_request(dev, "d1", "update", {"reported": {"fw": "2.0"}}, "k9")
        assert kind == "accepted"
        assert dev.pub(f"devices/d1/replies/{sent['id']}", json.dumps({"pong": 1}), qos=1).is_failure is False
        time.sleep(0.5)
        f.node.proc.kill()  # SIGKILL: no shutdown, no flush
        f.node.proc.wait(timeout=10)
    finally:
        f.resume_cloud()
    dev.c.loop_stop()  # its connection died with the node
    f.node, _ = start_node(procs, f.workdir, f.cloud_url, None, ports=f.ports, extra=COAP)
    f.wait("the report in the cloud after the kill",
           lambda: f.get("/api/devices/d1/shadow")["reported"].get("fw") == "2.0", timeout=60)
    done = f.wait("the reply in the cloud after the kill",
                  lambda: (c := f.get(f"/api/commands/{sent['id']}"))["status"] == "replied" and c,
                  timeout=60)
    assert done["reply"] == {"pong": 1}, done


def test_history_from_the_node_store_through_the_cloud(procs):
    f = Fleet(procs)
    f.add_device("d1")
    f.call("POST", "/api/rules", {
        "id": "keep", "node_id": f.node_id,
        "sql": 'SELECT topic(2) AS device, temp, state FROM "devices/+/telemetry"',
        "actions": [{"type": "store"}],
    })
    f.wait("the rule on the node", lambda: any(
        r.get("id") == "keep" for r in f.node_call("GET", "/api/rules")))
    dev = f.connect("d1")
    start = int(time.time() * 1000)
    for t in (20.5, 21.5, 23.0):
        dev.pub("devices/d1/telemetry", json.dumps({"temp": t, "state": "ok"}), qos=1)
        time.sleep(0.05)
    # the node's own store has them
    f.wait("the readings in the node's store", lambda: len(f.node_call(
        "GET", f"/api/store/query?device=d1&metric=temp&from={start - 1000}")["samples"]) == 3)

    def get_history(query):
        # the cloud waits up to 10 s for the node: a longer client timeout
        req = urllib.request.Request(f"{f.cloud_url}/api/devices/d1/history?{query}",
                                     headers={"Authorization": f"Bearer {f.admin}"})
        with urllib.request.urlopen(req, timeout=20) as r:
            return json.loads(r.read())

    def history():
        try:
            h = get_history(f"from_ms={start - 1000}")
        except urllib.error.HTTPError as e:
            # the node's link may still be coming up (503/504): ask again
            assert e.code in (503, 504), (e.code, e.read())
            return None
        return h if h["series"] else None
    h = f.wait("the history through the cloud", history, timeout=60)
    assert h["device_id"] == "d1" and h["node_id"] == f.node_id and h["truncated"] is False, h
    # text readings are left out; the numbers come in order
    assert [s["metric"] for s in h["series"]] == ["temp"], h
    points = h["series"][0]["points"]
    assert [p[1] for p in points] == [20.5, 21.5, 23.0], h
    assert all(start - 1000 <= p[0] <= int(time.time() * 1000) for p in points), h
    # bucketed: one bucket of an hour holds their mean (or two across an hour's edge)
    b = get_history(f"metric=temp&bucket=1h&from_ms={start - 1000}")
    assert b["bucket_ms"] == 3_600_000 and 1 <= len(b["series"][0]["points"]) <= 2, b
    if len(b["series"][0]["points"]) == 1:
        assert abs(b["series"][0]["points"][0][1] - 65.0 / 3) < 1e-9, b
    dev.close()
