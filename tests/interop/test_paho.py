"""Interop of the Verge broker with the paho-mqtt Python client, MQTT 3.1.1 and
5.0: QoS, retained messages, wills, shared subscriptions, sessions, WebSocket
and the 5.0 properties and subscription options."""

import time
import uuid

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from verge_interop import V3, V5, WAIT, Client

BOTH = pytest.mark.parametrize("proto", [V3, V5], ids=["v311", "v5"])


def uniq(prefix):
    return f"{prefix}/{uuid.uuid4().hex[:12]}"


# 1. publish/subscribe at every QoS ------------------------------------------

@BOTH
@pytest.mark.parametrize("pub_qos", [0, 1, 2])
@pytest.mark.parametrize("sub_qos", [0, 1, 2])
def test_pubsub_each_qos(node, proto, pub_qos, sub_qos):
    topic = uniq("qos")
    s = Client(node, proto)
    assert s.sub(topic, sub_qos) == [sub_qos], "SUBACK grants the requested QoS"
    p = Client(node, proto)
    for i in range(20):
        p.pub(topic, f"m{i}", pub_qos)
    got = s.recv_n(20)
    assert [m.topic for m in got] == [topic] * 20
    assert [m.payload.decode() for m in got] == [f"m{i}" for i in range(20)], "in order, each once"
    assert [m.qos for m in got] == [min(pub_qos, sub_qos)] * 20, "QoS = min(publish, subscription)"
    assert not any(m.retain for m in got)
    s.nothing(0.7)  # exactly once: no duplicate after the 20
    s.close()
    p.close()


# 2. retained messages ---------------------------------------------------------

@BOTH
def test_retained_set_replace_delete(node, proto):
    topic = uniq("ret")
    p = Client(node, proto)
    p.pub(topic, "one", 1, retain=True)

    a = Client(node, proto)
    a.sub(topic, 1)
    m = a.recv()
    assert (m.topic, m.payload, m.retain) == (topic, b"one", True), "stored message, retain flag set"
    a.nothing()

    p.pub(topic, "two", 1, retain=True)  # replace
    m = a.recv()
    assert (m.payload, m.retain) == (b"two", False), "live delivery to an existing subscriber has retain 0"

    b = Client(node, proto)
    b.sub(topic, 1)
    m = b.recv()
    assert (m.payload, m.retain) == (b"two", True), "the replacement is what is retained"
    b.nothing()

    p.pub(topic, "", 1, retain=True)  # delete
    assert a.recv().payload == b"", "the empty retained publish is forwarded like any other"

    c = Client(node, proto)
    c.sub(topic, 1)
    c.nothing(1.0)  # no retained message any more
    for x in (p, a, b, c):
        x.close()


# 3. wills -----------------------------------------------------------------

@BOTH
def test_will_published_when_connection_drops(node, proto):
    topic = uniq("will")
    s = Client(node, proto)
    s.sub(topic, 1)
    dying = Client(node, proto, will=(topic, "gone", 1, False))
    dying.drop()
    m = s.recv()
    assert (m.topic, m.payload, m.qos) == (topic, b"gone", 1)
    s.nothing()
    s.close()


@BOTH
def test_no_will_after_clean_disconnect(node, proto):
    topic = uniq("will")
    s = Client(node, proto)
    s.sub(topic, 1)
    polite = Client(node, proto, will=(topic, "should not appear", 1, False))
    polite.close()
    s.nothing(1.5)
    s.close()


def _delayed_will(delay):
    props = Properties(PacketTypes.WILLMESSAGE)
    props.WillDelayInterval = delay
    return props


def test_v5_will_delay_cancelled_by_reconnect(node):
    topic = uniq("willdelay")
    s = Client(node, V5)
    s.sub(topic, 1)
    cid = "delayed-" + uuid.uuid4().hex[:8]
    c = Client(node, V5, cid=cid, clean=False, expiry=60,
               will=(topic, "late", 1, False, _delayed_will(2)))
    c.drop()
    back = Client(node, V5, cid=cid, clean=False, expiry=60)
    assert back.rc.value == 0
    assert back.session_present, "the session was kept (expiry 60 s)"
    s.nothing(3.5)  # the 2 s delay passed: the reconnect cancelled the will
    back.close()
    s.nothing(1.0)  # and a normal DISCONNECT sends none either
    s.close()


