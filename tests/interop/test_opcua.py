"""The OPC UA driver against a third-party server: a Python `asyncua` server
with a changing variable and a writable one; the real `verge node` binary
with `[[drivers]]` tables (security None, and Basic256Sha256 with the client
certificate generated on first start and the server certificate trusted by
an operator moving it out of `rejected/`); paho-mqtt sees the telemetry and
sends write commands, which change the server's variable."""

import asyncio
import functools
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
from pathlib import Path

import pytest

asyncua = pytest.importorskip("asyncua")
from asyncua import Server, ua  # noqa: E402
from asyncua.crypto.cert_gen import setup_self_signed_certificate  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID  # noqa: E402

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

PATIENCE = 30  # seconds for anything that involves (re)connecting


class OpcuaServer(LoopThread):
    """An asyncua server on its own thread and event loop: `ns=N;s=Temperature`
    (Double, +0.5 every 200 ms) and `ns=N;s=Setpoint` (Int32, writable), on
    endpoints with security None and Basic256Sha256 (sign and encrypt)."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="verge-opcua-server-")
        self.port = free_port()
        self.url = f"opc.tcp://127.0.0.1:{self.port}/verge/"
        self.start_loop("asyncua server")

    async def _start(self):
        uri = "urn:verge:interop:asyncua"
        key, cert = Path(self.dir, "key.pem"), Path(self.dir, "cert.der")
        await setup_self_signed_certificate(
            key, cert, uri, "127.0.0.1", [ExtendedKeyUsageOID.SERVER_AUTH],
            {"commonName": "asyncua interop server"},
        )
        self.server = Server()
        await self.server.init()
        self.server.set_endpoint(self.url)
        await self.server.set_application_uri(uri)
        self.server.set_security_policy([
            ua.SecurityPolicyType.NoSecurity,
            ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
        ])
        await self.server.load_certificate(str(cert))
        await self.server.load_private_key(str(key))
        self.ns = await self.server.register_namespace("urn:verge:interop")
        boiler = await self.server.nodes.objects.add_object(self.ns, "Boiler")
        self.temperature = await boiler.add_variable(
            ua.NodeId("Temperature", self.ns), "Temperature", 20.0, ua.VariantType.Double)
        self.setpoint = await boiler.add_variable(
            ua.NodeId("Setpoint", self.ns), "Setpoint", 7, ua.VariantType.Int32)
        await self.setpoint.set_writable()
        await self.server.start()
        self.ticker = asyncio.ensure_future(self._tick())

    async def _tick(self):
        t = 20.0
        while True:
            await asyncio.sleep(0.2)
            t += 0.5
            await self.temperature.write_value(t, ua.VariantType.Double)

    def setpoint_value(self):
        return asyncio.run_coroutine_threadsafe(self.setpoint.read_value(), self.loop).result(5)

    def stop(self):
        async def _stop():
            self.ticker.cancel()
            await self.server.stop()
            # sessions' and subscriptions' loops outlive stop(): end them too
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)
        try:
            self.stop_loop(_stop())
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def drivers_toml(server, pki):
    ns = server.ns
    points = f"""
[[drivers.devices.points]]
name = "temperature"
address = "ns={ns};s=Temperature"
unit = "°C"
[[drivers.devices.points]]
name = "setpoint"
address = "ns={ns};s=Setpoint"
access = "rw"
"""

    def driver(name, security, pki_dir, device):
        return f"""
