"""What the decision core may know about a request."""

from __future__ import annotations

from typing import Protocol


class RequestFacts(Protocol):
    """Read-only view of one request's routing attributes.

    The HTTP layer adapts its request object to this; tests use plain objects.
    """

    @property
    def path(self) -> str:
        """The request path, without the query string."""
        ...

    @property
    def client_ip(self) -> str | None:
        """The peer address, or None when unknown."""
        ...

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        ...

    def cookie(self, name: str) -> str | None:
        """The value of cookie `name`, or None."""
        ...

    def query(self, name: str) -> str | None:
        """The first value of query parameter `name`, or None."""
        ...
