"""The chaos suite shares the integration suite's real upstreams and proxies."""

from tests.integration.conftest import client, proxy, start_proxy, upstreams

__all__ = ["client", "proxy", "start_proxy", "upstreams"]
