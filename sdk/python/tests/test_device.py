"""Unit tests of the SDK's handling of what the node sends, with no node:
messages are fed to the device as paho's thread would hand them over, and
what it publishes is captured instead of sent."""

import json
import queue
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from verge_device import Device, ShadowRejected, Timeout
from verge_device import topics


class Sent:
    def __init__(self, rc=mqtt.MQTT_ERR_SUCCESS):
        self.rc = rc


@pytest.fixture
def dev():
    d = Device("mqtt://127.0.0.1:1", "d1", "s")
    d.out = queue.Queue()

    def publish(topic, payload=None, qos=0, retain=False, properties=None):
        d.out.put((topic, payload, properties))
        return Sent()

    d._client.publish = publish
    d._connected.set()  # as after connect(): sends go straight to paho
    yield d
    d._dispatch.put(None)


def feed(d, topic, payload, props=None):
    m = mqtt.MQTTMessage(topic=topic.encode())
    m.payload = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    m.properties = props
    d._on_message(None, None, m)


def next_out(d, timeout=2):
    return d.out.get(timeout=timeout)


def test_urls_and_names_are_checked():
    for bad in ["http://h", "mqtt://", "h:1883"]:
        with pytest.raises(ValueError):
            Device(bad, "d1", "s")
    for bad in ["", "a/b", "+", "#"]:
        with pytest.raises(ValueError):
            Device("mqtt://h", bad, "s")
    d = Device("mqtts://node.example", "d1", "s")
    assert (d.host, d.port) == ("node.example", 8883)
    assert Device("mqtt://h", "d1", "s").port == 1883


def test_topics_follow_the_contract():
    assert topics.telemetry("d") == "devices/d/telemetry"
    assert topics.failed_reply("d", "i") == "devices/d/replies/i/failed"
    assert topics.parse_command("d", "devices/d/commands/reboot/c7") == ("reboot", "c7")
    assert topics.parse_command("d", "devices/d/commands/reboot") is None
    assert topics.parse_command("d", "devices/e/commands/reboot/c7") is None
    assert topics.parse_shadow("d", "$shadow/d/update/delta") == "update/delta"
    assert topics.parse_shadow("d", "$shadow/d/update") is None


def test_telemetry_and_events_are_json_on_qos1(dev):
    assert dev.send_telemetry({"t": 21.5})
    assert next_out(dev)[:2] == ("devices/d1/telemetry", '{"t": 21.5}')
    dev.send_event("door", {"open": True})
    assert next_out(dev)[:2] == ("devices/d1/events/door", '{"open": true}')
    with pytest.raises(TypeError):
        dev.send_telemetry([1])
    with pytest.raises(ValueError):
        dev.send_event("a/b", 1)


class Client:
    """What `_on_connect` uses of paho's client."""

    def __init__(self):
        self._out_messages = {}

    def subscribe(self, subs):
        pass


def connect(d, client=None):
    d._on_connect(client or Client(), None, None, mqtt.ReasonCode(PacketTypes.CONNACK, "Success"),
                  None)


def drain(d):
    out = []
    while not d.out.empty():
        out.append(d.out.get_nowait())
    return out


def seqs(sent):
    return [json.loads(p)["seq"] for t, p, _ in sent if t == "devices/d1/telemetry"]


def test_offline_a_full_buffer_drops_the_oldest_and_flushes_the_newest_in_order():
    d = Device("mqtt://127.0.0.1:1", "d1", "s", offline_buffer=4)
    d.out = queue.Queue()
    d._client.publish = lambda t, p=None, qos=0, retain=False, properties=None: (
        d.out.put((t, p, properties)), Sent())[1]
    try:
        # never connected yet, then disconnected: the same
        taken = [d.send_telemetry({"seq": i}) for i in range(10)]
        assert taken == [True] * 10, "a send never fails because of the buffer"
        assert d.dropped == 6
        assert drain(d) == [], "nothing goes to paho while disconnected"
        connect(d)
        assert seqs(drain(d)) == [6, 7, 8, 9], "the newest, in order"
        # connected: straight to paho
        assert d.send_telemetry({"seq": 10})
        assert seqs(drain(d)) == [10]
        d._on_disconnect(None, None, None, None, None)
        d.send_event("door", {"open": True})
        d.send_telemetry({"seq": 11})
        connect(d)
        sent = drain(d)
        assert [t for t, _, _ in sent] == ["devices/d1/events/door", "devices/d1/telemetry"]
        assert d.dropped == 6
    finally:
        d._dispatch.put(None)


