"""Deployed forwards with real processes: a `verge cloud` and a joined
`verge node`, a paho device of the cloud's on the node. A revision whose
`config` sets `bridge.forwards` makes the node queue the new filter's
messages and no longer the default forwards'; a lane the node's queue does
not have fails the revision, which rolls back and keeps the forwards; a
revision without the key brings the node's own forwards back."""

import tempfile
import types
from pathlib import Path

from cloud_procs import api, procs, start_cloud, start_node, wait_for  # noqa: F401 (procs: fixture)
from test_deployments import call
from verge_interop import V5, Client


def test_deployed_forwards_replace_the_nodes_and_go_back(procs):
    workdir = tempfile.mkdtemp(prefix="verge-forwards-")
    cloud_url, admin = start_cloud(procs, workdir)
    created = call(cloud_url, admin, "POST", "/api/nodes", {"name": "edge-f"})
    node_id = created["node"]["id"]
    node, ports = start_node(procs, workdir, cloud_url, created["join_token"])
    node_url = f"http://127.0.0.1:{ports['http']}"
    token_file = Path(workdir, "node", "api-token")
    node_token = wait_for("the node's API token",
                          lambda: token_file.exists() and token_file.read_text().strip(), node)

    def attempt_of(revision, state):
        return wait_for(f"revision {revision} {state}", lambda: (
            (a := api(node_url, node_token, "/api/cloud").get("attempt"))
            and a["version"] == revision and a["state"] == state and a), node, timeout=30)

    def desired():
        return api(cloud_url, admin, f"/api/nodes/{node_id}")["desired_version"]

    def forwards_item(attempt):
        return next(i for i in attempt["items"] if (i["kind"], i["name"]) == ("config", "bridge.forwards"))

    device = call(cloud_url, admin, "POST", "/api/devices", {"name": "s1", "node_id": node_id})
    attempt_of(desired(), "applied")
    client = Client(types.SimpleNamespace(tcp=ports["tcp"], ws=ports["ws"]), V5,
                    user=("s1", device["secret"]))

    def queued(topic):
        """Publish at QoS 1; whether a forward queued it (a forward's
        PUBACK follows its append, so the count is final by then)."""
        before = api(node_url, node_token, "/api/bridge")["link"]["forwarded"]
        assert client.pub(topic, b"x", qos=1) == 0, topic
        return api(node_url, node_token, "/api/bridge")["link"]["forwarded"] - before

    # The node's own forwards (a managed node's defaults).
    assert queued("devices/s1/telemetry") == 1
    assert queued("devices/s1/custom/a") == 0

    call(cloud_url, admin, "PATCH", f"/api/nodes/{node_id}",
         {"config": {"bridge": {"forwards": [{"filter": "devices/+/custom/#", "lane": "alarms"}]}}})
    deployed = desired()
    assert forwards_item(attempt_of(deployed, "applied"))["result"] == "applied"
    assert queued("devices/s1/custom/a") == 1
    assert queued("devices/s1/telemetry") == 0
    lanes = {lane["name"]: lane for lane in api(node_url, node_token, "/api/bridge")["queue"]["lanes"]}
    assert lanes["alarms"]["appended"] >= 1, lanes

    # A lane the node's queue does not have: rolled back, forwards kept.
    call(cloud_url, admin, "PATCH", f"/api/nodes/{node_id}",
         {"config": {"bridge": {"forwards": [{"filter": "devices/+/other/#", "lane": "bulk"}]}}})
    failed = forwards_item(attempt_of(desired(), "rolled_back"))
    assert failed["result"] == "failed" and "`bulk`" in failed["error"], failed
    assert queued("devices/s1/custom/b") == 1
    assert queued("devices/s1/other/a") == 0

    # Left out: the node's own forwards again.
    call(cloud_url, admin, "PATCH", f"/api/nodes/{node_id}", {"config": {}})
    assert forwards_item(attempt_of(desired(), "applied"))["result"] == "removed"
    assert queued("devices/s1/telemetry") == 1
    assert queued("devices/s1/custom/c") == 0
