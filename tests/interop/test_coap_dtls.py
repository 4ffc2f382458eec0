"""CoAP over DTLS (coaps://, RFC 7252 §9) from third-party clients against
the real `verge node`: aiocoap with its tinydtls transport (the DTLSSocket
package, TLS_PSK_WITH_AES_128_CCM_8) and, where installed, libcoap's
`coap-client-openssl` (PSK and client certificates). The PSK identity, or
the certificate's common name, is the device: its ACL applies, and a wrong
key or a missing certificate gets no session."""

import asyncio
import queue
import shutil
import subprocess

import argon2
import pytest
from aiocoap import Code, Context, Message

from verge_interop import V5, WAIT, Client, Node, free_port, own_topics_device

# tinydtls (aiocoap's DTLS transport) takes keys of at most 16 bytes by
# default (DTLS_PSK_MAX_KEY_LEN); a longer one fails its handshake with an
# internal_error alert on the client's side.
KEY = "sensor-psk-0123"

pytest.importorskip("DTLSSocket", reason="aiocoap's DTLS transport needs DTLSSocket")


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 4 * WAIT))


class DtlsNode:
    """A node whose registry has the device `sensor` (ACL: devices/sensor/#
    only) with a PSK, and the identity `keyonly` with a key but no device;
    anonymous MQTT clients may do anything (they watch)."""

    def __init__(self, tmp_path):
        reg = tmp_path / "devices.toml"
        reg.write_text(own_topics_device("sensor", argon2.PasswordHasher().hash("s3cret")))
        key_file = tmp_path / "sensor.key"
        key_file.write_text(KEY + "\n")
        self.port = free_port()
        self.node = Node(extra=f'devices_file = "{reg}"', tail=f"""
[coap.dtls]
enabled = true
bind = "127.0.0.1:{self.port}"
[[coap.dtls.psk]]
identity = "sensor"
key_file = "{key_file}"
[[coap.dtls.psk]]
identity = "keyonly"
key_hex = "{b'other-key'.hex()}"
""")

    def uri(self, path):
        return f"coaps://127.0.0.1:{self.port}{path}"

    def stop(self):
        self.node.stop()


@pytest.fixture(scope="module")
def dnode(tmp_path_factory):
    n = DtlsNode(tmp_path_factory.mktemp("dtls"))
    try:
        yield n
    finally:
        n.stop()


async def client(node, identity="sensor", key=KEY):
    ctx = await Context.create_client_context()
    ctx.client_credentials.load_from_dict({
        node.uri("/*"): {"dtls": {"psk": {"ascii": key}, "client-identity": {"ascii": identity}}},
    })
    return ctx


async def request(node, msg, **creds):
    ctx = await client(node, **creds)
    try:
        return await asyncio.wait_for(ctx.request(msg).response, WAIT)
    finally:
        await ctx.shutdown()


def test_aiocoap_tinydtls_post_reaches_mqtt_as_the_psk_identity(dnode):
    sub = Client(dnode.node, V5)
    assert sub.sub("devices/#", 1) == [1]
    msg = Message(code=Code.POST, uri=dnode.uri("/ps/devices/sensor/t"), payload=b'{"t":21.5}')
    assert run(request(dnode, msg)).code == Code.CHANGED
    m = sub.recv()
    assert (m.topic, m.payload, m.qos) == ("devices/sensor/t", b'{"t":21.5}', 1)
    # The device's ACL applies to its PSK identity.
    msg = Message(code=Code.POST, uri=dnode.uri("/ps/devices/other/t"), payload=b"1")
    assert run(request(dnode, msg)).code == Code.FORBIDDEN
    # Over DTLS the query string carries no credentials.
    msg = Message(code=Code.POST, uri=dnode.uri("/ps/devices/sensor/t?u=sensor&p=s3cret"),
                  payload=b"1")
    assert run(request(dnode, msg)).code == Code.BAD_REQUEST
    sub.close()


def test_aiocoap_tinydtls_observe_gets_mqtt_publishes(dnode):
    async def observe():
        ctx = await client(dnode)
        try:
            req = ctx.request(Message(code=Code.GET, observe=0,
                                      uri=dnode.uri("/ps/devices/sensor/cmd")))
            first = await asyncio.wait_for(req.response, WAIT)
            assert first.code == Code.CONTENT
            pub = Client(dnode.node, V5)
            try:
                pub.c.publish("devices/sensor/cmd", b"on", qos=1)
                n = await asyncio.wait_for(req.observation.__aiter__().__anext__(), WAIT)
                assert n.payload == b"on"
            finally:
                pub.close()
            req.observation.cancel()
        finally:
            await ctx.shutdown()

    run(observe())


