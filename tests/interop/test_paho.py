"""Interop of the Verge broker with the paho-mqtt Python client (3.1.1 and 5.0)."""

import os
import queue
import socket
import subprocess
import threading
import time
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from conftest import Node

V3, V5 = mqtt.MQTTv311, mqtt.MQTTv5
WAIT = 5


class Client:
    """A paho client with its network loop running and queues to wait on."""

    def __init__(self, node, proto, cid=None, transport="tcp", clean=True, expiry=None,
                 will=None, user=None, connect=True):
        self.cid = cid or "c-" + uuid.uuid4().hex[:8]
        kw = {"clean_session": clean} if proto == V3 else {}
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.cid, protocol=proto,
                             transport=transport, reconnect_on_failure=False, **kw)
        self.proto, self.node, self.transport = proto, node, transport
        self.clean, self.expiry = clean, expiry
        self.msgs = queue.Queue()
        self.acks = queue.Queue()
        self.connacks = queue.Queue()
        self.c.on_connect = lambda c, u, flags, rc, props: self.connacks.put((flags.session_present, rc))
        self.c.on_message = lambda c, u, m: self.msgs.put(m)
        self.c.on_subscribe = lambda c, u, mid, rcs, props: self.acks.put([r.value for r in rcs])
        if transport == "websockets":
            self.c.ws_set_options(path="/mqtt")
        if will:
            self.c.will_set(*will)
        if user:
            self.c.username_pw_set(*user)
        if connect:
            self.connect()

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
        self.session_present, self.rc = self.connacks.get(timeout=WAIT)
        return self

    def sub(self, topic, qos=0, options=None, props=None):
        if options is not None:
            self.c.subscribe(topic, options=options, properties=props)
        else:
            self.c.subscribe(topic, qos, properties=props)
        return self.acks.get(timeout=WAIT)

    def pub(self, topic, payload, qos=0, retain=False, props=None):
        info = self.c.publish(topic, payload, qos, retain, props)
        info.wait_for_publish(WAIT)
        assert info.is_published()

    def recv(self, timeout=WAIT):
        return self.msgs.get(timeout=timeout)

    def nothing(self, timeout=0.5):
        with pytest.raises(queue.Empty):
            m = self.msgs.get(timeout=timeout)
            print("unexpected", m.topic, m.payload)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()

    def drop(self):
        """End the connection without DISCONNECT."""
        self.c.loop_stop()
        self.c.socket().shutdown(socket.SHUT_RDWR)
        self.c.socket().close()


BOTH = pytest.mark.parametrize("proto", [V3, V5], ids=["v311", "v5"])


@BOTH
@pytest.mark.parametrize("pub_qos", [0, 1, 2])
@pytest.mark.parametrize("sub_qos", [0, 1, 2])
def test_pubsub_each_qos(node, proto, pub_qos, sub_qos):
    topic = f"qos/{uuid.uuid4().hex}"
    s = Client(node, proto)
    assert s.sub(topic, sub_qos) == [sub_qos]
    p = Client(node, proto)
    for i in range(20):
        p.pub(topic, f"m{i}", pub_qos)
    got = [s.recv() for _ in range(20)]
    assert [m.payload.decode() for m in got] == [f"m{i}" for i in range(20)]
    assert {m.qos for m in got} == {min(pub_qos, sub_qos)}
    s.nothing()  # exactly once: no duplicates
    s.close()
    p.close()


@BOTH
def test_retained_set_replace_delete(node, proto):
    topic = f"ret/{uuid.uuid4().hex}"
    p = Client(node, proto)
    p.pub(topic, "one", 1, retain=True)
    p.pub(topic, "two", 1, retain=True)
    s = Client(node, proto)
    s.sub(topic, 1)
    m = s.recv()
    assert (m.payload, m.retain) == (b"two", True)
    s.nothing()
    p.pub(topic, "", 1, retain=True)  # delete
    m = s.recv()  # the empty publication itself is delivered live
    assert m.payload == b""
    s2 = Client(node, proto)
    s2.sub(topic, 1)
    s2.nothing()
    for c in (p, s, s2):
        c.close()


