"""`verge bench fleet`, small: the simulator starts real `verge cloud`
processes, joins every simulated node, and every telemetry message the
cloud acknowledged is stored exactly once. One replica on SQLite; two
replicas on one PostgreSQL database (when VERGE_TEST_POSTGRES_URL is set),
once with the second replica killed -9 mid-run. No timing is asserted.
"""

import json
import os
import subprocess
import uuid

import pytest

from verge_interop import verge_bin, verge_env

PG_URL = os.environ.get("VERGE_TEST_POSTGRES_URL")


@pytest.fixture
def pg_database():
    """A fresh PostgreSQL database URL, dropped afterwards."""
    if not PG_URL:
        pytest.skip("VERGE_TEST_POSTGRES_URL is not set")
    name = f"verge_fleetbench_{uuid.uuid4().hex[:12]}"
    subprocess.run(["psql", PG_URL, "-q", "-v", "ON_ERROR_STOP=1", "-c", f"CREATE DATABASE {name}"],
                   check=True, capture_output=True)
    yield f"{PG_URL.rsplit('/', 1)[0]}/{name}"
    subprocess.run(["psql", PG_URL, "-q", "-c", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"],
                   capture_output=True)


def fleet(*args):
    """Run the bench with `args` and return its JSON report."""
    done = subprocess.run(
        [verge_bin(), "bench", "fleet", "--nodes", "20", "--duration", "4s", "--rate", "5",
         "--heartbeat", "1s", "--sample", "5", "--json", *args],
        env=verge_env(), capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, f"bench failed:\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout)


def check_exactly_once(r):
    assert r["joined"] == 20 and r["join_errors"] == 0, r
    assert r["connected"] == 20, r
    assert r["published"] > 0 and r["acknowledged"] > 0, r
    assert r["missing"] == 0, f"acknowledged messages not stored: {r}"
    assert r["duplicates"] == 0, f"messages stored twice: {r}"
    assert r["read_errors"] == 0, r
    # Every stored message was acknowledged, or its PUBACK died with its replica.
    assert r["stored"] == r["acknowledged"] + r["unacked_stored"], r


def check_all_timed(r):
    """Heartbeats, desired-state changes and commands all arrived."""
    assert r["heartbeat"]["count"] > 0 and r["heartbeat_errors"] == 0, r
    assert r["long_poll_change"]["count"] > 0, r
    assert r["command"]["count"] > 0, r


def test_fleet_on_sqlite_stores_every_acknowledged_message_once():
    r = fleet()
    check_exactly_once(r)
    check_all_timed(r)
    assert r["stored"] == r["acknowledged"], r
    assert r["refused"] == 0 and r["mqtt_sessions_ended"] == 0, r
    assert r["per_replica"][0]["cpu_s"] > 0 and r["per_replica"][0]["peak_rss_bytes"] > 0, r


def test_fleet_on_two_postgres_replicas(pg_database):
    r = fleet("--replicas", "2", "--database", pg_database)
    check_exactly_once(r)
    check_all_timed(r)
    assert [p["nodes"] for p in r["per_replica"]] == [10, 10], r


def test_fleet_with_a_replica_killed_loses_no_acknowledged_message(pg_database):
    r = fleet("--replicas", "2", "--database", pg_database, "--kill-one-at", "2s")
    assert r["killed"]["replica"] == 1, r
    assert r["per_replica"][1]["killed"], r
    # The killed replica's nodes lost their MQTT sessions (embedded mode:
    # the broker was in that process) and moved to the other replica, as
    # behind a load balancer: every one reconnected there (it knows them:
    # joins on one replica reach the other's broker registry at once), and
    # what was not acknowledged was sent again and stored once.
    assert r["mqtt_sessions_ended"] == 10, r
    assert r["mqtt_reconnects"] == 10, r
    check_exactly_once(r)
