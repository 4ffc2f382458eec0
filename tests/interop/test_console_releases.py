"""Releases of the `verge` binary in the console, in a real browser:
Debian's Chromium driven by Playwright against the real binary (`verge
cloud`). A release is signed with `verge release keygen`/`sign` (any small
file stands for the binary: the cloud checks its size and SHA-256 against
the metadata, only nodes check the signature), added on the Releases page
(a wrong binary, then one over `cloud.max_release_bytes` first: the
cloud's messages are shown), assigned on a node's
page (the node is played through the node protocol: join and a heartbeat
with its running version), refused deletion while assigned, unassigned and
deleted.

Skipped when Playwright or Chromium is missing, unless
VERGE_REQUIRE_BROWSER=1 (then it fails), as test_console.py.
"""

import subprocess
import tempfile
from pathlib import Path

from cloud_procs import procs, start_cloud  # noqa: F401 (procs: fixture)
from test_console import console_page, need_browser
from test_console_revisions import call
from verge_interop import verge_bin, verge_env

try:
    from playwright.sync_api import expect
except ImportError:
    expect = None


def sign_release(workdir, version, content):
    """A file holding `content` and the metadata `verge release sign` prints
    for it as `version` (a new key in `workdir`)."""
    work = Path(workdir)
    key = work / "release.key"
    if not key.exists():
        subprocess.run([verge_bin(), "release", "keygen", "--out", str(key)],
                       check=True, capture_output=True, env=verge_env(), timeout=30)
    binary = work / f"verge-{version}"
    binary.write_bytes(content)
    signed = subprocess.run([verge_bin(), "release", "sign", "--key", str(key), "--version", version, str(binary)],
                            check=True, capture_output=True, text=True, env=verge_env(), timeout=30)
    metadata = work / f"release-{version}.json"
    metadata.write_text(signed.stdout)
    return metadata, binary


def test_add_assign_refused_delete_unassign_delete_a_release(procs):
    need_browser()
    workdir = tempfile.mkdtemp(prefix="verge-console-rel-")
    url, admin = start_cloud(procs, workdir, extra=("--set", "cloud.max_release_bytes=4096"))

    created = call(url, admin, "POST", "/api/nodes", {"name": "edge-u"})
    joined = call(url, None, "POST", "/api/agent/join", {"token": created["join_token"], "hostname": "t"})
    node = f"{joined['node_id']}.{joined['secret']}"
    call(url, node, "POST", "/api/agent/status", {"applied_version": 1, "agent_version": "0.1.0"})
    metadata, binary = sign_release(workdir, "0.2.0+t1", b"#!/bin/sh\necho 0.2.0+t1\n")
    wrong = Path(workdir) / "not-the-binary"
    wrong.write_bytes(b"something else\n")
    too_big = Path(workdir) / "too-big"
    too_big.write_bytes(b"x" * 5000)

    with console_page(url, admin) as page:
        page.get_by_test_id("nav-releases").click()
        expect(page.get_by_test_id("releases-table")).to_contain_text("No releases yet")

        # Metadata that is not JSON: said so, nothing posted.
        page.get_by_test_id("release-metadata").fill("{not json")
        page.get_by_test_id("release-binary").set_input_files(str(binary))
        page.get_by_test_id("release-add").click()
        expect(page.get_by_test_id("release-error")).to_contain_text("not valid JSON")
        assert call(url, admin, "GET", "/api/releases") == []

        # The metadata from its file, with another binary: the cloud's 400.
        page.get_by_test_id("release-metadata-file").set_input_files(str(metadata))
        expect(page.get_by_test_id("release-metadata")).to_have_value(metadata.read_text().strip())
        page.get_by_test_id("release-binary").set_input_files(str(wrong))
        page.get_by_test_id("release-add").click()
        expect(page.get_by_test_id("release-error")).to_contain_text("is not the one release `0.2.0+t1` names")
        row = page.locator('[data-testid="release-row"][data-version="0.2.0+t1"]')
        expect(row.get_by_test_id("release-uploaded")).to_contain_text("missing")
        expect(page.get_by_test_id("release-add")).to_be_enabled()
        # Over cloud.max_release_bytes: the cloud's 413.
        page.get_by_test_id("release-binary").set_input_files(str(too_big))
        page.get_by_test_id("release-add").click()
        expect(page.get_by_test_id("release-error")).to_contain_text(
            "payload_too_large: the body is larger than 4096 bytes (`cloud.max_release_bytes`)")
        expect(row.get_by_test_id("release-uploaded")).to_contain_text("missing")

        # Again with the right binary: uploaded, listed.
        page.get_by_test_id("release-binary").set_input_files(str(binary))
        page.get_by_test_id("release-add").click()
        expect(page.get_by_test_id("release-state")).to_contain_text("added 0.2.0+t1")
        expect(page.get_by_test_id("release-error")).to_be_hidden()
        expect(row.get_by_test_id("release-uploaded")).to_have_text("uploaded")
        expect(row.get_by_test_id("release-size")).to_have_text(f"{binary.stat().st_size} B")
        sha = call(url, admin, "GET", "/api/releases")[0]["sha256"]
        expect(row.get_by_test_id("release-sha")).to_have_text(sha[:12])
        expect(row.get_by_test_id("release-nodes")).to_have_text("–")

        # Assigned on the node's page, which shows the version it runs.
        page.goto(url + "/#/nodes/edge-u")
        section = page.get_by_test_id("node-release-section")
        expect(section.get_by_test_id("node-release")).to_have_text("none assigned")
        expect(section.get_by_test_id("node-agent-version")).to_have_text("0.1.0")
        expect(section.get_by_test_id("node-release-unassign")).to_be_hidden()
        expect(section.get_by_test_id("node-release-version")).to_have_value("0.2.0+t1")
        section.get_by_test_id("node-release-assign").click()
        expect(section.get_by_test_id("node-release-done")).to_have_text("0.2.0+t1 assigned")
        expect(section.get_by_test_id("node-release")).to_have_text("0.2.0+t1")
        expect(section.get_by_test_id("node-agent-version")).to_have_text("0.1.0 (not yet 0.2.0+t1)")
        desired = call(url, admin, "GET", "/api/nodes/edge-u/revisions")[0]
        assert desired["summary"] == "release 0.2.0+t1 assigned", desired

        # Listed against the release; deleting it is refused with why.
        page.get_by_test_id("nav-releases").click()
        expect(row.get_by_test_id("release-node")).to_have_text("edge-u")
        row.get_by_test_id("release-delete").click()
        expect(page.get_by_test_id("release-delete-error")).to_contain_text(
            "release `0.2.0+t1` is assigned to node(s) edge-u; unassign it first")
        expect(row).to_have_count(1)

        # Unassigned on the node's page, then deleted.
        row.get_by_test_id("release-node").click()
        expect(section.get_by_test_id("node-release")).to_have_text("0.2.0+t1")
        section.get_by_test_id("node-release-unassign").click()
        expect(section.get_by_test_id("node-release-done")).to_have_text("unassigned")
        expect(section.get_by_test_id("node-release")).to_have_text("none assigned")
        expect(section.get_by_test_id("node-release-unassign")).to_be_hidden()
        page.get_by_test_id("nav-releases").click()
        expect(row.get_by_test_id("release-nodes")).to_have_text("–")
        row.get_by_test_id("release-delete").click()
        expect(row).to_have_count(0)
        expect(page.get_by_test_id("releases-table")).to_contain_text("No releases yet")
        expect(page.get_by_test_id("release-delete-error")).to_be_hidden()
    assert call(url, admin, "GET", "/api/releases") == []