@BOTH
def test_will_on_abnormal_close_only(node, proto):
    topic = f"will/{uuid.uuid4().hex}"
    s = Client(node, proto)
    s.sub(topic, 1)
    dying = Client(node, proto, will=(topic, "gone", 1, False))
    dying.drop()
    assert s.recv().payload == b"gone"
    polite = Client(node, proto, will=(topic, "polite", 1, False))
    polite.close()
    s.nothing(1.0)
    s.close()


def test_v5_will_delay_cancelled_by_reconnect(node):
    topic = f"willdelay/{uuid.uuid4().hex}"
    s = Client(node, V5)
    s.sub(topic, 1)
    props = Properties(PacketTypes.WILLMESSAGE)
    props.WillDelayInterval = 2
    cid = "delayed-" + uuid.uuid4().hex[:6]
    c = Client(node, V5, cid=cid, clean=False, expiry=60, will=(topic, "late", 1, False, props))
    c.drop()
    back = Client(node, V5, cid=cid, clean=False, expiry=60)
    assert back.session_present
    s.nothing(3.0)  # the delay passed without the will
    back.close()
    s.close()


@BOTH
def test_shared_subscription_splits_messages(node, proto):
    base = f"jobs/{uuid.uuid4().hex}"
    a, b, all_ = Client(node, proto), Client(node, proto), Client(node, proto)
    a.sub(f"$share/g/{base}/#", 1)
    b.sub(f"$share/g/{base}/#", 1)
    all_.sub(f"{base}/#", 1)
    p = Client(node, proto)
    for i in range(20):
        p.pub(f"{base}/{i}", str(i), 1)
    everyone = sorted(int(all_.recv().payload) for _ in range(20))
    assert everyone == list(range(20))
    got = []
    deadline = time.time() + WAIT
    while len(got) < 20 and time.time() < deadline:
        for c in (a, b):
            try:
                got.append((c, int(c.msgs.get(timeout=0.05).payload)))
            except queue.Empty:
                pass
    values = sorted(v for _, v in got)
    assert values == list(range(20)), "each message to exactly one member"
    assert {id(c) for c, _ in got} == {id(a), id(b)}, "both members get a share"
    for c in (a, b, all_, p):
        c.close()


@BOTH
def test_session_resume_delivers_queued_messages(node, proto):
    topic = f"resume/{uuid.uuid4().hex}"
    cid = "persist-" + uuid.uuid4().hex[:6]
    s = Client(node, proto, cid=cid, clean=False, expiry=300)
    assert not s.session_present
    s.sub(topic, 1)
    s.close()
    p = Client(node, proto)
    for i in range(5):
        p.pub(topic, f"q{i}", 1)
    s = Client(node, proto, cid=cid, clean=False, expiry=300)
    assert s.session_present
    assert [s.recv().payload for _ in range(5)] == [f"q{i}".encode() for i in range(5)]
    s.close()
    # a clean start discards the session
    s = Client(node, proto, cid=cid, clean=True, expiry=0 if proto == V5 else None)
    assert not s.session_present
    p.pub(topic, "after", 1)
    s.nothing()
    s.close()
    p.close()


@BOTH
def test_websocket_transport(node, proto):
    topic = f"ws/{uuid.uuid4().hex}"
    s = Client(node, proto, transport="websockets")
    s.sub(topic, 1)
    p = Client(node, proto, transport="websockets")
    p.pub(topic, "over websocket", 1)
    assert s.recv().payload == b"over websocket"
    s.close()
    p.close()


def test_v5_properties_pass_through(node):
    topic = f"props/{uuid.uuid4().hex}"
    s = Client(node, V5)
    sp = Properties(PacketTypes.SUBSCRIBE)
    sp.SubscriptionIdentifier = 42
    s.sub(topic, 1, props=sp)
    p = Client(node, V5)
    pp = Properties(PacketTypes.PUBLISH)
    pp.UserProperty = [("k", "v"), ("k", "w")]
    pp.ContentType = "application/json"
    pp.ResponseTopic = "reply/here"
    pp.CorrelationData = b"\x01\x02"
    pp.PayloadFormatIndicator = 1
    p.pub(topic, '{"a":1}', 1, props=pp)
    m = s.recv()
    props = m.properties
    assert props.UserProperty == [("k", "v"), ("k", "w")]
    assert props.ContentType == "application/json"
    assert props.ResponseTopic == "reply/here"
    assert props.CorrelationData == b"\x01\x02"
    assert props.SubscriptionIdentifier == [42]
    s.close()
    p.close()


