"""The Modbus TCP driver against a third-party server: a Python `pymodbus`
TCP server (holding and input registers, coils and discrete inputs, one
register counting up) on its own thread; the real `verge node` binary with a
`[[drivers]]` table; paho-mqtt sees the telemetry and sends write commands,
which change the server's registers and coils."""

import asyncio
import functools
import json
import logging
import re
import time

import pytest

pymodbus = pytest.importorskip("pymodbus")
from pymodbus.datastore import (  # noqa: E402
    ModbusDeviceContext,
    ModbusSequentialDataBlock,
    ModbusServerContext,
)
from pymodbus.server import ModbusTcpServer  # noqa: E402

from verge_interop import (  # noqa: E402
    V5,
    Client,
    LoopThread,
    Node,
    device_telemetry,
    free_port,
    write_command,
)
from verge_interop import node_api as api  # noqa: E402

PATIENCE = 20  # seconds for anything that involves (re)connecting
SIZE = 100  # registers and bits of each table


class ModbusServer(LoopThread):
    """A pymodbus TCP server on its own thread and event loop. hr:0 counts up
    every 100 ms; the rest holds fixed values the test checks."""

    def __init__(self, port=None):
        logging.getLogger("pymodbus").setLevel(logging.ERROR)
        self.port = port or free_port()
        hr = [0] * SIZE
        hr[1:3] = [0x41AC, 0x0000]  # f32 21.5
        hr[30:32] = [0x4F4B, 0x0000]  # "OK"
        ir = [0] * SIZE
        ir[0] = 215  # 21.5 with scale 0.1
        ir[10:12] = [0xFFFE, 0xFFFF]  # i32 -2, low word first
        co = [False] * SIZE
        co[3] = True
        di = [False] * SIZE
        di[7] = True
        # pymodbus's legacy blocks count from 1: block address 1 is register 0
        device = ModbusDeviceContext(
            co=ModbusSequentialDataBlock(1, co),
            di=ModbusSequentialDataBlock(1, di),
            hr=ModbusSequentialDataBlock(1, hr),
            ir=ModbusSequentialDataBlock(1, ir),
        )
        self.context = ModbusServerContext(devices=device, single=True)
        self.start_loop("pymodbus server")

    async def _start(self):
        self.server = ModbusTcpServer(self.context, address=("127.0.0.1", self.port))
        await self.server.serve_forever(background=True)
        self.ticker = asyncio.ensure_future(self._tick())

    async def _tick(self):
        n = 0
        while True:
            await asyncio.sleep(0.1)
            n = (n + 1) % 65536
            await self.server.async_setValues(1, 3, 0, [n])

    def get(self, fc, address, count=1):
        """Values of a table (fc 1 coils, 3 holding registers) as stored."""
        fut = asyncio.run_coroutine_threadsafe(
            self.server.async_getValues(1, fc, address, count), self.loop)
        return fut.result(5)

    def stop(self):
        async def _stop():
            self.ticker.cancel()
            await self.server.shutdown()
        self.stop_loop(_stop())


def drivers_toml(server):
    return f"""
[[drivers]]
name = "plc"
protocol = "modbus-tcp"
host = "127.0.0.1"
port = {server.port}
timeout = "1s"
retry = {{ initial = "200ms", max = "1s" }}
[[drivers.devices]]
name = "press"
unit = 1
poll = "100ms"
[[drivers.devices.points]]
name = "counter"
address = "hr:0"
[[drivers.devices.points]]
name = "flow"
address = "hr:1"
type = "f32"
unit = "m3/h"
[[drivers.devices.points]]
name = "label"
address = "hr:30"
type = "string"
length = 2
[[drivers.devices.points]]
name = "setpoint"
address = "hr:20"
access = "rw"
scale = 0.1
[[drivers.devices.points]]
name = "temperature"
address = "ir:0"
scale = 0.1
[[drivers.devices.points]]
name = "energy"
address = "ir:10"
type = "i32"
word_order = "little"
[[drivers.devices.points]]
name = "running"
address = "coil:3"
[[drivers.devices.points]]
name = "pump"
address = "coil:5"
access = "rw"
[[drivers.devices.points]]
name = "door"
address = "di:7"
[[drivers.devices.points]]
name = "missing"
address = "hr:5000"
[[drivers.devices.points]]
name = "limit"
address = "hr:40"
type = "f32"
access = "rw"
[[drivers.devices.points]]
name = "count"
address = "hr:44"
access = "rw"
"""


