"""The SDK's typed errors: every failure it raises is a `VergeError`."""


class VergeError(Exception):
    """Base class of the SDK's errors."""


class ConnectError(VergeError):
    """The device could not connect: the node is unreachable, or it refused
    the connection (`reason_code` is then the CONNACK reason code; bad
    credentials say so in the message)."""

    def __init__(self, message, reason_code=None):
        super().__init__(message)
        self.reason_code = reason_code


class ShadowRejected(VergeError):
    """The node refused a shadow request (`$shadow/{d}/…/rejected`).

    `code` is the node's short code (`version_conflict`, `invalid_update`,
    `too_large`, …), `message` its text, `version` the shadow's version
    then (None when the node did not say)."""

    def __init__(self, code, message, version=None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.version = version


class Timeout(VergeError):
    """An answer the SDK waited for did not come in time."""
