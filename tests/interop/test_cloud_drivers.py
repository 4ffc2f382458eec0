"""A protocol driver deployed from the cloud to a real node, against a
third-party Modbus server: a `verge cloud`, a joined `verge node`, and a
Python `pymodbus` TCP server. The driver set through the cloud's API runs
on the node (the node's heartbeat shows it connected and reading), the
node's own API refuses to change it, a changed point table reaches the
node as a new revision, and removing it from the cloud stops it."""

import tempfile
import urllib.error
from pathlib import Path

import pytest

pytest.importorskip("pymodbus")

from cloud_procs import api, procs, start_cloud, start_node, wait_for  # noqa: E402, F401 (procs: fixture)
from test_components_cloud import cloud_call  # noqa: E402
from test_console import console_page  # noqa: E402
from test_modbus import ModbusServer  # noqa: E402

try:
    from playwright.sync_api import expect
except ImportError:
    expect = None


def console_shows_connected(url, admin, node_id):
    """The node's page shows the driver as the node reports it."""
    with console_page(url, admin, timeout_ms=15_000) as page:
        page.goto(url + f"/#/nodes/{node_id}")
        status = page.locator('[data-testid="node-driver-row"][data-name="plc"]').get_by_test_id("node-driver-status")
        expect(status).to_have_attribute("data-connected", "true")
        expect(status).to_contain_text("connected")
        expect(status).to_contain_text("reads")


def driver(port, points):
    return {"protocol": "modbus-tcp", "host": "127.0.0.1", "port": port, "timeout": "1s",
            "retry": {"initial": "200ms", "max": "1s"},
            "devices": [{"name": "press", "unit": 1, "poll": "100ms", "points": points}]}


def test_a_cloud_driver_runs_on_the_node_changes_and_goes(procs):
    server = ModbusServer()
    try:
        workdir = tempfile.mkdtemp(prefix="verge-cloud-drivers-")
        cloud_url, admin = start_cloud(procs, workdir)
        created = cloud_call(cloud_url, admin, "POST", "/api/nodes", {"name": "edge-d"})
        node_id = created["node"]["id"]
        node, ports = start_node(procs, workdir, cloud_url, created["join_token"])
        token = wait_for("the node's API token", lambda: (
            Path(workdir, "node", "api-token").exists()
            and Path(workdir, "node", "api-token").read_text().strip()), node)
        node_url = f"http://127.0.0.1:{ports['http']}"

        def cloud(method, path, body=None):
            return cloud_call(cloud_url, admin, method, path, body)

        def reported(pred):
            def check():
                n = api(cloud_url, admin, f"/api/nodes/{node_id}")
                d = next((x for x in (n.get("report") or {}).get("drivers", []) if x["name"] == "plc"), None)
                return pred(n, d) and (n, d)
            return wait_for("the node's heartbeat does not show the driver as expected", check, node, timeout=30)

        counter = [{"name": "counter", "address": "hr:0"}]
        cloud("PUT", f"/api/nodes/{node_id}/drivers/plc", driver(server.port, counter))
        n, d = reported(lambda n, d: d and d["connected"] and d["reads"] > 0
                        and n["deployment"]["state"] == "in_sync")
        local = api(node_url, token, "/api/drivers/plc")
        assert [p["name"] for p in local["config"]["devices"][0]["points"]] == ["counter"], local
        console_shows_connected(cloud_url, admin, node_id)

        # The node's own API may not change it.
        try:
            cloud_call(node_url, token, "DELETE", "/api/drivers/plc")
            pytest.fail("the node's API deleted a driver the cloud deployed")
        except urllib.error.HTTPError as e:
            assert e.code == 409 and b"managed_by_cloud" in e.read()

        # A changed point table is a new revision the node applies.
        flow = {"name": "flow", "address": "hr:1", "type": "f32"}
        before = n["desired_version"]
        cloud("PUT", f"/api/nodes/{node_id}/drivers/plc", driver(server.port, [*counter, flow]))
        n, _ = reported(lambda n, d: n["desired_version"] > before and n["deployment"]["state"] == "in_sync")
        local = api(node_url, token, "/api/drivers/plc")
        assert [p["name"] for p in local["config"]["devices"][0]["points"]] == ["counter", "flow"], local
        diff = api(cloud_url, admin, f"/api/nodes/{node_id}/revisions/{before}/diff/{n['desired_version']}")
        assert any("plc" in str(v) for v in diff.get("drivers", {}).values()), diff

        # Removed in the cloud: gone from the node.
        cloud("DELETE", f"/api/nodes/{node_id}/drivers/plc")
        reported(lambda n, d: d is None and n["deployment"]["state"] == "in_sync")
        try:
            api(node_url, token, "/api/drivers/plc")
            pytest.fail("the driver still runs on the node")
        except urllib.error.HTTPError as e:
            assert e.code == 404
    finally:
        server.stop()