def test_buffered_messages_wait_for_the_resent_ones_and_for_room_in_paho(dev):
    # paho still holds an unacknowledged message at the reconnect: it goes
    # first (paho resends it after on_connect); the buffer follows its PUBACK
    dev._on_disconnect(None, None, None, None, None)
    dev.send_telemetry({"seq": 1})
    client = Client()
    client._out_messages = {7: object()}
    connect(dev, client)
    assert drain(dev) == []
    dev._on_publish(None, None, 7, None, None)
    assert seqs(drain(dev)) == [1]
    # paho is full while connected: the message waits for a PUBACK
    full = [True]
    publish = dev._client.publish

    def maybe_full(*a, **k):
        return Sent(mqtt.MQTT_ERR_QUEUE_SIZE) if full[0] else publish(*a, **k)

    dev._client.publish = maybe_full
    assert dev.send_telemetry({"seq": 2}) is True
    assert dev.send_telemetry({"seq": 3}) is True
    assert dev.dropped == 0 and drain(dev) == []
    full[0] = False
    dev._on_publish(None, None, 8, None, None)
    assert seqs(drain(dev)) == [2, 3]
    assert dev._unacknowledged() == 0


def test_command_reply_failure_and_duplicates(dev):
    runs = []

    @dev.command("add")
    def add(payload):
        runs.append(payload)
        return {"sum": payload["a"] + payload["b"]}

    @dev.command("boom")
    def boom(payload):
        raise RuntimeError("motor stuck")

    feed(dev, "devices/d1/commands/add/c1", {"a": 1, "b": 2})
    assert next_out(dev)[:2] == ("devices/d1/replies/c1", '{"sum": 3}')
    # delivered again: the cached reply, the handler is not run again
    feed(dev, "devices/d1/commands/add/c1", {"a": 1, "b": 2})
    assert next_out(dev)[:2] == ("devices/d1/replies/c1", '{"sum": 3}')
    assert len(runs) == 1
    feed(dev, "devices/d1/commands/boom/c2", {})
    assert next_out(dev)[:2] == ("devices/d1/replies/c2/failed", "motor stuck")
    feed(dev, "devices/d1/commands/nobody/c3", {})
    topic, body, _ = next_out(dev)
    assert topic == "devices/d1/replies/c3/failed" and "no handler" in body


def test_mqtt5_response_topic_and_correlation_data(dev):
    dev.on_command("ping", lambda p: "pong")
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = "devices/d1/replies/c9"
    props.CorrelationData = b"c9"
    feed(dev, "devices/d1/commands/ping/c9", b"", props)
    topic, body, out_props = next_out(dev)
    assert (topic, body) == ("devices/d1/replies/c9", '"pong"')
    assert out_props.CorrelationData == b"c9"


def test_bad_server_input_is_ignored(dev):
    got = []
    dev.on_delta(lambda state, version: got.append((state, version)))
    for payload in [b"not json", b"[1]", b'{"state": 3}', b"\xff\xfe"]:
        feed(dev, "$shadow/d1/update/delta", payload)
        feed(dev, "$shadow/d1/get/accepted", payload)
    feed(dev, "devices/d1/commands/x", b"{}")  # no id: not a command
    feed(dev, "$shadow/d1/update/delta", {"state": {"led": "on"}, "version": 4})
    deadline = time.time() + 2
    while not got and time.time() < deadline:
        time.sleep(0.01)
    assert got == [({"led": "on"}, 4)]
    assert dev.out.empty()


def answer_when_asked(dev, answer_topic, body_of):
    """Answer the next shadow request as a node would (in a thread)."""
    def run():
        topic, payload, _ = next_out(dev)
        req = json.loads(payload)
        feed(dev, answer_topic, body_of(req))
    t = threading.Thread(target=run)
    t.start()
    return t


def test_shadow_answers_are_matched_by_client_token(dev):
    t = answer_when_asked(dev, "$shadow/d1/update/accepted",
                          lambda req: {"reported": req["reported"], "version": 2,
                                       "client_token": req["client_token"]})
    doc = dev.update_reported({"fw": "1.2"}, version=1)
    t.join()
    assert doc["reported"] == {"fw": "1.2"} and doc["version"] == 2
    t = answer_when_asked(dev, "$shadow/d1/update/rejected",
                          lambda req: {"code": "version_conflict", "message": "stale",
                                       "version": 2, "client_token": req["client_token"]})
    with pytest.raises(ShadowRejected) as e:
        dev.update_desired({"x": 1}, version=0)
    t.join()
    assert (e.value.code, e.value.version) == ("version_conflict", 2)
    # an answer naming no token goes to the oldest request of its kind
    t = answer_when_asked(dev, "$shadow/d1/get/accepted", lambda req: {"version": 7})
    assert dev.get_shadow()["version"] == 7
    t.join()
    # another request's token is not ours
    t = answer_when_asked(dev, "$shadow/d1/get/accepted",
                          lambda req: {"version": 1, "client_token": "someone-else"})
    with pytest.raises(Timeout):
        dev.get_shadow(timeout=0.5)
    t.join()
