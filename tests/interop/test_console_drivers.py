"""A node's protocol drivers in the console, in a real browser: Debian's
Chromium driven by Playwright against the real binary (`verge cloud`). A
driver put through the API shows on the node's page with its protocol,
devices and points; one added from the JSON textarea shows too, and in
the newest revision's diff; a refused one shows the API's message; Delete
removes one.

Skipped when Playwright or Chromium is missing, unless
VERGE_REQUIRE_BROWSER=1 (then it fails), as test_console.py.
"""

import json
import os
import tempfile

from cloud_procs import procs, start_cloud  # noqa: F401 (procs: fixture)
from test_console import CHROMIUM, need, sync_playwright
from test_console_revisions import call
from verge_interop import verge_bin

try:
    from playwright.sync_api import expect
except ImportError:
    expect = None


def modbus(host, points):
    return {"protocol": "modbus-tcp", "host": host,
            "devices": [{"name": "m1", "points": [
                {"name": f"p{i}", "address": f"hr:{i}"} for i in range(points)]}]}


def test_node_drivers_list_add_refuse_and_delete(procs):
    need(sync_playwright is not None, "playwright is not installed (pip install playwright)")
    need(os.path.exists(CHROMIUM), f"no Chromium at {CHROMIUM} (apt-get install chromium, or set CHROMIUM)")
    need(os.path.exists(verge_bin()), f"no verge binary at {verge_bin()} (cargo build -p verge)")
    workdir = tempfile.mkdtemp(prefix="verge-console-drv-")
    url, admin = start_cloud(procs, workdir)

    call(url, admin, "POST", "/api/nodes", {"name": "edge-d"})
    call(url, admin, "PUT", "/api/nodes/edge-d/drivers/plc1", modbus("10.0.0.5", 3))

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(10_000)
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("dialog", lambda d: d.accept())
        try:
            page.goto(url + "/")
            page.get_by_test_id("login-token").fill(admin)
            page.get_by_test_id("login-submit").click()
            expect(page.get_by_test_id("nav-nodes")).to_be_visible()
            page.goto(url + "/#/nodes/edge-d")

            plc1 = page.locator('[data-testid="node-driver-row"][data-name="plc1"]')
            expect(plc1.get_by_test_id("node-driver-protocol")).to_have_text("modbus-tcp")
            expect(plc1.get_by_test_id("node-driver-devices")).to_have_text("1")
            expect(plc1.get_by_test_id("node-driver-points")).to_have_text("3")

            # A refused driver: the API's message, naming the key.
            page.get_by_test_id("node-driver-name").fill("rtu")
            page.get_by_test_id("node-driver-config").fill(json.dumps({
                "protocol": "modbus-rtu", "serial": {"device": "/etc/passwd"},
                "devices": [{"name": "d", "points": [{"name": "p", "address": "hr:1"}]}]}))
            page.get_by_test_id("node-driver-save").click()
            expect(page.get_by_test_id("node-driver-error")).to_contain_text("invalid_driver")
            expect(page.get_by_test_id("node-driver-error")).to_contain_text("serial.device")

            # Added from the textarea: listed, and the newest revision's diff.
            page.get_by_test_id("node-driver-name").fill("meter")
            page.get_by_test_id("node-driver-config").fill(json.dumps(modbus("10.0.0.6", 2)))
            page.get_by_test_id("node-driver-save").click()
            meter = page.locator('[data-testid="node-driver-row"][data-name="meter"]')
            expect(meter.get_by_test_id("node-driver-points")).to_have_text("2")
            expect(page.get_by_test_id("node-driver-error")).to_be_hidden()
            row = page.locator('[data-testid="revision-row"]').first
            expect(row.get_by_test_id("revision-summary")).to_have_text("driver `meter` added")
            row.get_by_test_id("revision-show").click()
            detail = page.get_by_test_id("revision-detail")
            expect(detail.locator('[data-testid="diff-row"][data-kind="drivers"][data-change="added"]')
                   ).to_contain_text("meter")

            plc1.get_by_test_id("node-driver-delete").click()
            expect(plc1).to_have_count(0)
        finally:
            browser.close()
        assert not errors, f"JavaScript errors in the console: {errors}"
    listed = call(url, admin, "GET", "/api/nodes/edge-d/drivers")
    assert [d["name"] for d in listed] == ["meter"], listed
