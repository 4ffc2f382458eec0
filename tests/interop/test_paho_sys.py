"""$SYS statistics (sys_interval = 1s) seen from paho-mqtt, and that `#` and
`+` wildcards do not match `$SYS` topics (MQTT 4.7.2)."""

import time

import pytest

from verge_interop import V3, V5, WAIT, Client

BOTH = pytest.mark.parametrize("proto", [V3, V5], ids=["v311", "v5"])


def latest(client, topic, seconds):
    """Values of `topic` received within `seconds`, in order."""
    return [m.payload.decode() for m in client.drain(seconds) if m.topic == topic]


@BOTH
def test_sys_uptime_published_every_interval(node, proto):
    s = Client(node, proto)
    assert s.sub("$SYS/broker/uptime", 0) == [0]
    values = latest(s, "$SYS/broker/uptime", 3.5)
    assert len(values) >= 3, f"sys_interval is 1 s, got {values} in 3.5 s"
    nums = [int(v.split()[0]) for v in values]
    assert nums == sorted(nums) and nums[-1] > nums[0], f"uptime increases: {values}"
    s.close()


@BOTH
def test_sys_clients_connected_counts(node, proto):
    s = Client(node, proto)
    assert s.sub("$SYS/broker/clients/connected", 0) == [0]
    m = s.recv(WAIT)
    while m.retain:  # a stored value may predate this client: wait for a live one
        m = s.recv(WAIT)
    before = int(m.payload)
    assert before >= 1, "the watching client itself is connected"
    extra = [Client(node, proto) for _ in range(3)]
    deadline, seen = time.time() + WAIT, []
    while time.time() < deadline:
        v = int(s.recv(WAIT).payload)
        seen.append(v)
        if v == before + 3:
            break
    assert seen and seen[-1] == before + 3, f"expected {before + 3} after 3 more clients, got {seen}"
    for c in extra:
        c.close()
    s.close()


@BOTH
def test_wildcards_do_not_match_sys(node, proto):
    all_ = Client(node, proto)
    assert all_.sub("#", 0) == [0]
    plus = Client(node, proto)
    assert plus.sub("+/broker/#", 0) == [0]
    sys_ = Client(node, proto)
    sys_.sub("$SYS/#", 0)
    p = Client(node, proto)
    p.pub("plain/topic", "x", 1)
    got_all = all_.drain(2.5)
    got_plus = plus.drain(0.1)
    assert [m.topic for m in got_all if m.topic.startswith("$")] == [], "'#' must not match $SYS topics"
    assert [m.topic for m in got_plus] == [], "'+/broker/#' must not match $SYS/broker/..."
    assert "plain/topic" in [m.topic for m in got_all], "the '#' subscription works at all"
    sys_topics = {m.topic for m in sys_.drain(0.1)}
    assert "$SYS/broker/uptime" in sys_topics, "$SYS was published meanwhile"
    for c in (all_, plus, sys_, p):
        c.close()
