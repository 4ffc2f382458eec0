"""The cloud's OpenAPI document against the real server, checked by a
third-party tool: schemathesis generates requests for every operation of
`GET /api/openapi.json` (examples, coverage and fuzzing phases, valid and
invalid data) and checks each answer against the document: no 5xx, the
status is documented, the body matches the documented schema, the
content type is the documented one.

The real binary runs (`verge cloud`); API operations get the admin token,
`/api/agent/desired` and `/api/agent/status` the credentials of a node that
joined first. For the run only, `wait_ms` of the long poll is capped at
500 ms in the document (the server's cap is 60000) so that a generated
`version` that equals the current one does not hold a test for a minute.

Needs `schemathesis` (tests/interop/requirements.txt). Bounded: at most
MAX_EXAMPLES generated cases per operation and phase.
"""

import atexit
import json
import re
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from verge_interop import free_port, terminate, verge_bin, verge_env

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402  (after the skip)
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

MAX_EXAMPLES = 25
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    response_schema_conformance,
    content_type_conformance,
]
# Server defects schemathesis found, by operation (`METHOD /path`): the
# reason, with the request that reproduces it. Only true server bugs go here;
# a mismatch that is the document's fault is fixed in the document
# (crates/verge-cloud/src/openapi.rs).
KNOWN_DEFECTS = {}

# A component's archive is uploaded as raw `application/gzip` bytes: sent
# as generated, as schemathesis sends `application/octet-stream`.
schemathesis.serializer.alias("application/gzip", "application/octet-stream")


def request(base, method, path, token=None, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=10) as resp:
        text = resp.read()
        is_json = resp.headers.get_content_type() == "application/json"
        return json.loads(text) if is_json and text else text


class Cloud:
    """A `verge cloud` on free ports with its admin token and the
    credentials of a node that joined."""

    def __init__(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="verge-openapi-")
        http, mqtt = free_port(), free_port()
        self.log_path = Path(self.tmp.name) / "cloud.log"
        self.log = open(self.log_path, "w+")
        env = verge_env()
        env.setdefault("RUST_LOG", "warn")
        self.proc = subprocess.Popen(
            [verge_bin(), "cloud",
             "--set", f"http.bind=127.0.0.1:{http}",
             "--set", f"mqtt.bind=127.0.0.1:{mqtt}",
             "--set", f"cloud.data_dir={self.tmp.name}/data"],
            cwd=self.tmp.name, env=env, stdout=self.log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.base = f"http://127.0.0.1:{http}"
        self.token = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.proc.poll() is None:
            m = re.search(r"admin token: (\S+)", self.output())
            if m:
                try:
                    request(self.base, "GET", "/healthz")
                    self.token = m.group(1)
                    break
                except OSError:
                    pass
            time.sleep(0.1)
        if self.token is None:
            self.stop()
            raise RuntimeError("verge cloud did not start:\n" + self.output())
        created = request(self.base, "POST", "/api/nodes", self.token, {"name": "schemathesis-node"})
        joined = request(self.base, "POST", "/api/agent/join", None,
                         {"token": created["join_token"], "hostname": "test"})
        self.node = f"{joined['node_id']}.{joined['secret']}"

    def output(self):
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self):
        terminate(self.proc, timeout=10)
        if not self.log.closed:
            self.log.close()
        self.tmp.cleanup()


def load_schema(server):
    """The server's document; `wait_ms` capped for the run (see above)."""
    with urllib.request.urlopen(server.base + "/api/openapi.json", timeout=10) as resp:
        doc = json.load(resp)
    for param in doc["paths"]["/api/agent/desired"]["get"]["parameters"]:
        if param["name"] == "wait_ms":
            param["schema"]["maximum"] = 500
    # Examples that reach past the "no such node" checks (examples phase).
    schemas = doc["components"]["schemas"]
    schemas["DeviceCreate"]["example"] = {"name": "d1", "node_id": "schemathesis-node"}
    schemas["RuleBody"]["example"] = {
        "id": "r1", "node_id": "schemathesis-node",
        "sql": 'SELECT * FROM "devices/+/telemetry"', "actions": [],
    }
    schemas["ComponentSpec"]["example"] = {
        "name": "c1", "version": "1.0.0", "command": "/bin/true", "args": ["x"],
    }
    schemas["RuleTestRequest"]["example"] = {
        "sql": 'SELECT temperature FROM "t/#" WHERE temperature > 20',
        "samples": [{"topic": "t/1", "payload": {"temperature": 25}}],
    }
    schemas["DriverConfig"]["example"] = {
        "protocol": "modbus-tcp", "host": "127.0.0.1",
        "devices": [{"name": "m1", "points": [{"name": "t", "address": "hr:0"}]}],
    }
    # The node's drivers: path examples that name the node that exists.
    for path in ("/api/nodes/{id}/drivers", "/api/nodes/{id}/drivers/{name}"):
        for op in doc["paths"][path].values():
            for param in op["parameters"]:
                param["example"] = "schemathesis-node" if param["name"] == "id" else "plc1"
    loaded = schemathesis.openapi.from_dict(doc)
    loaded.config.update(base_url=server.base, request_timeout=20)
    # Credentials are the real ones (below), not generated.
    loaded.config.generation.update(max_examples=MAX_EXAMPLES, with_security_parameters=False)
    return loaded


# The operations are collected from the live document, so the server starts
# at collection (schemathesis' lazy `from_fixture` loader does not work with
# pytest 9: it sets `Function._nodeid`, which pytest 9 no longer has).
SERVER = Cloud()
atexit.register(SERVER.stop)
schema = load_schema(SERVER)


@pytest.fixture(scope="module")
def cloud():
    yield SERVER
    output = SERVER.output()
    SERVER.stop()
    assert "panicked" not in output, output[-4000:]


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None,
          suppress_health_check=list(HealthCheck), print_blob=True)
def test_api_conforms_to_its_openapi_document(case, cloud):
    key = f"{case.method.upper()} {case.operation.path}"
    if key in KNOWN_DEFECTS:
        pytest.xfail(KNOWN_DEFECTS[key])
    agent = case.operation.path.startswith("/api/agent/")
    cred = cloud.node if agent else cloud.token
    case.call_and_validate(headers={"Authorization": f"Bearer {cred}"}, checks=CHECKS)
