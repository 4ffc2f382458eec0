#!/usr/bin/env python3
"""A Verge process function: alert when a JSON `temperature` is too high.

The node starts this script as a long-lived worker (runtime "process") and
speaks line-delimited JSON with it over stdin/stdout (docs/functions.md,
"The process protocol, version 1"). `serve` is the reusable part: keep it
and write your own `handle`. Standard library only.

Config (VERGE_FUNCTION_CONFIG): {"above": 30, "topic": "alerts/hot"}
  above  alert when temperature > above (default 30)
  topic  where alerts go (default: "alerts/" + the input topic)
"""

import base64
import json
import os
import sys


def log(text):
    """Write a line to stderr: the node logs it under the function's name."""
    print(text, file=sys.stderr, flush=True)


def _encode(message):
    """One output message as protocol JSON: a bytes payload is sent as text
    when it is UTF-8, otherwise as `payload_base64`."""
    out = dict(message)
    payload = out.pop("payload", b"")
    if isinstance(payload, str):
        out["payload"] = payload
    else:
        try:
            out["payload"] = bytes(payload).decode("utf-8")
        except UnicodeDecodeError:
            out["payload_base64"] = base64.b64encode(payload).decode("ascii")
    return out


def serve(handle):
    """Answer requests from stdin, one at a time, until stdin closes.

    `handle(request)` gets the request as a dict whose "payload" is bytes
    and returns a list of output messages: dicts with "topic" and "payload"
    (bytes or str), optionally "content_type", "user_properties" (a list of
    [key, value]), "qos" (default 1) and "retain" (default false). An
    exception it raises is answered as the call's error.
    """
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    for line in stdin:
        try:
            request = json.loads(line)
            request_id = request["id"]
        except (ValueError, TypeError, KeyError) as e:
            log(f"request skipped, it is not a JSON object with an id: {e}")
            continue
        try:
            if "payload_base64" in request:
                request["payload"] = base64.b64decode(request.pop("payload_base64"))
            else:
                request["payload"] = request.get("payload", "").encode("utf-8")
            answer = {"id": request_id, "messages": [_encode(m) for m in handle(request)]}
        except Exception as e:  # the function's error, not the worker's
            answer = {"id": request_id, "error": str(e) or type(e).__name__}
        stdout.write(json.dumps(answer).encode("utf-8") + b"\n")
        stdout.flush()


CONFIG = json.loads(os.environ.get("VERGE_FUNCTION_CONFIG") or "{}")
ABOVE = float(CONFIG.get("above", 30))
ALERT_TOPIC = CONFIG.get("topic")
handled = 0
alerts = 0


def handle(request):
    """Threshold alert on the payload's `temperature`."""
    global handled, alerts
    handled += 1
    if handled % 1000 == 0:
        log(f"{handled} messages handled, {alerts} alerts")
    try:
        data = json.loads(request["payload"])
    except ValueError as e:
        raise ValueError(f"payload is not JSON: {e}") from None
    temperature = data.get("temperature") if isinstance(data, dict) else None
    if temperature is None:
        raise ValueError("temperature missing")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ValueError("temperature is not a number")
    if temperature <= ABOVE:
        return []
    alerts += 1
    source = request["topic"]
    alert = {"source": source, "temperature": temperature, "above": ABOVE}
    return [{
        "topic": ALERT_TOPIC or "alerts/" + source,
        "payload": json.dumps(alert),
        "content_type": "application/json",
    }]


if __name__ == "__main__":
    name = os.environ.get("VERGE_FUNCTION", "handler")
    version = os.environ.get("VERGE_FUNCTION_VERSION", "?")
    log(f"{name} v{version}: alerting when temperature > {ABOVE:g}")
    serve(handle)
    log(f"stdin closed after {handled} messages ({alerts} alerts), exiting")
