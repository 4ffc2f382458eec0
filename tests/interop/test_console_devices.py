"""Devices in the console, in a real browser (Debian's Chromium driven by
Playwright) against real processes: `verge cloud`, a node joined with
`verge node --cloud --join`, and a device program on paho-mqtt.

- Creating a device shows what a device program needs (its node's broker
  addresses, the client-id rule, topics, SDK snippets); the devices list
  links to the device page, which shows the last telemetry as a table and
  one chart per numeric field with its min and max, and on demand charts
  of the node's local store (a rule's `store` action) through /history.
- With the cloud's device API (sessions, endpoints, shadow, commands,
  alarms): connected since when, the node's addresses, shadow edit with a
  stale version refused, a command answered by the device with its reply,
  an alarm raised by a rule, acknowledged and cleared on the Alarms page.

Skipped when Playwright or Chromium is missing, unless
VERGE_REQUIRE_BROWSER=1 (then it fails), as test_console.py.
"""

import json
import tempfile
import threading
import urllib.error
import urllib.request

import paho.mqtt.client as mqtt
import pytest

from cloud_procs import api, procs, start_cloud, start_node, wait_for  # noqa: F401 (procs: fixture)
from test_console import ARTIFACTS, SLOW, console_page, need_browser, send

try:
    from playwright.sync_api import expect
except ImportError:
    expect = None


class DeviceProgram:
    """A device on paho-mqtt: connects as `device` with `secret`, publishes
    telemetry, answers every command on devices/{d}/commands/{name}/{id}
    with {"ok": true, "name": name} on devices/{d}/replies/{id}."""

    def __init__(self, port, device, secret):
        self.device = device
        self.connected = threading.Event()
        self.commands = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device, protocol=mqtt.MQTTv311)
        self.client.username_pw_set(device, secret)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_connect(self, client, _userdata, _flags, reason, _props):
        if not reason.is_failure:
            client.subscribe(f"devices/{self.device}/commands/#", qos=1)
            self.connected.set()

    def _on_message(self, client, _userdata, msg):
        parts = msg.topic.split("/")
        if len(parts) == 5 and parts[2] == "commands":
            name, cid = parts[3], parts[4]
            self.commands.append((name, cid, msg.payload))
            client.publish(f"devices/{self.device}/replies/{cid}", json.dumps({"ok": True, "name": name}), qos=1)

    def telemetry(self, values):
        self.client.publish(f"devices/{self.device}/telemetry", json.dumps(values), qos=1).wait_for_publish(5)

    def stop(self):
        self.client.loop_stop()
        self.client.disconnect()


def joined_node_with_device(procs, workdir, page, url, admin):
    """A node joined to the cloud; a device created on it in the console
    (its onboarding box checked); the device program connected once the
    node has the device."""
    created = send(url, admin, "POST", "/api/nodes", {"name": "edge-dev"})
    node, ports = start_node(procs, workdir, url, created["join_token"])
    wait_for("the node did not come online",
             lambda: api(url, admin, "/api/nodes/edge-dev")["status"] == "online", node, timeout=30)

    page.get_by_test_id("nav-devices").click()
    page.locator('#device-node option[value="edge-dev"]').wait_for(state="attached")
    page.get_by_test_id("device-node").select_option("edge-dev")
    page.get_by_test_id("device-name").fill("pump-1")
    page.get_by_test_id("device-create").click()
    secret = page.get_by_test_id("device-secret").text_content()
    box = page.get_by_test_id("device-onboarding")
    expect(box).to_be_visible()
    expect(box.get_by_test_id("device-client-id-rule")).to_contain_text("pump-1")
    expect(box.get_by_test_id("device-topics")).to_contain_text("devices/pump-1/telemetry")
    expect(box.get_by_test_id("device-topics")).to_contain_text("$shadow/pump-1/update")
    for snippet in ("snippet-python", "snippet-rust"):
        expect(box.get_by_test_id(snippet)).to_contain_text('"pump-1"')
        expect(box.get_by_test_id(snippet)).to_contain_text(secret)
    expect(box.get_by_test_id("snippet-python")).to_contain_text("from verge_device import Device")
    expect(box.get_by_test_id("snippet-rust")).to_contain_text("verge_device::DeviceConfig::new(")

    def deployed():
        deps = api(url, admin, "/api/deployments")
        return any(d["node_id"] == "edge-dev" and d["state"] == "in_sync" for d in deps)
    wait_for("the node did not apply the state with the device", deployed, node, timeout=30)
    device = DeviceProgram(ports["tcp"], "pump-1", secret)
    assert device.connected.wait(10), "the device program could not connect"
    return node, ports, device, box


