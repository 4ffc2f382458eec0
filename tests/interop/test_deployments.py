"""Deployments with real processes: a `verge cloud` and a joined `verge
node`. The node's own rule (made through its API) survives a restart and
is reported as its own; a node that was off while the cloud made several
revisions takes only the newest one when it returns (the ones between are
superseded, never tried); a manual rollback to an older revision takes the
node back to it."""

import json
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from cloud_procs import api, procs, start_cloud, start_node, wait_for  # noqa: F401 (procs: fixture)


def call(url, token, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method=method,
                                 headers={"Authorization": f"Bearer {token}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        raw = r.read()
        return json.loads(raw) if raw else None


def test_an_offline_node_takes_the_newest_revision_keeps_its_own_rule_and_rolls_back(procs):
    workdir = tempfile.mkdtemp(prefix="verge-deployments-")
    cloud_url, admin = start_cloud(procs, workdir)
    created = call(cloud_url, admin, "POST", "/api/nodes", {"name": "edge-1"})
    node_id = created["node"]["id"]
    node, ports = start_node(procs, workdir, cloud_url, created["join_token"])
    node_url = f"http://127.0.0.1:{ports['http']}"
    token_file = Path(workdir, "node", "api-token")
    node_token = wait_for("the node's API token",
                          lambda: token_file.exists() and token_file.read_text().strip(), node)

    def agent():
        return api(node_url, node_token, "/api/cloud")

    def applied(revision, proc):
        return wait_for(f"revision {revision} applied", lambda: (
            (a := agent().get("attempt")) and a["version"] == revision
            and a["state"] == "applied" and a), proc, timeout=30)

    def desired():
        return api(cloud_url, admin, f"/api/nodes/{node_id}")["desired_version"]

    def rule(rule_id, topic):
        call(cloud_url, admin, "POST", "/api/rules",
             {"id": rule_id, "node_id": node_id, "sql": f'SELECT * FROM "{topic}"', "actions": []})

    rule("r1", "a/#")
    good = desired()
    applied(good, node)

    # The node's own rule, through its own API: reported as its own.
    call(node_url, node_token, "POST", "/api/rules",
         {"id": "mine", "sql": 'SELECT * FROM "local/#"', "actions": []})

    def reported_local():
        report = api(cloud_url, admin, f"/api/nodes/{node_id}").get("report") or {}
        return any(i["kind"] == "rule" and i["name"] == "mine" and i["source"] == "api"
                   for i in report.get("local", []))
    wait_for("the node's own rule in its report", reported_local, node, timeout=30)

    # Off while the cloud makes three revisions.
    node.stop()
    rule("r2", "b/#")
    rule("r3", "c/#")
    call(cloud_url, admin, "PATCH", f"/api/nodes/{node_id}", {"config": {"log": {"level": "info"}}})
    newest = desired()
    assert newest == good + 3, (good, newest)

    node2, _ = start_node(procs, workdir, cloud_url, None, ports=ports)
    attempt = applied(newest, node2)
    names = sorted((i["kind"], i["name"]) for i in attempt["items"])
    assert ("rule", "r2") in names and ("rule", "r3") in names and ("config", "log.level") in names, attempt
    # The cloud learns it from the next heartbeat.
    revisions = wait_for("the cloud did not record the newest revision applied", lambda: (
        (rs := {r["revision"]: r for r in api(cloud_url, admin, f"/api/nodes/{node_id}/revisions")})
        and rs[newest]["result"] == "applied" and rs), node2, timeout=30)
    for between in (good + 1, good + 2):
        assert revisions[between]["result"] == "superseded", revisions[between]
    # The node's log names no attempt of the revisions in between.
    for between in (good + 1, good + 2):
        assert f"version={between}" not in node2.output(), node2.output()[-3000:]

    # Its own rule came back with it, and is still reported as its own.
    assert api(node_url, node_token, "/api/rules/mine")["id"] == "mine"
    wait_for("the node's own rule reported after the restart", reported_local, node2, timeout=30)

    # A rollback to the revision before the node was off: r2, r3 and the
    # log level go; the node's own rule stays.
    back = call(cloud_url, admin, "POST", f"/api/nodes/{node_id}/rollback", {"revision": good})
    target = back["revision"]
    attempt = applied(target, node2)
    removed = {(i["kind"], i["name"]) for i in attempt["items"] if i["result"] == "removed"}
    assert {("rule", "r2"), ("rule", "r3"), ("config", "log.level")} <= removed, attempt
    for gone in ("r2", "r3"):
        try:
            api(node_url, node_token, f"/api/rules/{gone}")
            raise AssertionError(f"rule {gone} still runs after the rollback")
        except urllib.error.HTTPError as e:
            assert e.code == 404
    assert api(node_url, node_token, "/api/rules/r1")["id"] == "r1"
    assert api(node_url, node_token, "/api/rules/mine")["id"] == "mine"
