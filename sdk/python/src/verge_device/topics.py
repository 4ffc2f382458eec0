"""The device-facing topics of a Verge node (the same conventions as
`crates/verge-protocol/src/device/` and docs/devices.md)."""

SHADOW_ANSWERS = ("get/accepted", "get/rejected", "update/accepted", "update/rejected",
                  "update/delta")


def check_level(what, value):
    """`value` must fill exactly one topic level."""
    if not isinstance(value, str) or not value or any(c in value for c in "/+#\0"):
        raise ValueError(f"{what} {value!r} must be a non-empty text without '/', '+', '#' or NUL")
    return value


def telemetry(device):
    return f"devices/{device}/telemetry"


def event(device, kind):
    return f"devices/{device}/events/{kind}"


def command_filter(device):
    return f"devices/{device}/commands/#"


def reply(device, command_id):
    return f"devices/{device}/replies/{command_id}"


def failed_reply(device, command_id):
    return f"devices/{device}/replies/{command_id}/failed"


def shadow(device, op):
    """`$shadow/{device}/{op}` (`get`, `update`, `get/accepted`, …)."""
    return f"$shadow/{device}/{op}"


def parse_command(device, topic):
    """`devices/{device}/commands/{name}/{id}` -> (name, id), else None."""
    prefix = f"devices/{device}/commands/"
    if not topic.startswith(prefix):
        return None
    parts = topic[len(prefix):].split("/")
    if len(parts) != 2 or not all(parts):
        return None
    return parts[0], parts[1]


def parse_shadow(device, topic):
    """`$shadow/{device}/{answer}` -> the answer (one of SHADOW_ANSWERS), else None."""
    prefix = f"$shadow/{device}/"
    if not topic.startswith(prefix):
        return None
    op = topic[len(prefix):]
    return op if op in SHADOW_ANSWERS else None
