"""Two real `verge cloud` replicas on one PostgreSQL database: a node's
long poll held by replica B is answered when the node's desired state is
changed through replica A (PostgreSQL NOTIFY; B re-checks on its own only
every 10 minutes), the replicas list each other, exactly one leads, and
when the leader is killed -9 the other takes over; a second process given
a running replica's id refuses to start.

Needs VERGE_TEST_POSTGRES_URL (a database on the server is made for the
test and dropped after it) and psql."""

import json
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from cloud_procs import Proc, database, procs, start_cloud, wait_for  # noqa: F401 (fixtures)
from verge_interop import free_port, port_open


def call(url, auth, method, path, body=None, timeout=10):
    """(status, JSON body or None) of one request with `Authorization: auth`."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method=method,
                                 headers={"Authorization": auth, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            return r.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, (json.loads(raw) if raw else None)


def start_replica(procs, workdir, name, db_url):
    """A second `verge cloud` on `db_url` (it prints no admin token: the
    first replica made it)."""
    http, mqtt = free_port(), free_port()
    Path(workdir).mkdir(parents=True, exist_ok=True)
    cloud = Proc(name, [
        "cloud",
        "--set", f"http.bind=127.0.0.1:{http}",
        "--set", f"mqtt.bind=127.0.0.1:{mqtt}",
        "--set", f"cloud.data_dir={workdir}/cloud",
        "--set", f"cloud.database={db_url}",
        "--set", "cloud.long_poll_recheck=10m",
    ], workdir)
    procs.append(cloud)
    wait_for(f"{name} did not listen on 127.0.0.1:{http}", lambda: port_open(http), cloud)
    return cloud, f"http://127.0.0.1:{http}"


def two_replicas(procs, database, prefix, a_extra=()):
    """Replica A (`start_cloud`, with `a_extra`) and replica B on
    `database`: (url_a, admin token, A's Proc, B's Proc, url_b)."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    (workdir / "a").mkdir()
    url_a, admin = start_cloud(procs, str(workdir / "a"), extra=(
        "--set", f"cloud.database={database}", "--set", "cloud.long_poll_recheck=10m", *a_extra))
    cloud_a = procs[-1]
    cloud_b, url_b = start_replica(procs, str(workdir / "b"), "cloud-b", database)
    return url_a, admin, cloud_a, cloud_b, url_b


def test_two_replicas_share_long_polls_and_leadership(database, procs):
    url_a, admin, cloud_a, cloud_b, url_b = two_replicas(procs, database, "verge-replicas-")
    bearer = f"Bearer {admin}"

    # Both are listed, by either; exactly one leads.
    def replicas(url):
        status, body = call(url, bearer, "GET", "/api/cloud/replicas")
        assert status == 200, body
        return body

    listed = wait_for("both replicas listed, one leading", lambda: (
        (r := replicas(url_b)) and len(r) == 2 and all(x["alive"] for x in r)
        and sum(x["leader"] for x in r) == 1 and r), cloud_b, timeout=30)
    assert sorted(x["this"] for x in listed) == [False, True], listed

    # A node joined through A; its long poll held by B.
    status, created = call(url_a, bearer, "POST", "/api/nodes", {"name": "edge-1"})
    assert status == 201, created
    status, joined = call(url_a, "", "POST", "/api/agent/join",
                          {"token": created["join_token"], "hostname": "h"})
    assert status == 200, joined
    node = f"Bearer {joined['node_id']}.{joined['secret']}"
    status, state = call(url_b, node, "GET", "/api/agent/desired?version=0&wait_ms=0")
    assert status == 200, state
    version = state["version"]
    answer = {}

    def hold():
        answer["reply"] = call(url_b, node, "GET", f"/api/agent/desired?version={version}&wait_ms=60000",
                               timeout=90)
        answer["at"] = time.time()

    def metric(url, name):
        with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        return None

    # B listens for changes, and holds the poll before the change is made.
    wait_for("B listens", lambda: metric(url_b, "verge_cloud_wake_listening") == 1, cloud_b)
    poller = threading.Thread(target=hold)
    poller.start()
    wait_for("B holds the poll", lambda: metric(url_b, "verge_cloud_long_poll_nodes") == 1, cloud_b)
    status, body = call(url_a, bearer, "PATCH", f"/api/nodes/{joined['node_id']}",
                        {"config": {"log": {"level": "debug"}}})
    assert status == 200, body
    changed = time.time()
    # Answered long before the poll's 60 s wait (and B's 10 min re-check):
    # only A's change, through PostgreSQL, can have woken it.
    poller.join(timeout=40)
    assert not poller.is_alive(), "the long poll on B was not woken by the change on A"
    status, state = answer["reply"]
    assert status == 200, state
    assert state["version"] == version + 1, state
    assert state["config"]["log"]["level"] == "debug", state
    assert answer["at"] - changed < 40

    # The leader killed -9: the other replica takes over.
    leader = next(x for x in listed if x["leader"])
    killed, survivor, survivor_url = (
        (cloud_b, cloud_a, url_a) if leader["this"] else (cloud_a, cloud_b, url_b))
    killed.proc.kill()
    killed.proc.wait()
    wait_for("the surviving replica leads", lambda: any(
        x["this"] and x["leader"] for x in replicas(survivor_url)), survivor, timeout=60)


def test_a_second_process_with_a_replicas_id_refuses_to_start(database, procs):
    """Two live `verge cloud` processes given one `cloud.replica_id`
    would take each other's broker session: the second stops at start with
    an error naming the key, and the first goes on."""
    workdir = Path(tempfile.mkdtemp(prefix="verge-replica-twin-"))
    (workdir / "a").mkdir()
    url_a, admin = start_cloud(procs, str(workdir / "a"), extra=(
        "--set", f"cloud.database={database}", "--set", "cloud.replica_id=twin"))
    (workdir / "b").mkdir()
    twin = Proc("cloud-twin", [
        "cloud",
        "--set", f"http.bind=127.0.0.1:{free_port()}",
        "--set", f"mqtt.bind=127.0.0.1:{free_port()}",
        "--set", f"cloud.data_dir={workdir}/b/cloud",
        "--set", f"cloud.database={database}",
        "--set", "cloud.replica_id=twin",
    ], str(workdir / "b"))
    procs.append(twin)
    code = twin.proc.wait(timeout=60)
    assert code != 0, twin.output()
    assert "cloud.replica_id: another live process runs as replica `twin`" in twin.output(), twin.output()
    status, listed = call(url_a, f"Bearer {admin}", "GET", "/api/cloud/replicas")
    assert status == 200, listed
    assert [(x["id"], x["this"], x["alive"]) for x in listed] == [("twin", True, True)], listed