@pytest.fixture(scope="module")
def setup():
    server = ModbusServer()
    node = Node(tail=drivers_toml(server))
    yield server, node
    node.stop()
    server.stop()


telemetry = functools.partial(device_telemetry, timeout=PATIENCE)
write = functools.partial(write_command, timeout=PATIENCE)


def test_telemetry_carries_every_type(setup):
    _, node = setup
    c = Client(node, V5)
    c.sub("devices/press/telemetry", 0)
    doc = telemetry(c, "press", lambda d: d.get("quality", {}).get("counter") == "good")
    v = doc["values"]
    assert v["flow"] == 21.5
    assert v["label"] == "OK"
    assert v["temperature"] == 21.5
    assert v["energy"] == -2
    assert v["running"] is True and v["pump"] is False and v["door"] is True
    # a register outside the server's map: named, the others unaffected
    assert doc["quality"]["missing"] == "bad"
    assert doc["errors"]["missing"] == "illegal data address"
    assert isinstance(doc["ts"], int)
    # the server's counter moves, and the telemetry follows it
    first = v["counter"]
    telemetry(c, "press", lambda d: d["values"].get("counter", first) != first)
    c.close()


def test_writes_change_the_server(setup):
    server, node = setup
    c = Client(node, V5)
    r = write(c, "press", "setpoint", 123.4)
    assert r["ok"] is True, r
    assert server.get(3, 20) == [1234]
    r = write(c, "press", "pump", True)
    assert r["ok"] is True, r
    assert server.get(1, 5) == [True]
    c.sub("devices/press/telemetry", 0)
    telemetry(c, "press", lambda d: d["values"].get("pump") is True
              and d["values"].get("setpoint") == 123.4)
    # refused before anything is sent
    r = write(c, "press", "flow", 1)
    assert r["ok"] is False and "read-only" in r["error"], r
    r = write(c, "press", "setpoint", 10_000)
    assert r["ok"] is False and "out of range" in r["error"], r
    assert server.get(3, 20) == [1234]
    c.close()


def test_status_in_the_api(setup):
    _, node = setup
    deadline = time.time() + PATIENCE
    while True:
        status = api(node, "/api/drivers")
        plc = next(d for d in status if d["name"] == "plc")
        if plc["reads"] > 0 or time.time() > deadline:
            break
        time.sleep(0.2)
    assert plc["protocol"] == "modbus-tcp"
    assert plc["connected"] is True, plc
    press = plc["devices"][0]
    assert press["name"] == "press" and press["state"] == "good", press
    assert press["bad_points"] == 1


def test_f32_write_out_of_range_is_refused(setup):
    """Issue 17, drivers 2: 1e40 into an f32 answered ok and wrote +inf."""
    server, node = setup
    c = Client(node, V5)
    for value in (1e40, -3.5e38):
        r = write(c, "press", "limit", value)
        assert r["ok"] is False and "out of range" in r["error"], r
    assert server.get(3, 40, 2) == [0, 0]
    r = write(c, "press", "limit", 21.5)
    assert r["ok"] is True and r["value"] == 21.5, r
    assert server.get(3, 40, 2) == [0x41AC, 0x0000]
    c.close()


