"""The integration tests use the suite's fixtures (tests/support/fixtures.py): real upstreams
and proxies on 127.0.0.1, a webhook receiver, a client, a Prometheus."""

# Helpers still imported from here by test_admin.py, test_admin_security.py, chromium.py,
# test_status_document.py, test_status_page.py and tests/fleet/test_fleet_timeline.py: they
# live in tests/support, where those modules are to import them from.
from tests.support.configs import route_yaml
from tests.support.fixtures import upstreams, webhook
from tests.support.paths import ROOT
from tests.support.ports import free_port
from tests.support.proxies import ProxyFactory
from tests.support.upstream import url_of

__all__ = ["ROOT", "ProxyFactory", "free_port", "route_yaml", "upstreams", "url_of", "webhook"]
