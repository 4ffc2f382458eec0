"""Components deployed through the cloud, against the real binary: a
`verge cloud`, a node joined to it with `verge node --cloud --join`, and a
Python process component whose files are uploaded to the cloud as a
.tar.gz. The node fetches and runs it, a new version replaces it, a version
that fails is rolled back, an unassigned one is stopped and removed, and
after a restart without the cloud the node runs its last components again.
"""

import io
import json
import os
import tarfile
import tempfile
import urllib.request

from cloud_procs import api, procs, start_cloud, start_node, wait_for  # noqa: F401 (procs: fixture)

APP = """\
import os, sys, time
print("{version} up as", os.environ["VERGE_COMPONENT_NAME"], flush=True)
{body}
"""


def archive(version, body):
    """A .tar.gz holding app.py."""
    data = APP.format(version=version, body=body).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("app.py")
        info.size = len(data)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def cloud_call(url, token, method, path, body=None, content_type="application/json"):
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", content_type)
    with urllib.request.urlopen(req, timeout=10) as r:
        raw = r.read()
        return json.loads(raw) if raw else None


def node_components(ports, token):
    req = urllib.request.Request(f"http://127.0.0.1:{ports['http']}/api/components")
    req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=5) as r:
        return {c["name"]: c for c in json.loads(r.read())}


def node_agent(ports, token):
    """The node's view of its cloud link: applied revision, last attempt."""
    req = urllib.request.Request(f"http://127.0.0.1:{ports['http']}/api/cloud")
    req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def pid_alive(pid):
    return os.path.exists(f"/proc/{pid}")


def test_a_component_is_deployed_updated_rolled_back_removed_and_runs_offline(procs):
    workdir = tempfile.mkdtemp(prefix="verge-components-")
    cloud_url, admin = start_cloud(procs, workdir)
    created = cloud_call(cloud_url, admin, "POST", "/api/nodes", {"name": "edge-1"})
    node_id = created["node"]["id"]
    node, ports = start_node(procs, workdir, cloud_url, created["join_token"])
    node_token = wait_for("the node's API token", lambda: _read(f"{workdir}/node/api-token"), node)

    def version(v, body, extra=None):
        spec = {"name": "app", "version": v, "command": "python3", "args": ["app.py"],
                "backoff_min": "100ms", "backoff_max": "500ms", "max_restarts": 50,
                # How long a new version must stay healthy before its
                # revision counts as applied.
                "update_grace": "1s"}
        spec.update(extra or {})
        cloud_call(cloud_url, admin, "POST", "/api/components", spec)
        cloud_call(cloud_url, admin, "PUT", f"/api/components/app/versions/{v}/artifact",
                   archive(v, body), "application/gzip")

    def assign(v):
        cloud_call(cloud_url, admin, "PUT", f"/api/nodes/{node_id}/components/app", {"version": v})

    def running(v, proc=None):
        def check():
            c = node_components(ports, node_token).get("app")
            return c if c and c["version"] == v and c["state"] == "healthy" and c["pid"] else None
        return wait_for(f"app {v} healthy on the node", check, proc or node, timeout=30)

    version("1.0.0", "while True: time.sleep(1)")
    version("2.0.0", "while True: time.sleep(1)")
    version("3.0.0", "sys.exit(3)", {"update_grace": "3s"})

    # Assigned: fetched, unpacked and started; the cloud shows its state.
    assign("1.0.0")
    v1 = running("1.0.0")
    assert v1["source"] == "cloud", v1
    assert os.path.isfile(f"{workdir}/node/components/app/1.0.0/app.py")

    def cloud_sees(pred):
        def check():
            rows = api(cloud_url, admin, f"/api/nodes/{node_id}/components")
            rows = rows.get("components", rows) if isinstance(rows, dict) else rows
            return next((r for r in rows if pred(r)), None)
        return wait_for("the cloud's view of the node's component", check, node, timeout=30)

    def status(r):
        return (r.get("status") or {}) if r.get("name") == "app" else {}

    seen = cloud_sees(lambda r: status(r).get("state") == "healthy"
                      and status(r).get("version") == "1.0.0"
                      and any("1.0.0 up as app" in line["line"] for line in status(r).get("log_tail", [])))
    assert status(seen)["source"] == "cloud", seen
    # Each state change on the way reached the cloud, though they came
    # faster than one report a second.
    states = [t["state"] for t in status(seen).get("history", [])]
    assert states == ["installing", "starting", "healthy"], states

    # A new version replaces the old process.
    assign("2.0.0")
    v2 = running("2.0.0")
    assert not pid_alive(v1["pid"]), "version 1's process is gone"

    # A version that exits at once fails its revision: the node returns to
    # the revision before (version 2 runs again) and says why.
    good = wait_for("version 2's revision applied", lambda: (
        (a := node_agent(ports, node_token).get("attempt"))
        and a["state"] == "applied" and a["version"]), node, timeout=30)
    assign("3.0.0")
    attempt = wait_for("the revision with version 3 rolled back", lambda: (
        (a := node_agent(ports, node_token).get("attempt"))
        and a["version"] > good and a["state"] == "rolled_back" and a), node, timeout=60)
    assert attempt["rolled_back_to"] == good, attempt
    failed = [i for i in attempt["items"] if i["result"] == "failed"]
    assert [i["name"] for i in failed] == ["app"], attempt
    assert "version 3.0.0" in failed[0]["error"], attempt
    back = running("2.0.0")
    assert node_agent(ports, node_token)["applied_version"] == good

    def cloud_has_the_errors():
        row = cloud_call(cloud_url, admin, "GET", f"/api/nodes/{node_id}")
        row = row.get("node", row)
        return any("component `app`" in e and "3.0.0" in e for e in row.get("apply_errors") or [])
    wait_for("the failure in the cloud", cloud_has_the_errors, node, timeout=30)

    # Unassigned: stopped and removed from the node.
    running_pid = back["pid"]
    cloud_call(cloud_url, admin, "DELETE", f"/api/nodes/{node_id}/components/app")
    wait_for("app removed from the node", lambda: "app" not in node_components(ports, node_token), node,
             timeout=30)
    assert not pid_alive(running_pid), "the removed component's process is gone"

    # Version 2 again, then the cloud goes away and the node restarts:
    # the cached state's component runs again from its files on disk.
    assign("2.0.0")
    running("2.0.0")
    # The revision is the node's (cached) once its grace has passed.
    wait_for("the revision with version 2 applied", lambda: (
        (a := node_agent(ports, node_token).get("attempt"))
        and a["state"] == "applied" and a["version"] == node_agent(ports, node_token)["applied_version"]
        and any(i["name"] == "app" for i in a["items"])), node, timeout=30)
    for p in list(procs):
        if p.name in ("cloud", "node"):
            p.stop()
    node2, ports2 = start_node(procs, workdir, cloud_url, None, ports=ports)
    again = running("2.0.0", node2)
    assert again["pid"] != v2["pid"]
    node2.stop()
    assert not pid_alive(again["pid"]), "the node stops its components when it stops"


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip() or None
    except OSError:
        return None