def test_v5_will_delay_elapses_without_reconnect(node):
    topic = uniq("willdelay")
    s = Client(node, V5)
    s.sub(topic, 1)
    c = Client(node, V5, clean=False, expiry=60, will=(topic, "late", 1, False, _delayed_will(2)))
    dropped = time.time()
    c.drop()
    s.nothing(1.2)  # not before the delay
    m = s.recv(WAIT)
    elapsed = time.time() - dropped
    assert m.payload == b"late"
    assert 1.5 <= elapsed <= 4.5, f"will arrived {elapsed:.1f} s after the drop, delay was 2 s"
    s.close()


def test_v5_will_sent_when_session_ends_before_delay(node):
    # MQTT 5.0 3.1.3.2.2: the will waits for the delay or the end of the
    # session, whichever comes first.
    topic = uniq("willdelay")
    s = Client(node, V5)
    s.sub(topic, 1)
    c = Client(node, V5, clean=False, expiry=1, will=(topic, "session over", 1, False, _delayed_will(60)))
    c.drop()
    m = s.recv(4.0)
    assert m.payload == b"session over", "session expiry (1 s) ends the session before the 60 s will delay"
    s.close()


# 4. shared subscriptions ---------------------------------------------------

@BOTH
def test_shared_subscription_splits_messages(node, proto):
    base = uniq("jobs")
    a, b, everything = Client(node, proto), Client(node, proto), Client(node, proto)
    assert a.sub(f"$share/g/{base}/#", 1) == [1]
    assert b.sub(f"$share/g/{base}/#", 1) == [1]
    assert everything.sub(f"{base}/#", 1) == [1]
    p = Client(node, proto)
    for i in range(20):
        p.pub(f"{base}/{i}", str(i), 1)
    assert sorted(int(m.payload) for m in everything.recv_n(20)) == list(range(20))
    got_a = [int(m.payload) for m in a.drain(2.0)]
    got_b = [int(m.payload) for m in b.drain(0.5)]
    assert sorted(got_a + got_b) == list(range(20)), \
        f"each message to exactly one group member: a got {got_a}, b got {got_b}"
    assert got_a and got_b, f"both members get a share: a got {got_a}, b got {got_b}"
    everything.nothing()
    for c in (a, b, everything, p):
        c.close()


# 5. persistent sessions ----------------------------------------------------

def _persistent(node, proto, cid):
    return Client(node, proto, cid=cid, clean=False, expiry=300 if proto == V5 else None)


def _fresh(node, proto, cid):
    return Client(node, proto, cid=cid, clean=True, expiry=0 if proto == V5 else None)


@BOTH
def test_session_resume_delivers_queued_messages(node, proto):
    topic = uniq("resume")
    cid = "persist-" + uuid.uuid4().hex[:8]
    s = _persistent(node, proto, cid)
    assert s.session_present is False, "a new session"
    assert s.sub(topic, 1) == [1]
    s.close()
    p = Client(node, proto)
    for i in range(5):
        p.pub(topic, f"q{i}", 1)
    s = _persistent(node, proto, cid)
    assert s.session_present is True
    got = s.recv_n(5)
    assert [m.payload for m in got] == [f"q{i}".encode() for i in range(5)]
    assert [m.qos for m in got] == [1] * 5
    s.nothing()
    p.pub(topic, "live", 1)  # the subscription itself survived too
    assert s.recv().payload == b"live"
    s.close()
    p.close()


@BOTH
def test_clean_session_discards_queue(node, proto):
    topic = uniq("discard")
    cid = "persist-" + uuid.uuid4().hex[:8]
    s = _persistent(node, proto, cid)
    s.sub(topic, 1)
    s.close()
    p = Client(node, proto)
    for i in range(3):
        p.pub(topic, f"lost{i}", 1)
    s = _fresh(node, proto, cid)
    assert s.session_present is False, "clean session / clean start: session present = 0"
    s.nothing(1.0)  # nothing queued
    p.pub(topic, "after", 1)
    s.nothing(1.0)  # and the old subscription is gone
    s.close()
    p.close()