def test_lossy_write_is_refused_and_the_reply_is_the_value_written(setup):
    """Issue 17, drivers 7: 4.7 into a u16 replied 4.7 while the device got
    5; `true` into a u16 wrote 1. Lossy writes are refused before anything
    is sent; the reply of a write carries the value the device was given."""
    server, node = setup
    c = Client(node, V5)
    r = write(c, "press", "count", 9)
    assert r["ok"] is True and r["value"] == 9, r
    r = write(c, "press", "count", 4.7)
    assert r["ok"] is False and "not a whole number" in r["error"], r
    r = write(c, "press", "count", True)
    assert r["ok"] is False and "not a number" in r["error"], r
    assert server.get(3, 44) == [9]
    # with scale 0.1, 123.45 would be 1234.5 raw steps: refused too
    r = write(c, "press", "setpoint", 123.45)
    assert r["ok"] is False and "not a whole number" in r["error"], r
    # an f32 keeps its nearest value; the reply says which
    r = write(c, "press", "limit", 0.1)
    assert r["ok"] is True and r["value"] == 0.1, r
    r = write(c, "press", "limit", 16777217)
    assert r["ok"] is True and r["value"] == 16777216, r
    c.close()


def two_devices_toml(name, port, devices):
    tables = "".join(f"""
[[drivers.devices]]
name = "{d}"
unit = 1
poll = "200ms"
[[drivers.devices.points]]
name = "counter"
address = "hr:0"
""" for d in devices)
    return f"""
[[drivers]]
name = "{name}"
protocol = "modbus-tcp"
host = "127.0.0.1"
port = {port}
timeout = "500ms"
retry = {{ initial = "200ms", max = "1s" }}
{tables}"""


def collect_bad(c, devices, n, timeout=PATIENCE):
    """Telemetry until each of `devices` published `n` all-bad messages;
    the errors seen, per device."""
    errors = {d: [] for d in devices}
    deadline = time.time() + timeout
    while any(len(e) < n for e in errors.values()):
        assert time.time() < deadline, f"bad messages seen: {errors}"
        m = c.recv(max(0.1, deadline - time.time()))
        device = m.topic.split("/")[1]
        doc = json.loads(m.payload)
        if device in errors and doc["quality"] and all(q == "bad" for q in doc["quality"].values()):
            errors[device].append(doc["error"])
    return errors


def test_every_device_publishes_bad_on_its_cadence_when_its_connection_is_down():
    """Issue 17, drivers 1 and 4, and 8 (status after recovery): when the
    connection dropped only the device whose read hit it published `bad`,
    a driver that never connected published nothing, the closed connection
    was reported as a stale errno, and after recovery the status kept the
    old `last_error`."""
    server = ModbusServer()
    port = server.port
    nobody = free_port()
    node = Node(tail=two_devices_toml("line", port, ["left", "right"])
                + two_devices_toml("ghost", nobody, ["ghost-1", "ghost-2"]))
    try:
        c = Client(node, V5)
        c.sub("devices/+/telemetry", 0)
        # a driver that never connects: each of its devices says so, again and again
        errors = collect_bad(c, ["ghost-1", "ghost-2"], 3)
        assert all("refused" in e for es in errors.values() for e in es), errors
        # the live connection: both good
        for d in ("left", "right"):
            telemetry(c, d, lambda doc: doc["quality"].get("counter") == "good")
        # the device goes away: both of its devices publish bad on their cadence
        server.stop()
        errors = collect_bad(c, ["left", "right"], 3)
        seen = [e for es in errors.values() for e in es]
        assert not any(re.search(r"os error (2|115)\b", e) for e in seen), seen
        assert any("connection closed by the device" in e for e in seen), seen
        status = next(d for d in api(node, "/api/drivers") if d["name"] == "line")
        assert not status["connected"], status
        assert all(dev["state"] == "bad" for dev in status["devices"]), status
        # back: good again, and the status forgets the old error
        server = ModbusServer(port)
        for d in ("left", "right"):
            telemetry(c, d, lambda doc: doc["quality"].get("counter") == "good")
        status = next(d for d in api(node, "/api/drivers") if d["name"] == "line")
        assert status["connected"] and status["last_error"] is None, status
        assert all(dev["state"] == "good" and dev["last_error"] is None
                   for dev in status["devices"]), status
        c.close()
    finally:
        node.stop()
        try:
            server.stop()
        except Exception:  # noqa: BLE001 - already stopped by a failed step
            pass
