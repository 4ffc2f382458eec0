"""Starts a Verge node (the real binary) per test module on free ports."""

import os
import socket
import subprocess
import tempfile
import time

import pytest


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    def __init__(self, extra="", anonymous=True):
        self.dir = tempfile.mkdtemp(prefix="verge-interop-")
        self.tcp = free_port()
        self.ws = free_port()
        cfg = os.path.join(self.dir, "node.toml")
        with open(cfg, "w") as f:
            f.write(f"""
[node]
data_dir = "{self.dir}/data"
[broker]
allow_anonymous = {"true" if anonymous else "false"}
sys_interval = "1s"
{extra}
[broker.listeners.tcp]
enabled = true
bind = "127.0.0.1:{self.tcp}"
[broker.listeners.ws]
enabled = true
bind = "127.0.0.1:{self.ws}"
path = "/mqtt"
""")
        self.log = open(os.path.join(self.dir, "verge.log"), "w+")
        self.proc = subprocess.Popen(
            [os.environ.get("VERGE_BIN", "target/debug/verge"), "node", "--config", cfg],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.tcp), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("verge did not start:\n" + self.output())

    def output(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def node():
    n = Node()
    yield n
    n.stop()
