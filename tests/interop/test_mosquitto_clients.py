"""Interop with the mosquitto_pub / mosquitto_sub command-line clients."""

import shutil
import subprocess
import time
import uuid

import pytest

pytestmark = pytest.mark.skipif(
    shutil.which("mosquitto_sub") is None, reason="mosquitto-clients not installed (.ci/run installs it)"
)


@pytest.mark.parametrize("version", ["mqttv311", "mqttv5"])
@pytest.mark.parametrize("qos", ["0", "1", "2"])
def test_mosquitto_pub_sub(node, version, qos):
    topic = f"devices/{uuid.uuid4().hex[:8]}/telemetry"
    sub = subprocess.Popen(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(node.tcp), "-V", version, "-q", qos,
         "-t", "devices/+/telemetry", "-C", "3", "-W", "10", "-v"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    time.sleep(0.5)  # let the subscription land
    for i in range(3):
        subprocess.run(
            ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(node.tcp), "-V", version, "-q", qos,
             "-t", topic, "-m", f'{{"n":{i}}}'],
            check=True, timeout=10,
        )
    out, err = sub.communicate(timeout=15)
    assert sub.returncode == 0, err
    assert out.splitlines() == [f'{topic} {{"n":{i}}}' for i in range(3)]


def test_mosquitto_retained(node):
    topic = f"status/{uuid.uuid4().hex[:8]}"
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(node.tcp), "-r", "-q", "1",
                    "-t", topic, "-m", "online"], check=True, timeout=10)
    out = subprocess.run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(node.tcp), "-t", topic,
                          "-C", "1", "-W", "5", "-F", "%r %p"],
                         capture_output=True, text=True, timeout=15)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1 online"