[[drivers]]
name = "{name}"
protocol = "opcua"
endpoint = "{server.url}"
security = "{security}"
pki_dir = "{pki_dir}"
timeout = "2s"
retry = {{ initial = "200ms", max = "1s" }}
[[drivers.devices]]
name = "{device}"
poll = "200ms"
{points}"""

    return (driver("ua-plain", "none", f"{pki}-plain", "boiler")
            + driver("ua-secure", "basic256sha256", pki, "boiler-secure")
            # the server has no sign-only endpoint
            + driver("ua-sign", "basic256sha256-sign", f"{pki}-sign", "boiler-sign") + "\n")


@pytest.fixture(scope="module")
def setup():
    server = OpcuaServer()
    pki = tempfile.mkdtemp(prefix="verge-opcua-pki-")
    node = Node(tail=drivers_toml(server, pki))
    yield server, node, Path(pki)
    node.stop()
    server.stop()
    shutil.rmtree(pki, ignore_errors=True)
    shutil.rmtree(pki + "-plain", ignore_errors=True)
    shutil.rmtree(pki + "-sign", ignore_errors=True)


telemetry = functools.partial(device_telemetry, timeout=PATIENCE)
write = functools.partial(write_command, timeout=PATIENCE)


def good(doc, point="temperature"):
    return doc.get("quality", {}).get(point) == "good"


def test_security_none_subscribes_and_writes(setup):
    server, node, _ = setup
    c = Client(node, V5)
    c.sub("devices/boiler/telemetry", 0)
    first = telemetry(c, "boiler", good)
    assert first["values"]["setpoint"] == 7 or good(first, "setpoint")
    assert isinstance(first["values"]["temperature"], float)
    # the server's variable moves, and the subscription follows it
    t0 = first["values"]["temperature"]
    telemetry(c, "boiler", lambda d: good(d) and d["values"]["temperature"] > t0)

    r = write(c, "boiler", "setpoint", 42)
    assert r["ok"] is True, r
    assert server.setpoint_value() == 42
    telemetry(c, "boiler", lambda d: d["values"].get("setpoint") == 42)

    # refused before sending: the variable is Int32
    r = write(c, "boiler", "setpoint", 1.5)
    assert r["ok"] is False and "not an integer" in r["error"], r
    # a read-only point
    r = write(c, "boiler", "temperature", 1)
    assert r["ok"] is False and "read-only" in r["error"], r
    assert server.setpoint_value() == 42
    c.close()


def test_basic256sha256_with_generated_certificate_and_trusted_server(setup):
    server, node, pki = setup
    # first start: the client's certificate and key are generated ...
    deadline = time.time() + PATIENCE
    while time.time() < deadline and not (pki / "own" / "cert.der").exists():
        time.sleep(0.1)
    assert (pki / "own" / "cert.der").exists(), node.tail()
    assert (pki / "private" / "private.pem").exists()
    # ... and the unknown server certificate is rejected until an operator
    # trusts it
    rejected = []
    while time.time() < deadline:
        rejected = list((pki / "rejected").glob("*.der"))
        if rejected:
            break
        time.sleep(0.1)
    assert rejected, f"no rejected server certificate; {node.tail()}"
    status = api(node, "/api/drivers")
    secure = next(d for d in status if d["name"] == "ua-secure")
    assert not secure["connected"]
    assert "trusted" in (secure["last_error"] or ""), secure

    c = Client(node, V5)
    c.sub("devices/boiler-secure/telemetry", 0)
    for f in rejected:
        os.replace(f, pki / "trusted" / f.name)
    telemetry(c, "boiler-secure", good)
    r = write(c, "boiler-secure", "setpoint", -3)
    assert r["ok"] is True, r
    assert server.setpoint_value() == -3
    telemetry(c, "boiler-secure", lambda d: d["values"].get("setpoint") == -3)

    status = api(node, "/api/drivers")
    for name in ("ua-plain", "ua-secure"):
        d = next(d for d in status if d["name"] == name)
        assert d["connected"] and d["protocol"] == "opcua", d
    c.close()


def test_browse_finds_the_servers_variables(setup):
    """`GET /api/drivers/{name}/browse` walks the server's address space:
    the Objects folder, then one level down to the variables."""
    server, node, _ = setup
    top = api(node, "/api/drivers/ua-plain/browse")
    objects = [e for e in top if e["node_class"] == "Object"]
    assert objects, top
    found = []
    for e in objects:
        q = urllib.parse.quote(e["node_id"], safe="")
        found += [k["node_id"] for k in api(node, f"/api/drivers/ua-plain/browse?node={q}")]
    assert f"ns={server.ns};s=Temperature" in found, found
    assert f"ns={server.ns};s=Setpoint" in found, found
    # not an OPC UA driver, or a bad node id: clear errors
    try:
        api(node, "/api/drivers/ua-plain/browse?node=" + urllib.parse.quote("not a node id"))
        pytest.fail("a bad node id was accepted")
    except urllib.error.HTTPError as e:
        assert e.code == 400, e


# What async-opcua logs when a client has no application instance
# certificate (which security "none" does not need).
CERT_ERRORS = ("application instance certificate", "cert and private key",
               "cert or private key")


def test_security_none_logs_no_certificate_errors(setup):
    """Issue 17, drivers 5: with security "none" every connect and browse
    logged ERROR lines about a missing application instance certificate."""
    server, node, _ = setup
    c = Client(node, V5)
    c.sub("devices/boiler/telemetry", 0)
    telemetry(c, "boiler", good)
    c.close()
    assert api(node, "/api/drivers/ua-plain/browse")
    assert api(node, "/api/drivers/ua-plain/browse")
    lines = [line for line in node.output().splitlines()
             if "ERROR" in line and any(e in line for e in CERT_ERRORS)]
    assert not lines, "\n".join(lines)


def test_security_policy_the_server_lacks_is_named(setup):
    """Issue 17, drivers 8: a security policy the server does not offer was
    reported as BadTcpEndpointUrlInvalid."""
    _, node, _ = setup
    deadline = time.time() + PATIENCE
    sign = {}
    while time.time() < deadline:
        sign = next(d for d in api(node, "/api/drivers") if d["name"] == "ua-sign")
        if sign["last_error"]:
            break
        time.sleep(0.2)
    error = sign["last_error"] or ""
    assert not sign["connected"], sign
    assert "no endpoint with security basic256sha256 (sign only)" in error, sign
    assert "none" in error and "basic256sha256 (sign and encrypt)" in error, sign
    assert "BadTcpEndpointUrlInvalid" not in error, sign