# 6. WebSocket --------------------------------------------------------------

@BOTH
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_websocket_transport(node, proto, qos):
    topic = uniq("ws")
    s = Client(node, proto, transport="websockets")
    assert s.sub(topic, qos) == [qos]
    tcp_sub = Client(node, proto)
    tcp_sub.sub(topic, qos)
    p = Client(node, proto, transport="websockets")
    p.pub(topic, "over websocket", qos)
    for c in (s, tcp_sub):
        m = c.recv()
        assert (m.topic, m.payload, m.qos) == (topic, b"over websocket", qos)
    tcp_pub = Client(node, proto)
    tcp_pub.pub(topic, "from tcp", qos)
    m = s.recv()
    assert (m.payload, m.qos) == (b"from tcp", qos)
    s.nothing()
    for c in (s, tcp_sub, p, tcp_pub):
        c.close()


# 8. MQTT 5.0 extras --------------------------------------------------------

def test_v5_properties_pass_through(node):
    topic = uniq("props")
    s = Client(node, V5)
    s.sub(topic, 1)
    p = Client(node, V5)
    pp = Properties(PacketTypes.PUBLISH)
    pp.UserProperty = [("k", "v"), ("k", "w"), ("site", "plant-7")]
    pp.ContentType = "application/json"
    pp.ResponseTopic = "reply/here"
    pp.CorrelationData = b"\x01\x02\xff"
    pp.PayloadFormatIndicator = 1
    p.pub(topic, '{"a":1}', 1, props=pp)
    m = s.recv()
    assert m.payload == b'{"a":1}'
    props = m.properties
    assert props.UserProperty == [("k", "v"), ("k", "w"), ("site", "plant-7")], "order and repeats kept"
    assert props.ContentType == "application/json"
    assert props.ResponseTopic == "reply/here"
    assert props.CorrelationData == b"\x01\x02\xff"
    assert props.PayloadFormatIndicator == 1
    s.close()
    p.close()


def test_v5_subscription_identifier(node):
    base = uniq("subid")
    s = Client(node, V5)
    sp = Properties(PacketTypes.SUBSCRIBE)
    sp.SubscriptionIdentifier = 42
    assert s.sub(f"{base}/#", 1, props=sp) == [1]
    p = Client(node, V5)
    p.pub(f"{base}/a", "x", 1)
    m = s.recv()
    assert m.topic == f"{base}/a"
    assert m.properties.SubscriptionIdentifier == [42]
    s.close()
    p.close()


def test_v5_no_local(node):
    topic = uniq("nolocal")
    c = Client(node, V5)
    assert c.sub(topic, options=SubscribeOptions(qos=1, noLocal=True)) == [1]
    c.pub(topic, "mine", 1)
    c.nothing(1.0)
    other = Client(node, V5)
    other.pub(topic, "theirs", 1)
    assert c.recv().payload == b"theirs"
    c.close()
    other.close()


def test_v5_message_expiry_for_offline_session(node):
    topic = uniq("expiry")
    cid = "exp-" + uuid.uuid4().hex[:8]
    s = Client(node, V5, cid=cid, clean=False, expiry=300)
    s.sub(topic, 1)
    s.close()
    p = Client(node, V5)
    short = Properties(PacketTypes.PUBLISH)
    short.MessageExpiryInterval = 1
    p.pub(topic, "short-lived", 1, props=short)
    long_ = Properties(PacketTypes.PUBLISH)
    long_.MessageExpiryInterval = 60
    p.pub(topic, "long-lived", 1, props=long_)
    p.pub(topic, "no expiry", 1)
    time.sleep(2.2)
    s = Client(node, V5, cid=cid, clean=False, expiry=300)
    assert s.session_present
    first, second = s.recv_n(2)
    assert [first.payload, second.payload] == [b"long-lived", b"no expiry"], \
        "the message with expiry 1 s is dropped after 2 s offline"
    remaining = first.properties.MessageExpiryInterval
    assert 50 <= remaining < 60, f"expiry is lowered by the time spent queued (got {remaining})"
    assert not hasattr(second.properties, "MessageExpiryInterval")
    s.nothing()
    s.close()
    p.close()
