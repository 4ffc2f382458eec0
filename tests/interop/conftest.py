"""Fixtures of the interop suite: one Verge node (the real binary) per test
module, on free loopback ports; a failing test's report carries the node's log."""

import pytest

# free_port and Node are also imported from here by other test modules.
from verge_interop import Node, free_port  # noqa: F401


@pytest.fixture(scope="module")
def node():
    """An anonymous-friendly node (allow_anonymous = true, $SYS every second)."""
    n = Node()
    yield n
    n.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    for name, value in getattr(item, "funcargs", {}).items():
        if isinstance(value, Node):
            report.sections.append(
                (f"verge log ({name}, {value.dir}/verge.log, last lines)", value.tail())
            )
