"""Deployments over several real nodes: one `verge cloud` (on SQLite, and
on PostgreSQL when VERGE_TEST_POSTGRES_URL is set) and three `verge node
--cloud` processes with a label.

- A staged rollout of a good component version goes canary first, then
  the rest, and completes with the version healthy on every node.
- A rollout of a version that never becomes healthy stops after its
  canary: the canary node rolls the revision back (it keeps running the
  good version), the rollout pauses with the reason, the other nodes never
  get the bad version; cancelling ends it.
- Drift: an item made through one node's own API is reported as that
  node's own (`GET /api/deployments`: `differs`), still after the node
  restarts, and the other nodes do not differ; a cloud rule marked
  local-only on a node stays the node's when a revision changes it.
"""

import tempfile
import time
import urllib.error
from pathlib import Path

import pytest

from cloud_procs import api, procs, scratch_database, start_cloud, start_node, wait_for  # noqa: F401 (procs: fixture)
from test_components_cloud import archive, cloud_call



@pytest.fixture(params=["sqlite", "postgres"])
def database(request):
    """`--set` arguments giving the cloud a fresh database of the kind."""
    if request.param == "sqlite":
        yield []
        return
    with scratch_database("verge_fleet") as url:
        yield ["--set", f"cloud.database={url}"]


def until(what, check, timeout=45):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    pytest.fail(what)