def test_aiocoap_wrong_key_or_unknown_identity_gets_no_answer(dnode):
    for creds in ({"key": "not-the-key"}, {"identity": "stranger"}):
        msg = Message(code=Code.POST, uri=dnode.uri("/ps/devices/sensor/t"), payload=b"1")
        with pytest.raises(Exception):  # noqa: B017 - aiocoap's error types vary by transport
            r = run(request(dnode, msg, **creds))
            pytest.fail(f"{creds}: answered {r.code} without the right key")
    # The node is still serving the right key.
    msg = Message(code=Code.POST, uri=dnode.uri("/ps/devices/sensor/t"), payload=b"1")
    assert run(request(dnode, msg)).code == Code.CHANGED


def test_aiocoap_identity_with_key_but_no_device_gets_the_global_rules(dnode):
    msg = Message(code=Code.POST, uri=dnode.uri("/ps/devices/other/t"), payload=b"1")
    assert run(request(dnode, msg, identity="keyonly", key="other-key")).code == Code.CHANGED


@pytest.mark.skipif(shutil.which("coap-client-openssl") is None,
                    reason="libcoap's coap-client-openssl not installed (Debian libcoap3-bin)")
def test_libcoap_client_psk_post(dnode):
    sub = Client(dnode.node, V5)
    assert sub.sub("devices/sensor/lib", 1) == [1]
    out = subprocess.run(
        ["coap-client-openssl", "-B", "10", "-u", "sensor", "-k", KEY, "-m", "post",
         "-e", "from-libcoap", dnode.uri("/ps/devices/sensor/lib")],
        capture_output=True, text=True, timeout=4 * WAIT)
    assert out.returncode == 0, out.stderr
    m = sub.recv()
    assert (m.topic, m.payload) == ("devices/sensor/lib", b"from-libcoap")
    bad = subprocess.run(
        ["coap-client-openssl", "-B", "3", "-u", "sensor", "-k", "wrong", "-m", "post",
         "-e", "x", dnode.uri("/ps/devices/sensor/lib")],
        capture_output=True, text=True, timeout=4 * WAIT)
    assert "2.04" not in bad.stdout + bad.stderr
    sub.close()


def make_pki(d):
    """A CA (EC P-256), the node's certificate for 127.0.0.1 and a device
    certificate with common name `sensor`, made with the openssl tool."""
    def ossl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    ossl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=Verge Interop CA")
    for name, cn, ext in (("server", "127.0.0.1", "subjectAltName=IP:127.0.0.1"),
                          ("sensor", "sensor", "extendedKeyUsage=clientAuth")):
        ossl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}")
        (d / f"{name}.ext").write_text(ext + "\n")
        ossl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext")


@pytest.mark.skipif(shutil.which("coap-client-openssl") is None or shutil.which("openssl") is None,
                    reason="needs libcoap's coap-client-openssl and the openssl tool")
def test_libcoap_client_certificate_is_the_device(tmp_path):
    make_pki(tmp_path)
    reg = tmp_path / "devices.toml"
    reg.write_text(own_topics_device("sensor", argon2.PasswordHasher().hash("s3cret")))
    port = free_port()
    n = Node(extra=f'devices_file = "{reg}"', tail=f"""
[coap.dtls]
enabled = true
bind = "127.0.0.1:{port}"
cert = "{tmp_path}/server.crt"
key = "{tmp_path}/server.key"
client_ca = "{tmp_path}/ca.crt"
""")
    try:
        sub = Client(n, V5)
        assert sub.sub("devices/#", 1) == [1]

        def post(path, *cert):
            return subprocess.run(
                ["coap-client-openssl", "-B", "5", *cert, "-m", "post", "-e", "by-cert",
                 f"coaps://127.0.0.1:{port}{path}"],
                capture_output=True, text=True, timeout=4 * WAIT)

        device = ("-c", str(tmp_path / "sensor.crt"), "-j", str(tmp_path / "sensor.key"),
                  "-C", str(tmp_path / "ca.crt"))
        out = post("/ps/devices/sensor/c", *device)
        assert out.returncode == 0, out.stderr
        m = sub.recv()
        assert (m.topic, m.payload) == ("devices/sensor/c", b"by-cert")
        # The ACL of the certificate's name applies.
        out = post("/ps/devices/other/c", *device)
        assert "4.03" in out.stdout + out.stderr, out.stdout + out.stderr
        # Without a client certificate there is no session.
        out = post("/ps/devices/sensor/c", "-C", str(tmp_path / "ca.crt"))
        assert "2.04" not in out.stdout + out.stderr
        with pytest.raises(queue.Empty):
            sub.msgs.get(timeout=1)
        sub.close()
    finally:
        n.stop()
