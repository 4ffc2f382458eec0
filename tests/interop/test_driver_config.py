"""Issue 17, drivers 3: one validation path for driver configs. Each invalid
`[[drivers]]` table below is refused by `verge config check` with an error
naming the key, and by `verge node` before it binds anything: its ports stay
free and it never prints its "is running" banner. (Before, `verge config
check` passed 13 of these that `verge node` then refused, after it had
opened its listeners.)"""

import os
import subprocess
import tempfile
import time

import pytest

from verge_interop import free_port, port_open, terminate, verge_bin, verge_env

MODBUS = """
[[drivers]]
name = "m"
protocol = "modbus-tcp"
host = "127.0.0.1"
port = 1502
{driver}
[[drivers.devices]]
name = "d"
{device}
[[drivers.devices.points]]
name = "p"
{point}
"""

DLT645 = """
[[drivers]]
name = "meter"
protocol = "dlt645-tcp"
host = "127.0.0.1"
port = 8899
{driver}
[[drivers.devices]]
name = "d"
{device}
[[drivers.devices.points]]
name = "p"
{point}
"""

OPCUA = """
[[drivers]]
name = "ua"
protocol = "opcua"
{driver}
[[drivers.devices]]
name = "d"
[[drivers.devices.points]]
name = "p"
{point}
"""

RTU = """
[[drivers]]
name = "rtu"
protocol = "modbus-rtu"
{driver}
[[drivers.devices]]
name = "d"
[[drivers.devices.points]]
name = "p"
address = "hr:1"
"""

UA_ENDPOINT = 'endpoint = "opc.tcp://127.0.0.1:4840/"'
METER = 'meter = "000000000001"'

# (case id, [[drivers]] table, the key the error must name)
CASES = [
    # Modbus: address syntax, table, range
    ("modbus-address-syntax", MODBUS.format(driver="", device="", point='address = "hr100"'),
     "devices[0].points[0].address"),
    ("modbus-unknown-table", MODBUS.format(driver="", device="", point='address = "xr:1"'),
     "devices[0].points[0].address"),
    ("modbus-address-range", MODBUS.format(driver="", device="", point='address = "hr:70000"'),
     "devices[0].points[0].address"),
    ("modbus-value-past-65535",
     MODBUS.format(driver="", device="", point='address = "hr:65534"\ntype = "f64"'),
     "devices[0].points[0].address"),
    ("modbus-bit-range", MODBUS.format(driver="", device="", point='address = "hr:1.16"'),
     "devices[0].points[0].address"),
    # Modbus: type against table, access, string length
    ("modbus-type-vs-table",
     MODBUS.format(driver="", device="", point='address = "coil:1"\ntype = "u16"'),
     "devices[0].points[0].type"),
    ("modbus-bool-register",
     MODBUS.format(driver="", device="", point='address = "hr:1"\ntype = "bool"'),
     "devices[0].points[0].type"),
    ("modbus-rw-on-di",
     MODBUS.format(driver="", device="", point='address = "di:1"\naccess = "rw"'),
     "devices[0].points[0].access"),
    ("modbus-rw-on-ir",
     MODBUS.format(driver="", device="", point='address = "ir:1"\naccess = "rw"'),
     "devices[0].points[0].access"),
    ("modbus-string-without-length",
     MODBUS.format(driver="", device="", point='address = "hr:1"\ntype = "string"'),
     "devices[0].points[0].length"),
    ("modbus-length-on-a-number",
     MODBUS.format(driver="", device="", point='address = "hr:1"\nlength = 2'),
     "devices[0].points[0].length"),
    ("modbus-meter-address", MODBUS.format(driver="", device=METER, point='address = "hr:1"'),
     "devices[0].meter"),
    ("modbus-security", MODBUS.format(driver='security = "none"', device="", point='address = "hr:1"'),
     "security"),
    ("modbus-serial-on-tcp",
     MODBUS.format(driver='serial = { device = "/dev/ttyS0" }', device="", point='address = "hr:1"'),
     "serial"),
    ("modbus-poll-too-short", MODBUS.format(driver="", device='poll = "1ms"', point='address = "hr:1"'),
     "devices[0].poll"),
    # DL/T 645: data identifier syntax, unknown identifiers, meter address
    ("dlt645-id-syntax", DLT645.format(driver="", device=METER, point='address = "0201XX00"'),
     "devices[0].points[0].address"),
    ("dlt645-id-length", DLT645.format(driver="", device=METER, point='address = "020101"'),
     "devices[0].points[0].address"),
    ("dlt645-unknown-id", DLT645.format(driver="", device=METER, point='address = "7F7F7F7F"'),
     "devices[0].points[0].address"),
    ("dlt645-meter-address",
     DLT645.format(driver="", device='meter = "12345"', point='address = "02010100"'),
     "devices[0].meter"),
    ("dlt645-meter-missing", DLT645.format(driver="", device="", point='address = "02010100"'),
     "devices[0].meter"),
    ("dlt645-type", DLT645.format(driver="", device=METER, point='address = "02010100"\ntype = "u16"'),
     "devices[0].points[0].type"),
    ("dlt645-unit", DLT645.format(driver="", device=METER + "\nunit = 3", point='address = "02010100"'),
     "devices[0].unit"),
    # OPC UA: node id, security, keys it does not use
    ("opcua-node-id", OPCUA.format(driver=UA_ENDPOINT, point='address = "Temperature"'),
     "devices[0].points[0].address"),
    ("opcua-security", OPCUA.format(driver=UA_ENDPOINT + '\nsecurity = "basic128"', point='address = "ns=2;s=T"'),
     "security"),
    ("opcua-host", OPCUA.format(driver=UA_ENDPOINT + '\nhost = "127.0.0.1"', point='address = "ns=2;s=T"'),
     "host"),
    ("opcua-port", OPCUA.format(driver=UA_ENDPOINT + "\nport = 4840", point='address = "ns=2;s=T"'),
     "port"),
    ("opcua-endpoint", OPCUA.format(driver='endpoint = "http://127.0.0.1:4840/"', point='address = "ns=2;s=T"'),
     "endpoint"),
    ("opcua-byte-order",
     OPCUA.format(driver=UA_ENDPOINT, point='address = "ns=2;s=T"\nbyte_order = "little"'),
     "devices[0].points[0].byte_order"),
    # Serial lines
    ("rtu-parity", RTU.format(driver='serial = { device = "/dev/ttyS0", parity = "mark" }'),
     "serial.parity"),
    ("rtu-data-bits", RTU.format(driver='serial = { device = "/dev/ttyS0", data_bits = 9 }'),
     "serial"),
    ("rtu-without-serial", RTU.format(driver=""), "serial"),
    ("rtu-host", RTU.format(driver='serial = { device = "/dev/ttyS0" }\nhost = "127.0.0.1"'), "host"),
]


