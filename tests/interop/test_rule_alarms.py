"""The rule action `alarm` on a real node, from paho-mqtt: telemetry raises
and clears an alarm (`clear_when`), each event is published inside the node
on `$verge/alarms/{d}`, where another rule reads it, while MQTT clients are
kept off `$verge/#`. (That a cloud-managed node queues the events for the
cloud is in test_sdk_python.py, with the cloud's alarms.)"""

import json

import pytest

from verge_interop import V5, Client, Node

RULES = """
[[rules]]
id = "hot"
sql = '''SELECT temperature FROM "devices/+/telemetry"'''
[[rules.actions]]
type = "alarm"
alarm_type = "overheat"
severity = "minor"
message = "temperature {temperature}"
clear_when = "temperature < 50"

[[rules]]
id = "relay"
sql = '''SELECT device, type, action, severity, message, rule, details FROM "$verge/alarms/+"'''
[[rules.actions]]
type = "republish"
topic = "alarms-out/{device}"
qos = 1
"""


@pytest.fixture(scope="module")
def node():
    n = Node(tail=RULES)
    yield n
    n.stop()


def test_telemetry_raises_and_clears_the_alarm_inside_the_node(node):
    spy = Client(node, V5)
    assert spy.sub("alarms-out/#", 1) == [1]
    spy.pub("devices/d1/telemetry", json.dumps({"temperature": 80}), 1)
    spy.pub("devices/d1/telemetry", json.dumps({"temperature": 20}), 1)
    got = [(m.topic, json.loads(m.payload)) for m in spy.recv_n(2)]
    assert got == [
        ("alarms-out/d1", {"device": "d1", "type": "overheat", "action": "raise",
                           "severity": "minor", "message": "temperature 80", "rule": "hot",
                           "details": {"temperature": 80}}),
        ("alarms-out/d1", {"device": "d1", "type": "overheat", "action": "clear",
                           "severity": "minor", "message": "temperature 20", "rule": "hot",
                           "details": {"temperature": 20}}),
    ]
    spy.close()


def test_mqtt_clients_cannot_subscribe_to_the_alarm_channel(node):
    c = Client(node, V5)
    assert c.sub("$verge/alarms/+", 1) == [0x87]
    c.close()