def test_device_onboarding_box_and_telemetry_page(procs):
    need_browser()
    workdir = tempfile.mkdtemp(prefix="verge-console-dev-")
    url, admin = start_cloud(procs, workdir)
    with console_page(url, admin) as page:
        node, _ports, device, _box = joined_node_with_device(procs, workdir, page, url, admin)
        try:
            for temperature, pressure in ((20.5, 3), (24.0, 1), (22.0, 2)):
                device.telemetry({"temperature": temperature, "pressure": pressure, "state": "running"})
            wait_for("the cloud stored no telemetry", lambda: len([
                m for m in api(url, admin, "/api/devices/pump-1/messages") if m["topic"].endswith("/telemetry")]) >= 3,
                node, timeout=30)

            # The list links to the device's page.
            page.locator('[data-testid="device-row"][data-id="pump-1"]').get_by_test_id("device-link").click()
            expect(page.get_by_test_id("device-title")).to_have_text("pump-1")
            table = page.get_by_test_id("telemetry-table")
            expect(table.locator('[data-field="temperature"]')).to_contain_text("22", timeout=SLOW)
            expect(table.locator('[data-field="state"]')).to_contain_text("running")
            # One chart per numeric field (not for `state`), with min and max.
            temp = page.locator('[data-testid="telemetry-chart"][data-field="temperature"]')
            expect(temp).to_contain_text("3 points", timeout=SLOW)
            expect(temp.get_by_test_id("chart-min")).to_have_text("20.5")
            expect(temp.get_by_test_id("chart-max")).to_have_text("24")
            pressure = page.locator('[data-testid="telemetry-chart"][data-field="pressure"]')
            expect(pressure.get_by_test_id("chart-min")).to_have_text("1")
            expect(pressure.get_by_test_id("chart-max")).to_have_text("3")
            expect(page.locator('[data-testid="telemetry-chart"][data-field="state"]')).to_have_count(0)
            # A new reading extends the chart.
            device.telemetry({"temperature": 30.25, "pressure": 2})
            expect(temp).to_contain_text("4 points", timeout=SLOW)
            expect(temp.get_by_test_id("chart-max")).to_have_text("30.3")
            # The node's store through /history: a rule keeps readings there.
            send(url, admin, "POST", "/api/rules", {
                "id": "keep", "node_id": "edge-dev",
                "sql": 'SELECT topic(2) AS device, temperature FROM "devices/+/telemetry"',
                "actions": [{"type": "store"}]})

            def stored():
                device.telemetry({"temperature": 26.5, "pressure": 2})
                req = urllib.request.Request(f"{url}/api/devices/pump-1/history",
                                             headers={"Authorization": f"Bearer {admin}"})
                try:
                    with urllib.request.urlopen(req, timeout=20) as r:
                        return json.loads(r.read())["series"]
                except urllib.error.HTTPError as e:
                    assert e.code in (503, 504), e.read()
                    return None
            wait_for("the node's store has no readings", stored, node, timeout=60)
            page.locator('[data-testid="history-range"][data-range="1 h"]').click()
            history = page.locator('[data-testid="history-chart"][data-field="temperature"]')
            expect(history).to_be_visible(timeout=SLOW)
            expect(history.get_by_test_id("chart-max")).to_have_text("26.5")
            expect(page.get_by_test_id("history-status")).to_contain_text("last 1 h")
            expect(page.get_by_test_id("history-error")).to_be_hidden()
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "console-device.png"), full_page=True)
            page.get_by_test_id("nav-devices").click()
            page.get_by_test_id("device-name").fill("pump-2")
            page.get_by_test_id("device-create").click()
            expect(page.get_by_test_id("device-onboarding")).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "console-device-created.png"), full_page=True)
        finally:
            device.stop()