def test_rollout_pause_and_drift_over_three_real_nodes(procs, database):
    workdir = tempfile.mkdtemp(prefix="verge-fleet-")
    cloud_url, admin = start_cloud(procs, workdir, extra=database)

    def call(method, path, body=None, content_type="application/json"):
        return cloud_call(cloud_url, admin, method, path, body, content_type)

    nodes = {}
    for name in ("f1", "f2", "f3"):
        created = call("POST", "/api/nodes", {"name": name, "labels": {"fleet": "test"}})
        node_dir = Path(workdir, name)
        node_dir.mkdir()
        proc, ports = start_node(procs, str(node_dir), cloud_url, created["join_token"])
        token = wait_for(f"{name}'s API token", lambda d=node_dir: (
            (d / "node" / "api-token").exists() and (d / "node" / "api-token").read_text().strip()), proc)
        nodes[name] = {"id": created["node"]["id"], "proc": proc, "ports": ports, "token": token,
                       "dir": node_dir}

    def node(name):
        return api(cloud_url, admin, f"/api/nodes/{nodes[name]['id']}")

    def component(name):
        report = node(name).get("report") or {}
        return next((c for c in report.get("components", []) if c.get("name") == "app"), None)

    def spec(v, body, extra=None):
        s = {"name": "app", "version": v, "command": "python3", "args": ["app.py"],
             "backoff_min": "100ms", "backoff_max": "500ms", "max_restarts": 50, "update_grace": "1s"}
        s.update(extra or {})
        call("POST", "/api/components", s)
        call("PUT", f"/api/components/app/versions/{v}/artifact", archive(v, body), "application/gzip")

    spec("1.0.0", "while True: time.sleep(1)")
    spec("2.0.0", "sys.exit(3)", {"update_grace": "2s"})

    def rollout(v):
        return call("POST", "/api/rollouts", {"component": "app", "version": v,
                                              "selector": {"fleet": "test"}, "canary": 1,
                                              "max_failure_rate": 0})

    def rollout_state(rid, states):
        return until(f"rollout {rid} never reached {states}", lambda: (
            (r := api(cloud_url, admin, f"/api/rollouts/{rid}"))["state"] in states and r), timeout=90)

    # 1. A good version: canary, then the rest; healthy everywhere.
    good = rollout("1.0.0")
    assert [len(s["nodes"]) for s in good["stages"]] == [1, 2], good
    done = rollout_state(good["id"], ("completed", "paused"))
    assert done["state"] == "completed", done
    for name in nodes:
        until(f"app 1.0.0 not healthy on {name}", lambda n=name: (
            (c := component(n)) and c["version"] == "1.0.0" and c["state"] == "healthy"))
        assert node(name)["deployment"]["state"] == "in_sync", node(name)["deployment"]

    # 2. A version that never becomes healthy: the canary rolls it back and
    # the rollout pauses; the others never get it.
    bad = rollout("2.0.0")
    canary = bad["stages"][0]["nodes"][0]["node_id"]
    canary_name = next(n for n, v in nodes.items() if v["id"] == canary)
    paused = rollout_state(bad["id"], ("paused", "completed"))
    assert paused["state"] == "paused", paused
    assert "stage 1" in paused["reason"], paused
    assert paused["stages"][0]["nodes"][0]["result"] == "rolled_back", paused
    assert paused["stages"][1]["state"] == "pending", paused
    dep = until("the canary's deployment is not failed", lambda: (
        (d := node(canary_name)["deployment"])["state"] == "failed" and d))
    assert "app" in (dep["error"] or ""), dep
    until("the canary does not run 1.0.0 again", lambda: (
        (c := component(canary_name)) and c["version"] == "1.0.0" and c["state"] == "healthy"))
    for name in nodes:
        if name != canary_name:
            assert component(name)["version"] == "1.0.0"
            assert node(name)["deployment"]["state"] == "in_sync"
    cancelled = call("POST", f"/api/rollouts/{bad['id']}/cancel")
    assert cancelled["state"] == "cancelled", cancelled
    # The stage-2 nodes still run the good version after the cancel.
    for name in nodes:
        if name != canary_name:
            assert component(name)["version"] == "1.0.0"

    # 3. Drift on one node: its own rule, through its own API.
    f2 = nodes["f2"]
    f2_url = f"http://127.0.0.1:{f2['ports']['http']}"
    cloud_call(f2_url, f2["token"], "POST", "/api/rules",
               {"id": "mine", "sql": 'SELECT * FROM "local/#"', "actions": []})

    def deployment_of(name):
        return next(d for d in api(cloud_url, admin, "/api/deployments") if d["node_id"] == nodes[name]["id"])

    def differs_with_mine():
        d = deployment_of("f2")
        return d["differs"] and any(i["name"] == "mine" and i["source"] == "api" for i in d["local"]) and d
    until("f2 is not reported as differing with its own rule", differs_with_mine)
    others = [n for n in nodes if n != "f2"]
    for name in others:
        assert not deployment_of(name)["differs"], deployment_of(name)

    # After a restart f2 still runs and reports it.
    f2["proc"].stop()
    restarted_ms = time.time() * 1000
    proc, _ = start_node(procs, str(f2["dir"]), cloud_url, None, ports=f2["ports"])
    f2["proc"] = proc
    until("f2 did not report after its restart", lambda: (
        (n := node("f2"))["last_seen_ms"] > restarted_ms
        and n["report"]["uptime_s"] * 1000 <= time.time() * 1000 - restarted_ms + 1000))
    until("f2's own rule is not reported after its restart", differs_with_mine)

    # A cloud rule marked local-only on f2 stays f2's when a revision
    # changes it.
    call("POST", "/api/rules", {"id": "r-f2", "node_id": f2["id"], "sql": 'SELECT * FROM "a/#"',
                                "actions": []})
    until("f2 does not run r-f2", lambda: node("f2")["deployment"]["state"] == "in_sync" and any(
        r.get("id") == "r-f2" for r in (node("f2").get("report") or {}).get("rules", [])))
    cloud_call(f2_url, f2["token"], "PUT", "/api/local-only/rule/r-f2")
    call("PUT", "/api/rules/r-f2", {"id": "r-f2", "node_id": f2["id"], "sql": 'SELECT * FROM "b/#"',
                                    "actions": []})
    desired = node("f2")["desired_version"]

    def kept():
        n = node("f2")
        attempt = n.get("last_attempt") or {}
        return (n["applied_version"] == desired and attempt.get("version") == desired
                and any(i["name"] == "r-f2" and i["result"] == "kept_local" for i in attempt["items"]))
    until("the revision changing r-f2 did not apply with r-f2 kept local", kept)
    rules = cloud_call(f2_url, f2["token"], "GET", "/api/rules/r-f2")
    assert rules["sql"] == 'SELECT * FROM "a/#"', rules
    d = deployment_of("f2")
    assert d["state"] == "in_sync" and any(i["name"] == "r-f2" and i.get("local_only") for i in d["local"]), d
    # The node's API may change it now (the agent's tests cover quiet polls
    # leaving it alone).
    cloud_call(f2_url, f2["token"], "PUT", "/api/rules/r-f2",
               {"id": "r-f2", "sql": 'SELECT * FROM "c/#"', "actions": []})
    assert cloud_call(f2_url, f2["token"], "GET", "/api/rules/r-f2")["sql"] == 'SELECT * FROM "c/#"'
    assert node("f2")["deployment"]["state"] == "in_sync"
    try:
        cloud_call(f2_url, f2["token"], "DELETE", "/api/local-only/rule/nothing")
        pytest.fail("unmarking what is not marked was accepted")
    except urllib.error.HTTPError as e:
        assert e.code == 404
