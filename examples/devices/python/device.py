#!/usr/bin/env python3
"""An example Verge device program on the Python SDK (`pip install ./sdk/python`).

It sends a simulated temperature every `interval` seconds, answers the
commands `set_interval` and `ping`, and follows the shadow: a desired
`interval` (set in the console or with `PATCH /api/devices/{id}/shadow`)
arrives as a delta, is applied, and reported back.

    python examples/devices/python/device.py --url mqtt://127.0.0.1:1883 \\
        --device d1 --client-id d1:example --secret "$(jq -r .d1 verge-data/demo/devices.json)"

(`verge up` creates d1-d3 and keeps their secrets in
verge-data/demo/devices.json; or create one with `verge ctl devices create`.)
Stop it with Ctrl-C.
"""

import argparse
import logging
import math
import os
import random
import signal
import threading
import time

from verge_device import ConnectError, Device, VergeError


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default=os.environ.get("VERGE_URL", "mqtt://127.0.0.1:1883"))
    p.add_argument("--device", default=os.environ.get("VERGE_DEVICE", "d1"))
    p.add_argument("--secret", default=os.environ.get("VERGE_SECRET"))
    p.add_argument("--ca-file", default=os.environ.get("VERGE_CA_FILE"))
    p.add_argument("--client-id", help="default: the device's name; `{device}:x` runs beside "
                   "another program of the same device (e.g. verge up's simulator)")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between readings")
    p.add_argument("--count", type=int, default=0, help="readings to send, then stop (0: forever)")
    args = p.parse_args()
    if not args.secret:
        p.error("--secret (or VERGE_SECRET) is required")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    device = Device(args.url, args.device, args.secret, ca_file=args.ca_file,
                    client_id=args.client_id)
    state = {"interval": args.interval}
    stop = threading.Event()

    @device.command("set_interval")
    def set_interval(payload):
        seconds = float(payload["seconds"])
        if not 0.1 <= seconds <= 3600:
            raise ValueError("seconds must be between 0.1 and 3600")
        state["interval"] = seconds
        return {"interval": seconds}

    @device.command("ping")
    def ping(payload):
        return {"pong": payload, "at": time.time()}

    @device.on_delta
    def on_delta(delta, version):
        if "interval" in delta:
            state["interval"] = float(delta["interval"])
            logging.info("desired interval %s s (shadow version %s)", state["interval"], version)
            try:
                device.update_reported({"interval": state["interval"]})
            except VergeError as e:
                logging.warning("could not report the interval: %s", e)

    try:
        device.connect(timeout=10)
    except ConnectError as e:
        raise SystemExit(f"cannot connect: {e}")
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        device.update_reported({"interval": state["interval"], "firmware": "example-1.0"})
    except VergeError as e:
        logging.info("no shadow on this node yet: %s", e)

    sent = 0
    try:
        while not stop.is_set() and (args.count == 0 or sent < args.count):
            t = 21 + 4 * math.sin(time.time() / 60) + random.uniform(-0.3, 0.3)
            device.send_telemetry({"temperature": round(t, 2), "seq": sent})
            sent += 1
            stop.wait(state["interval"])
    except KeyboardInterrupt:
        pass
    finally:
        device.close()
    logging.info("sent %d readings (%d dropped while offline)", sent, device.dropped)


if __name__ == "__main__":
    main()
