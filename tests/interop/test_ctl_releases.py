"""`verge ctl` against a real `verge cloud`: a release signed with `verge
release sign` added (metadata, then the binary as application/octet-stream),
listed, assigned to a node, refused deletion while assigned, unassigned and
deleted; the node's revisions (list, diff, rollback, cancel's refusal) and a
rollout (start, get, cancel) through the same commands. The node is played
through the node protocol (join only)."""

import json
import subprocess
import tempfile
from pathlib import Path

from cloud_procs import procs, start_cloud  # noqa: F401 (procs: fixture)
from test_console_releases import sign_release
from test_console_revisions import call
from verge_interop import verge_bin, verge_env


def ctl(url, token_file, *args):
    """`verge ctl ARGS…`: (exit code, the JSON it printed or None, stderr)."""
    done = subprocess.run([verge_bin(), "ctl", "--cloud", url, "--token-file", str(token_file), *args],
                          capture_output=True, text=True, env=verge_env(), timeout=60)
    out = json.loads(done.stdout) if done.returncode == 0 and done.stdout.strip() else None
    return done.returncode, out, done.stderr


def ok(url, token_file, *args):
    code, out, err = ctl(url, token_file, *args)
    assert code == 0, f"verge ctl {' '.join(args)} failed: {err}"
    return out


def test_ctl_releases_revisions_and_rollouts(procs):
    workdir = tempfile.mkdtemp(prefix="verge-ctl-rel-")
    url, admin = start_cloud(procs, workdir, extra=("--set", "cloud.max_release_bytes=4096"))
    token_file = Path(workdir) / "admin-token"
    token_file.write_text(admin + "\n")
    created = call(url, admin, "POST", "/api/nodes", {"name": "edge-c", "labels": {"site": "a"}})
    call(url, None, "POST", "/api/agent/join", {"token": created["join_token"], "hostname": "t"})
    metadata, binary = sign_release(workdir, "0.3.0", b"\x7fELF pretend binary\n" * 50)

    # A binary other than the signed one: the cloud's 400 in the error.
    wrong = Path(workdir) / "wrong"
    wrong.write_bytes(b"another file")
    code, _, err = ctl(url, token_file, "releases", "add", "--metadata", str(metadata), "--binary", str(wrong))
    assert code != 0 and "400" in err and "is not the one release `0.3.0` names" in err, err
    # Over cloud.max_release_bytes: the metadata refused (400), the upload too (413).
    big_meta, big = sign_release(workdir, "0.3.1", b"x" * 5000)
    code, _, err = ctl(url, token_file, "releases", "add", "--metadata", str(big_meta), "--binary", str(big))
    assert code != 0 and "400" in err and "`cloud.max_release_bytes`" in err, err
    code, _, err = ctl(url, token_file, "releases", "add", "--metadata", str(metadata), "--binary", str(big))
    assert code != 0 and "413 payload_too_large" in err, err

    added = ok(url, token_file, "releases", "add", "--metadata", str(metadata), "--binary", str(binary))
    assert added["version"] == "0.3.0" and added["uploaded"] is True, added
    assert added["size"] == binary.stat().st_size, added
    listed = ok(url, token_file, "releases", "list")
    assert [r["version"] for r in listed] == ["0.3.0"], listed
    assert ok(url, token_file, "releases", "get", "0.3.0")["sha256"] == added["sha256"]
    code, _, err = ctl(url, token_file, "releases", "get", "9.9.9")
    assert code != 0 and "no release `9.9.9`" in err, err

    assigned = ok(url, token_file, "releases", "assign", "--node", "edge-c", "0.3.0")
    assert assigned == {"node_id": "edge-c", "version": "0.3.0"}, assigned
    assert ok(url, token_file, "releases", "get", "0.3.0")["nodes"] == ["edge-c"]
    code, _, err = ctl(url, token_file, "releases", "delete", "0.3.0")
    assert code != 0 and "409" in err and "unassign it first" in err, err

    # The assignment is a revision: listed, diffed, rolled back.
    revisions = ok(url, token_file, "revisions", "list", "--node", "edge-c", "--limit", "2")
    newest = revisions[0]
    assert newest["summary"] == "release 0.3.0 assigned", revisions
    n = newest["revision"]
    one = ok(url, token_file, "revisions", "get", "--node", "edge-c", str(n))
    assert one["state"]["release"]["version"] == "0.3.0", one
    diff = ok(url, token_file, "revisions", "diff", "--node", "edge-c", str(n - 1), str(n))
    assert diff["release"]["added"] == ["verge"], diff
    back = ok(url, token_file, "revisions", "rollback", "--node", "edge-c", str(n - 1))
    assert back["revision"] == n + 1, back
    code, _, err = ctl(url, token_file, "revisions", "cancel", "--node", "edge-c")
    assert code != 0 and "409" in err, err

    assert ok(url, token_file, "releases", "unassign", "--node", "edge-c") is None
    code, _, err = ctl(url, token_file, "releases", "unassign", "--node", "edge-c")
    assert code != 0 and "404" in err, err
    assert ok(url, token_file, "releases", "delete", "0.3.0") is None
    assert ok(url, token_file, "releases", "list") == []

    # A rollout of a component version to site a.
    call(url, admin, "POST", "/api/components", {"name": "app", "version": "2.0.0", "command": "bin/app"})
    started = ok(url, token_file, "rollouts", "start", "--component", "app", "--version", "2.0.0",
                 "--selector", "site=a", "--canary", "1", "--max-failure-rate", "0")
    assert started["selector"] == {"site": "a"} and started["state"] == "running", started
    got = ok(url, token_file, "rollouts", "get", str(started["id"]))
    assert got["stages"][0]["nodes"][0]["node_id"] == "edge-c", got
    assert [r["id"] for r in ok(url, token_file, "rollouts", "list")] == [started["id"]]
    code, _, err = ctl(url, token_file, "rollouts", "resume", str(started["id"]))
    assert code != 0 and "409" in err, err
    assert ok(url, token_file, "rollouts", "cancel", str(started["id"]))["state"] == "cancelled"
