"""The optional compiled build: with GRAYSCALE_COMPILE=1 in the environment, the hot modules below
are compiled with mypyc into C extensions placed beside their sources (`make compiled`, and the
Docker image's wheel). Without it this is a plain setuptools build: `pip install -e .` and `make`
stay pure Python. `GRAYSCALE_PURE=1` at run time makes a compiled install import the sources
(proxy/__init__.py)."""

import os

from setuptools import setup

# The request path, profiled through the proxy: HTTP/1.1 parsing, framing and headers toward
# clients and upstreams, the gateway and forwarding, routing, the records, the metrics and the
# analysis window. Left out: the modules subclassing built-in exceptions other than Exception
# (proxy/http/errors.py), HTTP/2, TLS, the control plane and everything run once.
COMPILED = [
    "proxy/http/client.py",
    "proxy/http/client_connection.py",
    "proxy/http/cookies.py",
    "proxy/http/framing.py",
    "proxy/http/headers.py",
    "proxy/http/pool.py",
    "proxy/http/request.py",
    "proxy/http/upstream_connection.py",
    "proxy/dataplane/ejection.py",
    "proxy/dataplane/forwarding.py",
    "proxy/dataplane/gateway.py",
    "proxy/dataplane/limiter.py",
    "proxy/dataplane/model_body.py",
    "proxy/dataplane/request_body.py",
    "proxy/dataplane/stream_meter.py",
    "proxy/routing/bucket.py",
    "proxy/routing/client_ip.py",
    "proxy/routing/cohort.py",
    "proxy/routing/decide.py",
    "proxy/routing/facts.py",
    "proxy/routing/ramp.py",
    "proxy/routing/segments.py",
    "proxy/routing/table.py",
    "proxy/records/request_id.py",
    "proxy/records/request_outcome.py",
    "proxy/telemetry/metrics.py",
    "proxy/analysis/histogram.py",
    "proxy/analysis/users.py",
    "proxy/analysis/window.py",
]

ext_modules = []
if os.environ.get("GRAYSCALE_COMPILE") == "1":
    from mypyc.build import mypycify

    # (the shared library goes inside the package, `proxy/grayscale__mypyc.*.so`, where an editable
    # install finds it as it finds the package)
    ext_modules = mypycify(COMPILED, opt_level="3", group_name="proxy.grayscale")

setup(ext_modules=ext_modules)
