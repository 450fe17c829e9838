"""Helpers shared by the test folders: real servers to stand in for upstreams, Redis and
Prometheus, config snippets, ports, and waiting on a condition with a deadline. The fixtures
built on them are in `fixtures.py` (registered by `tests/conftest.py`) and in each folder's
`conftest.py`."""