def node_config(directory, tcp, http, drivers):
    return f"""
[node]
data_dir = "{directory}/data"
[broker]
allow_anonymous = true
[broker.listeners.tcp]
enabled = true
bind = "127.0.0.1:{tcp}"
[broker.listeners.ws]
enabled = false
[http]
bind = "127.0.0.1:{http}"
{drivers}
"""


@pytest.mark.parametrize("case,drivers,key", CASES, ids=[c[0] for c in CASES])
def test_invalid_driver_config_refused_by_check_and_by_node_before_it_binds(case, drivers, key):
    d = tempfile.mkdtemp(prefix="verge-driver-config-")
    tcp, http = free_port(), free_port()
    path = os.path.join(d, "node.toml")
    with open(path, "w") as f:
        f.write(node_config(d, tcp, http, drivers))

    check = subprocess.run([verge_bin(), "config", "check", path], capture_output=True,
                           text=True, env=verge_env(), timeout=30)
    out = check.stdout + check.stderr
    assert check.returncode != 0, f"{case}: `verge config check` passed it:\n{out}"
    assert key in out, f"{case}: the error does not name {key!r}:\n{out}"

    log = open(os.path.join(d, "verge.log"), "w+")
    proc = subprocess.Popen([verge_bin(), "node", "--config", path], stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=verge_env())
    opened = []
    try:
        deadline = time.time() + 20
        while proc.poll() is None and time.time() < deadline:
            for port in (tcp, http):
                if port_open(port):
                    opened.append(port)
            time.sleep(0.01)
    finally:
        terminate(proc)
    log.flush()
    log.seek(0)
    out = log.read()
    assert proc.returncode not in (None, 0), f"{case}: `verge node` kept running:\n{out}"
    assert not opened, f"{case}: `verge node` listened on {opened} before refusing:\n{out}"
    assert "is running" not in out, out
    assert key in out, f"{case}: the error does not name {key!r}:\n{out}"
    assert not os.path.exists(os.path.join(d, "data")), f"{case}: the data dir was made"