def test_v5_no_local(node):
    topic = f"nolocal/{uuid.uuid4().hex}"
    c = Client(node, V5)
    c.sub(topic, options=SubscribeOptions(qos=1, noLocal=True))
    c.pub(topic, "mine", 1)
    c.nothing()
    other = Client(node, V5)
    other.pub(topic, "theirs", 1)
    assert c.recv().payload == b"theirs"
    c.close()
    other.close()


def test_v5_message_expiry_for_offline_session(node):
    topic = f"expiry/{uuid.uuid4().hex}"
    cid = "exp-" + uuid.uuid4().hex[:6]
    s = Client(node, V5, cid=cid, clean=False, expiry=300)
    s.sub(topic, 1)
    s.close()
    p = Client(node, V5)
    short = Properties(PacketTypes.PUBLISH)
    short.MessageExpiryInterval = 1
    p.pub(topic, "short-lived", 1, props=short)
    p.pub(topic, "lasting", 1)
    time.sleep(2.2)
    s = Client(node, V5, cid=cid, clean=False, expiry=300)
    assert s.recv().payload == b"lasting"
    s.nothing()
    s.close()
    p.close()


def test_sys_topics_published_but_not_matched_by_hash(node):
    c = Client(node, V5)
    c.sub("#", 0)
    c.nothing(1.5)  # $SYS is published every second but '#' must not match it
    s = Client(node, V5)
    s.sub("$SYS/broker/#", 0)
    seen = {}
    deadline = time.time() + WAIT
    # the first values are the retained ones, from before `s` connected
    while time.time() < deadline and int(seen.get("$SYS/broker/clients/connected", 0)) < 2:
        m = s.recv()
        seen[m.topic] = m.payload
    assert int(seen["$SYS/broker/clients/connected"]) >= 2
    assert int(seen["$SYS/broker/uptime"]) >= 0
    c.close()
    s.close()


@pytest.fixture(scope="module")
def locked(tmp_path_factory):
    bin_ = os.environ.get("VERGE_BIN", "target/debug/verge")
    hashed = subprocess.run([bin_, "device", "hash-password", "--password", "s3cret"],
                            check=True, capture_output=True, text=True).stdout.strip()
    reg = tmp_path_factory.mktemp("reg") / "devices.toml"
    reg.write_text(f"""
[[devices]]
username = "sensor"
password_hash = "{hashed}"
[[devices.acl]]
permission = "allow"
action = "all"
topic = "devices/%u/#"
[[devices.acl]]
permission = "deny"
action = "all"
topic = "#"
""")
    n = Node(extra=f'devices_file = "{reg}"', anonymous=False)
    yield n
    n.stop()


@BOTH
def test_password_auth(locked, proto):
    ok = Client(locked, proto, user=("sensor", "s3cret"))
    assert ok.rc == 0
    ok.close()
    # 3.1.1 return code 4 and 5.0 reason 0x86 both read as 134 in paho
    bad = Client(locked, proto, user=("sensor", "wrong"))
    assert bad.rc.value == 0x86, bad.rc
    bad.c.loop_stop()
    anon = Client(locked, proto)
    assert anon.rc.value == 0x86, anon.rc
    anon.c.loop_stop()


@BOTH
def test_acl(locked, proto):
    c = Client(locked, proto, user=("sensor", "s3cret"))
    assert c.sub("devices/sensor/commands/#", 1) == [1]
    denied = c.sub("other/#", 1)
    assert denied == [0x80 if proto == V3 else 0x87]
    watcher = Client(locked, proto, user=("sensor", "s3cret"))
    watcher.sub("devices/sensor/#", 1)
    c.pub("elsewhere/x", "nope", 0)
    c.pub("devices/sensor/telemetry", "yes", 1)
    assert watcher.recv().payload == b"yes"
    watcher.nothing()
    c.close()
    watcher.close()
