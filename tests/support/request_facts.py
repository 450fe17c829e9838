"""A plain `RequestFacts` for tests of the decision core."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Facts:
    """Request attributes given directly; header names are case-insensitive."""

    path: str = "/"
    client_ip: str | None = "127.0.0.1"
    headers: dict[str, str] = field(default_factory=dict)
    cookies: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        lowered = {k.lower(): v for k, v in self.headers.items()}
        return lowered.get(name.lower())

    def cookie(self, name: str) -> str | None:
        return self.cookies.get(name)

    def query(self, name: str) -> str | None:
        return self.params.get(name)


def user(uid: str, **headers: str) -> Facts:
    """A request from user `uid` (header X-User-Id) with extra headers."""
    return Facts(headers={"X-User-Id": uid, **headers})
