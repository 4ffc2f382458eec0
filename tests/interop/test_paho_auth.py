"""Password authentication and per-device ACLs with a device registry
(allow_anonymous = false), from paho-mqtt over MQTT 3.1.1 and 5.0."""

import queue
import subprocess
import uuid

import argon2
import pytest

from verge_interop import V3, V5, WAIT, Client, Node, own_topics_device, verge_bin

BOTH = pytest.mark.parametrize("proto", [V3, V5], ids=["v311", "v5"])

# 3.1.1 CONNACK return codes / 5.0 CONNACK reason codes
BAD_CREDENTIALS = {V3: 4, V5: 0x86}
NOT_AUTHORIZED = {V3: 5, V5: 0x87}


def cli_hash(password, stdin=False):
    """An argon2 PHC hash from `verge device hash-password`."""
    if stdin:  # as in `echo s3cret | verge device hash-password`
        args, inp = [], password + "\n"
    else:
        args, inp = ["--password", password], None
    out = subprocess.run([verge_bin(), "device", "hash-password", *args], input=inp,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    h = out.stdout.strip()
    assert h.startswith("$argon2"), h
    return h


@pytest.fixture(scope="module")
def locked(tmp_path_factory):
    reg = tmp_path_factory.mktemp("registry") / "devices.toml"
    # ACL: sensor may only use devices/<its username>/...
    reg.write_text(own_topics_device("sensor", cli_hash("s3cret", stdin=True)) + f"""
# hashed by a third-party library (argon2-cffi), not by verge
[[devices]]
username = "py"
password_hash = "{argon2.PasswordHasher().hash("py-pass")}"

[[devices]]
username = "pinned"
password_hash = "{cli_hash("pin-pass")}"
client_id = "pinned-1"

[[devices]]
username = "admin"
password_hash = "{cli_hash("admin-pass")}"
""")
    n = Node(extra=f'devices_file = "{reg}"', anonymous=False, acl_default="allow")
    yield n
    n.stop()


def connack_code(c):
    """The code on the wire: 3.1.1 return code or 5.0 reason code."""
    if c.proto == V3:
        assert c.raw_connack is not None, "CONNACK not seen in paho's log"
        return c.raw_connack[1]
    return c.rc.value


def assert_refused(c, codes):
    code = connack_code(c)
    assert code in codes, f"CONNACK code {code:#x} ({c.rc}), expected one of {[hex(x) for x in codes]}"
    try:  # a refused connection is closed by the broker
        c.disconnects.get(timeout=WAIT)
    except queue.Empty:
        pytest.fail("the broker kept a refused connection open")
    finally:
        c.c.loop_stop()


@BOTH
def test_right_password_connects(locked, proto):
    c = Client(locked, proto, user=("sensor", "s3cret"))
    assert connack_code(c) == 0, c.rc
    c.close()


@BOTH
def test_argon2_cffi_hash_accepted(locked, proto):
    c = Client(locked, proto, user=("py", "py-pass"))
    assert connack_code(c) == 0, c.rc
    c.close()


@BOTH
def test_wrong_password_refused(locked, proto):
    c = Client(locked, proto, user=("sensor", "wrong"))
    assert_refused(c, {BAD_CREDENTIALS[proto]})
    if proto == V5:
        assert str(c.rc) == "Bad user name or password"


@BOTH
def test_unknown_user_refused(locked, proto):
    c = Client(locked, proto, user=("nobody", "s3cret"))
    assert_refused(c, {BAD_CREDENTIALS[proto]})


@BOTH
def test_anonymous_refused(locked, proto):
    c = Client(locked, proto)
    assert_refused(c, {BAD_CREDENTIALS[proto], NOT_AUTHORIZED[proto]})


@BOTH
def test_pinned_client_id(locked, proto):
    ok = Client(locked, proto, cid="pinned-1", user=("pinned", "pin-pass"))
    assert connack_code(ok) == 0
    ok.close()
    other = Client(locked, proto, cid="pinned-2", user=("pinned", "pin-pass"))
    assert_refused(other, {NOT_AUTHORIZED[proto]})


@BOTH
def test_acl_subscribe_denied(locked, proto):
    c = Client(locked, proto, user=("sensor", "s3cret"))
    own, other = f"devices/sensor/{uuid.uuid4().hex[:8]}/#", "other/#"
    # one SUBSCRIBE, one reason code per filter
    codes = c.sub([(own, 1), (other, 1)])
    assert codes == [1, 0x80 if proto == V3 else 0x87], [hex(x) for x in codes]
    admin = Client(locked, proto, user=("admin", "admin-pass"))
    admin.pub("other/x", "not for sensor", 1)
    c.nothing(1.0)  # the refused filter delivers nothing
    c.close()
    admin.close()


@BOTH
def test_acl_publish_denied(locked, proto):
    tag = uuid.uuid4().hex[:8]
    denied, allowed = f"other/{tag}", f"devices/sensor/{tag}"
    admin = Client(locked, proto, user=("admin", "admin-pass"))
    assert admin.sub(denied, 1) == [1]
    assert admin.sub(allowed, 1) == [1]
    c = Client(locked, proto, user=("sensor", "s3cret"))
    rc = c.pub(denied, "nope", 1)
    if proto == V5:
        assert rc.value == 0x87, f"PUBACK reason {rc.value:#x} ({rc}), expected 0x87 Not authorized"
    rc = c.pub(allowed, "yes", 1)
    assert rc.value == 0, rc
    m = admin.recv()
    assert (m.topic, m.payload) == (allowed, b"yes"), "the denied publish is not delivered"
    admin.nothing(1.0)
    c.close()
    admin.close()
