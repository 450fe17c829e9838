"""The decision core stays pure: no event loop, no HTTP, no file or network I/O."""

from __future__ import annotations

import subprocess
import sys

FORBIDDEN = ("asyncio", "aiohttp", "socket", "yaml", "multidict", "yarl", "urllib.request")


def test_the_pure_core_imports_no_io_modules():
    code = (
        "import sys\n"
        f"before = {{m for m in {FORBIDDEN!r} if m in sys.modules}}\n"
        "import proxy.routing, proxy.routing.client_ip, proxy.model_body, proxy.stream_meter\n"
        "import proxy.compare, proxy.request_id, proxy.outcomes, proxy.analysis.sequential\n"
        f"print(sorted(m for m in {FORBIDDEN!r} if m in sys.modules and m not in before))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
