"""Onboarding a second node on a machine that already runs one: the join
command the console gives, pasted where its ports are taken, fails before
it spends the one-time token (the listeners are bound and the data dir
checked first), names the flags that pick other ports and data dir, and
the same token then works with those flags (`--port-offset`,
`--data-dir`)."""

import json
import socket
import urllib.request

from cloud_procs import Proc, api, procs, start_cloud, wait_for  # noqa: F401 (procs: fixture)
from verge_interop import free_port, port_open


def create_node(url, token, name):
    req = urllib.request.Request(url + "/api/nodes", data=json.dumps({"name": name}).encode(),
                                 method="POST", headers={"Authorization": f"Bearer {token}",
                                                         "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def is_free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def ports_with_free_offset(offset):
    """Free ports for the node's MQTT TCP, WebSocket and HTTP listeners whose
    ports + `offset` are free too."""
    for _ in range(50):
        ports = {k: free_port() for k in ("tcp", "ws", "http")}
        if len(set(ports.values())) == 3 and all(is_free(p + offset) for p in ports.values()):
            return ports
    raise AssertionError("no free ports")


def node_args(cloud_url, join_token, ports, extra):
    return ["node", "--cloud", cloud_url, "--join", join_token,
            "--set", f"broker.listeners.tcp.bind=127.0.0.1:{ports['tcp']}",
            "--set", f"broker.listeners.ws.bind=127.0.0.1:{ports['ws']}",
            "--set", f"http.bind=127.0.0.1:{ports['http']}", *extra]


def test_a_taken_port_costs_no_join_token_and_the_offered_flags_work(procs, tmp_path):
    url, admin = start_cloud(procs, tmp_path)
    created = create_node(url, admin, "edge2")
    join = created["join_token"]
    offset = 7
    ports = ports_with_free_offset(offset)
    data_dir = tmp_path / "edge2"

    # Another process (say `verge up`'s node) holds the MQTT port.
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", ports["tcp"]))
        taken.listen()
        first = Proc("node-clash", node_args(url, join, ports, ["--data-dir", str(data_dir)]), tmp_path)
        procs.append(first)
        assert first.proc.wait(timeout=30) != 0, first.output()
    out = first.output()
    assert "Address already in use" in out, out
    assert "--port-offset" in out and "--data-dir" in out, out
    assert "joined" not in out, out
    assert not (data_dir / "cloud" / "credentials.json").exists()
    assert api(url, admin, "/api/nodes/edge2")["joined_ms"] is None, "the token was spent"

    # A data dir the user cannot write is refused before the join too.
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    second = Proc("node-data-dir", node_args(url, join, ports, ["--data-dir", str(blocker / "sub")]), tmp_path)
    procs.append(second)
    assert second.proc.wait(timeout=30) != 0, second.output()
    assert "--data-dir DIR" in second.output(), second.output()
    assert api(url, admin, "/api/nodes/edge2")["joined_ms"] is None, "the token was spent"

    # The same token with the offered flags: every port shifted.
    node = Proc("node", node_args(url, join, ports, ["--data-dir", str(data_dir), "--port-offset", str(offset)]),
                tmp_path)
    procs.append(node)
    wait_for("the node did not listen on its shifted MQTT port",
             lambda: port_open(ports["tcp"] + offset), node)
    wait_for("the node did not join", lambda: api(url, admin, "/api/nodes/edge2")["joined_ms"], node)
    out = wait_for("the node printed no banner", lambda: "press Ctrl-C" in node.output() and node.output(), node)
    assert f"mqtt://127.0.0.1:{ports['tcp'] + offset}" in out, out
    assert f"http://127.0.0.1:{ports['http'] + offset}/api" in out, out
    assert f"data dir             {data_dir}" in out, out
    assert "no client can connect" not in out, out
    assert "the cloud center supplies this node's devices" in out, out
    assert (data_dir / "cloud" / "credentials.json").exists()
