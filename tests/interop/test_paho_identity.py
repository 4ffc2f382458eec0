"""Device identity from paho-mqtt (issue 16, finding 5): a device connecting
with another device's client id is refused, does not take over that
device's persistent session or the commands queued for it, and does not
disconnect it. Client ids are bound to usernames (`client_id_binding`,
default "prefix": the username or `{username}:…`)."""

import pytest

from verge_interop import V3, V5, Client, Node, own_topics_device
from test_paho_auth import assert_refused, cli_hash, connack_code

BOTH = pytest.mark.parametrize("proto", [V3, V5], ids=["v311", "v5"])

# 3.1.1 CONNACK return code 2 identifier rejected / 5.0 reason code 0x85
ID_REJECTED = {V3: 2, V5: 0x85}


def registry_text():
    h = cli_hash("pw")
    return own_topics_device("dev1", h) + own_topics_device("dev2", h) + f"""
[[devices]]
username = "ops"
password_hash = "{h}"
"""


@pytest.fixture(scope="module")
def bound(tmp_path_factory):
    """Default binding ("prefix")."""
    reg = tmp_path_factory.mktemp("registry") / "devices.toml"
    reg.write_text(registry_text())
    n = Node(extra=f'devices_file = "{reg}"', anonymous=False)
    yield n
    n.stop()


@pytest.fixture(scope="module")
def unbound(tmp_path_factory):
    """client_id_binding = "off": only session ownership protects a device."""
    reg = tmp_path_factory.mktemp("registry") / "devices.toml"
    reg.write_text(registry_text())
    n = Node(extra=f'devices_file = "{reg}"\nclient_id_binding = "off"', anonymous=False)
    yield n
    n.stop()


def refused(c, proto):
    """CONNACK "identifier rejected" for `proto`, then the connection closed."""
    assert_refused(c, {ID_REJECTED[proto]})


def persistent(node, proto, cid, user):
    return Client(node, proto, cid=cid, clean=False, expiry=3600 if proto == V5 else None,
                  user=(user, "pw"))


@BOTH
@pytest.mark.parametrize("which", ["bound", "unbound"])
def test_regression_device_cannot_take_over_another_devices_session(request, which, proto):
    """Finding 5: a second device connecting with the first device's client
    id (clean session off) is refused, receives none of the first device's
    queued commands, and the first device stays connected and gets them."""
    node = request.getfixturevalue(which)
    cid = f"dev1:ctl-{proto}-{which}"
    victim = persistent(node, proto, cid, "dev1")
    assert connack_code(victim) == 0
    cmd = f"devices/dev1/cmd/{proto}"
    assert victim.sub(cmd, 1) == [1]
    victim.close()  # offline; its session and subscription stay
    ops = Client(node, proto, user=("ops", "pw"))
    for i in range(3):
        ops.pub(cmd, f"cmd{i}", 1)  # queued for dev1

    thief = persistent(node, proto, cid, "dev2")
    refused(thief, proto)
    assert thief.msgs.empty(), "the refused device received dev1's commands"

    victim = persistent(node, proto, cid, "dev1")
    assert connack_code(victim) == 0 and victim.session_present
    got = [m.payload for m in victim.recv_n(3)]
    assert got == [b"cmd0", b"cmd1", b"cmd2"], "dev1 keeps its queued commands"

    # A live session: refused again, and dev1 stays connected.
    thief = persistent(node, proto, cid, "dev2")
    refused(thief, proto)
    ops.pub(cmd, "live", 1)
    assert victim.recv().payload == b"live"
    assert victim.disconnects.empty(), "the first device was disconnected"
    victim.close()
    ops.close()


@BOTH
def test_client_id_must_be_bound_to_the_username(bound, proto):
    ok = Client(bound, proto, cid="dev1:a", user=("dev1", "pw"))
    assert connack_code(ok) == 0
    ok.close()
    same = Client(bound, proto, cid="dev1", user=("dev1", "pw"))
    assert connack_code(same) == 0
    same.close()
    for cid in ("dev10", "dev1-a", "dev2:x"):
        refused(Client(bound, proto, cid=cid, user=("dev1", "pw")), proto)