def test_device_page_session_shadow_commands_and_alarms(procs):
    need_browser()
    workdir = tempfile.mkdtemp(prefix="verge-console-dev2-")
    url, admin = start_cloud(procs, workdir)
    with console_page(url, admin) as page:
        node, ports, device, box = joined_node_with_device(procs, workdir, page, url, admin)
        try:
            # The onboarding box names the node's broker address once reported.
            expect(box.get_by_test_id("device-addresses")).to_contain_text(f"mqtt://127.0.0.1:{ports['tcp']}")
            expect(box.get_by_test_id("address-note")).to_contain_text("Loopback")
            page.goto(url + "/#/devices/pump-1")
            expect(page.get_by_test_id("device-connection").get_by_test_id("status")).to_have_text("connected", timeout=SLOW)
            expect(page.get_by_test_id("device-connection")).to_contain_text("since")
            expect(page.get_by_test_id("device-endpoints")).to_contain_text(f"mqtt://127.0.0.1:{ports['tcp']}")

            # Shadow: desired edited in the page reaches the version shown.
            expect(page.get_by_test_id("shadow-result")).to_contain_text("editing version", timeout=SLOW)
            page.get_by_test_id("shadow-desired").fill('{"speed": 3}')
            page.get_by_test_id("shadow-save").click()
            expect(page.get_by_test_id("shadow-result")).to_contain_text("saved: version")
            expect(page.get_by_test_id("shadow-view-desired")).to_contain_text('"speed": 3')
            expect(page.get_by_test_id("shadow-view-delta")).to_contain_text("speed")
            shadow = api(url, admin, "/api/devices/pump-1/shadow")
            assert shadow["desired"] == {"speed": 3}, shadow
            expect(page.get_by_test_id("shadow-version")).to_have_text(str(shadow["version"]))
            # Someone else changes it meanwhile: the page's stale edit is refused.
            send(url, admin, "PATCH", "/api/devices/pump-1/shadow", {"desired": {"speed": 5}, "version": shadow["version"]})
            page.get_by_test_id("shadow-desired").fill('{"speed": 4}')
            page.get_by_test_id("shadow-save").click()
            expect(page.get_by_test_id("shadow-error")).to_contain_text("changed meanwhile")
            assert api(url, admin, "/api/devices/pump-1/shadow")["desired"] == {"speed": 5}
            page.get_by_test_id("shadow-reload").click()
            expect(page.get_by_test_id("shadow-desired")).to_have_value('{\n  "speed": 5\n}')
            page.get_by_test_id("shadow-desired").fill('{"speed": 4}')
            page.get_by_test_id("shadow-save").click()
            expect(page.get_by_test_id("shadow-error")).to_be_hidden()
            expect(page.get_by_test_id("shadow-view-desired")).to_contain_text('"speed": 4')
            assert api(url, admin, "/api/devices/pump-1/shadow")["desired"] == {"speed": 4}

            # A command: sent from the form, answered by the device, reply shown.
            page.get_by_test_id("command-name").fill("flush")
            page.get_by_test_id("command-payload").fill('{"seconds": 2}')
            page.get_by_test_id("command-ttl").fill("5m")
            page.get_by_test_id("command-send").click()
            row = page.locator('[data-testid="command-row"]').first
            expect(row).to_contain_text("flush")
            expect(row.get_by_test_id("command-status")).to_have_text("replied", timeout=SLOW)
            expect(row.get_by_test_id("command-reply")).to_contain_text('"ok": true')
            assert [c[0] for c in device.commands] == ["flush"], device.commands
            # A bad TTL is refused inline.
            page.get_by_test_id("command-ttl").fill("30d")
            page.get_by_test_id("command-send").click()
            expect(page.get_by_test_id("command-error")).to_be_visible()

            # An alarm raised by a rule of the node, shown on the device page
            # and the Alarms page; acknowledged, then cleared.
            send(url, admin, "POST", "/api/rules", {
                "id": "hot", "node_id": "edge-dev",
                "sql": 'SELECT topic(2) AS device, temperature FROM "devices/+/telemetry" WHERE temperature > 50',
                "actions": [{"type": "alarm", "alarm_type": "overheat", "severity": "major",
                             "message": "temperature {temperature}"}]})
            wait_for("the node did not apply the rule", lambda: any(
                d["node_id"] == "edge-dev" and d["state"] == "in_sync" for d in api(url, admin, "/api/deployments")),
                node, timeout=30)
            device.telemetry({"temperature": 70})
            alarm = page.locator('[data-testid="alarm-row"][data-status="active"]').first
            expect(alarm).to_contain_text("overheat", timeout=SLOW)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "console-device-full.png"), full_page=True)
            page.get_by_test_id("nav-alarms").click()
            row = page.locator('[data-testid="alarm-row"]').first
            expect(row.get_by_test_id("alarm-device")).to_have_text("pump-1", timeout=SLOW)
            expect(row.get_by_test_id("alarm-ack")).to_have_text("unacknowledged")
            row.get_by_test_id("alarm-ack-button").click()
            expect(row.get_by_test_id("alarm-ack")).to_contain_text("acknowledged ")
            page.get_by_test_id("alarms-unacknowledged").check()
            expect(page.locator('[data-testid="alarm-row"]')).to_have_count(0)
            page.get_by_test_id("alarms-unacknowledged").uncheck()
            page.locator('[data-testid="alarm-row"]').first.get_by_test_id("alarm-clear-button").click()
            expect(page.locator('[data-testid="alarm-row"]')).to_have_count(0)  # the filter shows active ones
            page.get_by_test_id("alarms-status").select_option("cleared")
            expect(page.locator('[data-testid="alarm-row"][data-status="cleared"]')).to_have_count(1)
            page.locator('[data-testid="alarm-row"]').first.get_by_test_id("alarm-device").click()
            expect(page.get_by_test_id("device-title")).to_have_text("pump-1")
        finally:
            device.stop()
    with pytest.raises(urllib.error.HTTPError) as stale:
        send(url, admin, "PATCH", "/api/devices/pump-1/shadow", {"desired": {"speed": 1}, "version": 1})
    assert stale.value.code == 409
