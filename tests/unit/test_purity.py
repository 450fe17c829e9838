"""The decision core stays pure: no event loop, no HTTP, no file or network I/O."""

from __future__ import annotations

import subprocess
import sys

FORBIDDEN = ("asyncio", "aiohttp", "socket", "yaml", "multidict", "yarl", "urllib.request")


def test_the_pure_core_imports_no_io_modules():
    code = (
        "import sys\n"
        f"before = {{m for m in {FORBIDDEN!r} if m in sys.modules}}\n"
        "import proxy.routing, proxy.routing.client_ip, proxy.dataplane.model_body\n"
        "import proxy.dataplane.stream_meter, proxy.dataplane.compare, proxy.records.request_id\n"
        "import proxy.analysis.outcome_reports, proxy.analysis.sequential\n"
        "import proxy.analysis.verdict, proxy.analysis.intervals, proxy.analysis.checks\n"
        "import proxy.analysis.sample_ratio, proxy.analysis.assessment\n"
        f"print(sorted(m for m in {FORBIDDEN!r} if m in sys.modules and m not in before))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
