"""The failures the HTTP layer reports to the code that uses it."""

from __future__ import annotations


class BadRequest(Exception):
    """A request refused with a 4xx or 5xx: a malformed, oversized or unsupported head (before
    any handler sees it), or a body that turns out malformed or stops arriving (while a handler
    reads it)."""

    def __init__(self, status: int, error: str, message: str):
        super().__init__(message)
        self.status, self.error, self.message = status, error, message


class ClientGone(ConnectionResetError):
    """The client closed the connection, or was cut off for not reading."""


class IllegalTransition(RuntimeError):
    """A change of state an upstream connection's table does not hold: a bug in the code driving
    the connection (proxy.http.upstream_connection; here, as a compiled module cannot subclass
    RuntimeError)."""


class UpstreamError(Exception):
    """An exchange with an upstream failed: `reason` is connect, connect_timeout, timeout, reset
    or protocol."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail
