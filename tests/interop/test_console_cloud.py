"""The console's Cloud page (the `verge cloud` replicas on the database)
in a real browser: Debian's Chromium driven by Playwright against the
real binary. On SQLite the one process is listed as this replica, alive
and leading; with two replicas on PostgreSQL (VERGE_TEST_POSTGRES_URL)
the page served by one lists both, marks which one answered, and shows
exactly the leader the API names.

Skipped when Playwright or Chromium is missing, unless
VERGE_REQUIRE_BROWSER=1 (then it fails), as test_console.py. A
screenshot goes to tests/interop/artifacts/console-cloud.png.
"""

import tempfile

from cloud_procs import api, database, procs, start_cloud, wait_for  # noqa: F401 (fixtures)
from test_console import ARTIFACTS, console_page, need_browser
from test_replicas import two_replicas

try:
    from playwright.sync_api import expect
except ImportError:
    expect = None


def replica_row(page, replica_id):
    return page.locator(f'[data-testid="replica-row"][data-id="{replica_id}"]')


def test_the_cloud_page_shows_this_replica_leading(procs):
    need_browser()
    workdir = tempfile.mkdtemp(prefix="verge-console-cloud-")
    url, admin = start_cloud(procs, workdir, extra=("--set", "cloud.replica_id=console-one"))
    listed = api(url, admin, "/api/cloud/replicas")
    assert [(r["id"], r["this"], r["alive"], r["leader"]) for r in listed] == [
        ("console-one", True, True, True)], listed

    with console_page(url, admin) as page:
        page.get_by_test_id("nav-cloud").click()
        expect(page.get_by_test_id("replica-row")).to_have_count(1)
        row = replica_row(page, "console-one")
        expect(row).to_contain_text("(this one)")
        expect(row.get_by_test_id("replica-alive")).to_have_text("online")
        expect(row.get_by_test_id("replica-role")).to_have_text("leader")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "console-cloud.png"), full_page=True)


def test_the_cloud_page_shows_two_replicas_and_the_one_leader(database, procs):
    need_browser()
    _, admin, cloud_a, _, url_b = two_replicas(procs, database, "verge-console-cloud-pg-",
                                               ("--set", "cloud.replica_id=console-a"))
    listed = wait_for("both replicas listed, one leading", lambda: (
        (r := api(url_b, admin, "/api/cloud/replicas")) and len(r) == 2
        and all(x["alive"] for x in r) and sum(x["leader"] for x in r) == 1 and r), cloud_a, timeout=30)
    b_id = next(x["id"] for x in listed if x["this"])
    leader = next(x["id"] for x in listed if x["leader"])

    with console_page(url_b, admin) as page:
        page.get_by_test_id("nav-cloud").click()
        expect(page.get_by_test_id("replica-row")).to_have_count(2)
        expect(replica_row(page, b_id)).to_contain_text("(this one)")
        expect(replica_row(page, "console-a")).not_to_contain_text("(this one)")
        for replica in ("console-a", b_id):
            row = replica_row(page, replica)
            expect(row.get_by_test_id("replica-alive")).to_have_text("online")
            expect(row.get_by_test_id("replica-role")).to_have_text(
                "leader" if replica == leader else "replica")
