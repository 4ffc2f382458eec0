"""Real `verge cloud` and `verge node --cloud` processes for the interop
tests: each with its output in a log file, stopped at the end of the test
(and their logs shown) through the `procs` fixture."""

import contextlib
import getpass
import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from verge_interop import free_port, port_open, terminate, verge_bin, verge_env


class Proc:
    """A verge subcommand with its output in a log file."""

    def __init__(self, name, args, workdir):
        self.name = name
        self.log_path = Path(workdir) / f"{name}.log"
        self.log = open(self.log_path, "w+")
        self.proc = subprocess.Popen(
            [verge_bin(), *args], cwd=workdir, env=verge_env(),
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )

    def output(self):
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        terminate(self.proc)


def wait_for(what, check, proc, timeout=15):
    """Poll `check()` until it returns a truthy value; fail naming `what`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = check()
        if got:
            return got
        if not proc.alive():
            break
        time.sleep(0.1)
    pytest.fail(f"{what} (exit code {proc.proc.poll()}); {proc.name} said:\n{proc.output()[-4000:]}")


def api(url, token, path):
    req = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read() or b"null")


@pytest.fixture
def procs():
    """Processes started by the test; stopped at the end, their logs shown on failure."""
    started = []
    yield started
    for p in reversed(started):
        p.stop()
    for p in started:
        print(f"----- {p.name} ({p.log_path}) -----\n{p.output()[-6000:]}")


def start_cloud(procs, workdir, extra=()):
    """`verge cloud` with data in `workdir`/cloud; `extra`: more arguments."""
    http, mqtt = free_port(), free_port()
    cloud = Proc("cloud", [
        "cloud",
        "--set", f"http.bind=127.0.0.1:{http}",
        "--set", f"mqtt.bind=127.0.0.1:{mqtt}",
        "--set", f"cloud.data_dir={workdir}/cloud",
        *extra,
    ], workdir)
    procs.append(cloud)
    token = wait_for("the cloud printed no `admin token: …` line",
                     lambda: (m := re.search(r"admin token: (\S+)", cloud.output())) and m.group(1), cloud)
    wait_for(f"the cloud did not listen on 127.0.0.1:{http}", lambda: port_open(http), cloud)
    return f"http://127.0.0.1:{http}", token


def start_node(procs, workdir, cloud_url, join_token, ports=None, extra=()):
    """`verge node --cloud` with data in `workdir`/node: joined with
    `join_token`, or with its stored credentials when it is None (on the
    same `ports` as before, when given); `extra`: more arguments."""
    ports = ports or {k: free_port() for k in ("tcp", "ws", "http", "coap")}
    join = ["--join", join_token] if join_token else []
    node = Proc("node", [
        "node", "--cloud", cloud_url, *join,
        "--set", f"node.data_dir={workdir}/node",
        "--set", f"broker.listeners.tcp.bind=127.0.0.1:{ports['tcp']}",
        "--set", f"broker.listeners.ws.bind=127.0.0.1:{ports['ws']}",
        "--set", f"http.bind=127.0.0.1:{ports['http']}",
        "--set", f"coap.bind=127.0.0.1:{ports['coap']}",
        *extra,
    ], workdir)
    procs.append(node)
    wait_for(f"the node did not listen on 127.0.0.1:{ports['tcp']}", lambda: port_open(ports["tcp"]), node)
    return node, ports


DYNSEC_PLUGIN = Path("/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so")


def dynsec_available():
    """Whether Debian's mosquitto, its dynamic-security plugin and mosquitto_ctrl are installed."""
    return bool(shutil.which("mosquitto") and shutil.which("mosquitto_ctrl") and DYNSEC_PLUGIN.exists())


class Mosquitto:
    """Debian's mosquitto on a free loopback port, its config and log in
    `workdir`/mosquitto: `configure` writes the config, `launch` starts it
    (again) and waits until it listens, `stop` ends it by its PID."""

    def __init__(self, workdir):
        self.dir = Path(workdir, "mosquitto")
        self.dir.mkdir()
        self.port = free_port()
        self.conf = self.dir / "mosquitto.conf"
        self.log_path = self.dir / "mosquitto.log"
        self.log = open(self.log_path, "a+")
        self.proc = None

    def configure(self, *lines):
        """The config: the listener (no anonymous clients) and `lines`.
        Started as root, mosquitto would switch to its own user, which may
        not read the test's files: it runs as the test's user."""
        head = [f"user {getpass.getuser()}", f"listener {self.port} 127.0.0.1", "allow_anonymous false"]
        self.conf.write_text("".join(f"{line}\n" for line in [*head, *lines]))

    def dynsec_init(self, admin_password):
        """Make the dynamic-security plugin's config with user `admin`;
        the config lines that load it."""
        config = self.dir / "dynsec.json"
        subprocess.run(["mosquitto_ctrl", "dynsec", "init", str(config), "admin", admin_password],
                       check=True, capture_output=True)
        return [f"plugin {DYNSEC_PLUGIN}", f"plugin_opt_config_file {config}"]

    def launch(self):
        """Start mosquitto on its config and wait until it listens."""
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stdout=self.log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.time() + 10
        while not port_open(self.port):
            if time.time() > deadline or self.proc.poll() is not None:
                self.stop()
                pytest.fail(f"mosquitto did not listen:\n{self.output()[-4000:]}")
            time.sleep(0.05)

    def output(self):
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self):
        if self.proc is not None:
            terminate(self.proc)


@contextlib.contextmanager
def scratch_database(prefix):
    """A fresh PostgreSQL database `{prefix}_…` on the server of
    VERGE_TEST_POSTGRES_URL (made and dropped with psql): its URL. Skips
    the test when that variable is not set or psql is missing."""
    base = os.environ.get("VERGE_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("set VERGE_TEST_POSTGRES_URL=postgres://user:pass@host/db to run on PostgreSQL")
    if not shutil.which("psql"):
        pytest.skip("psql is not installed")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    subprocess.run(["psql", base, "-q", "-v", "ON_ERROR_STOP=1", "-c", f"CREATE DATABASE {name}"],
                   check=True, capture_output=True)
    try:
        yield f"{base.rsplit('/', 1)[0]}/{name}"
    finally:
        subprocess.run(["psql", base, "-q", "-c", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"],
                       capture_output=True)


@pytest.fixture
def database():
    """A fresh PostgreSQL database's URL (`scratch_database`), dropped after the test."""
    with scratch_database("verge_interop") as url:
        yield url
