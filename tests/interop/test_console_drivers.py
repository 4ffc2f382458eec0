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
import tempfile

from cloud_procs import procs, start_cloud  # noqa: F401 (procs: fixture)
from test_console import console_page, need_browser
from test_console_revisions import call

try:
    from playwright.sync_api import expect
except ImportError:
    expect = None


def modbus(host, points):
    return {"protocol": "modbus-tcp", "host": host,
            "devices": [{"name": "m-" + host.replace(".", "-"), "points": [
                {"name": f"p{i}", "address": f"hr:{i}"} for i in range(points)]}]}


def test_node_drivers_list_add_refuse_and_delete(procs):
    need_browser()
    workdir = tempfile.mkdtemp(prefix="verge-console-drv-")
    url, admin = start_cloud(procs, workdir)

    call(url, admin, "POST", "/api/nodes", {"name": "edge-d"})
    call(url, admin, "PUT", "/api/nodes/edge-d/drivers/plc1", modbus("10.0.0.5", 3))

    with console_page(url, admin) as page:
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
    listed = call(url, admin, "GET", "/api/nodes/edge-d/drivers")
    assert [d["name"] for d in listed] == ["meter"], listed
