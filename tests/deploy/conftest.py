"""The deployment files are tested with the integration tests' real servers."""

from tests.integration.conftest import client, prometheus, start_proxy, upstreams

__all__ = ["client", "prometheus", "start_proxy", "upstreams"]
