"""The deployment files are tested with the integration tests' real servers."""

from tests.fleet.conftest import replicas
from tests.integration.conftest import client, prometheus, start_proxy, upstreams

__all__ = ["client", "prometheus", "replicas", "start_proxy", "upstreams"]
