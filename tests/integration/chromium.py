"""A real headless Chromium driven over the DevTools protocol (a WebSocket, with aiohttp), for
the tests of the status page: navigate, evaluate JavaScript, collect the page's errors, take a
screenshot. No WebDriver: Chromium alone is enough."""

from __future__ import annotations

import asyncio
import base64
import itertools
import shutil
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.integration.conftest import free_port

MISSING = "chromium is not installed (Debian: apt-get install chromium)"


class Browser:
    """One headless Chromium process and its first page."""

    def __init__(self, binary: str, folder: Path) -> None:
        self.binary = binary
        self.folder = folder
        self.port = free_port()
        self.process: asyncio.subprocess.Process | None = None
        self.session: aiohttp.ClientSession | None = None
        self.socket: aiohttp.ClientWebSocketResponse | None = None
        self.errors: list[str] = []  # exceptions and console errors the page raised
        self._ids = itertools.count(1)

    @classmethod
    def find(cls, folder: Path) -> Browser | None:
        binary = shutil.which("chromium") or shutil.which("chromium-browser")
        return None if binary is None else cls(binary, folder)

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *[
                self.binary,
                "--headless=new",
                "--no-sandbox",  # (tests may run as root in a container)
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--window-size=1280,1800",
                f"--user-data-dir={self.folder}",
                f"--remote-debugging-port={self.port}",
                "about:blank",
            ],
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        self.session = aiohttp.ClientSession()
        deadline = time.monotonic() + 30
        pages: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not pages:
            try:
                async with self.session.get(f"http://127.0.0.1:{self.port}/json/list") as answer:
                    pages = [t for t in await answer.json() if t["type"] == "page"]
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)
        if not pages:
            raise RuntimeError("chromium did not open its DevTools port within 30 s")
        self.socket = await self.session.ws_connect(
            pages[0]["webSocketDebuggerUrl"], max_msg_size=0
        )
        await self.call("Runtime.enable")
        await self.call("Log.enable")
        await self.call("Page.enable")

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one DevTools command and return its result (events meanwhile are noted)."""
        assert self.socket is not None
        number = next(self._ids)
        await self.socket.send_json({"id": number, "method": method, "params": params})
        while True:
            message = await asyncio.wait_for(self.socket.receive_json(), timeout=30)
            if message.get("id") == number:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message["result"]
                return result
            self._note(message)

    def _note(self, event: dict[str, Any]) -> None:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            self.errors.append(str(params["exceptionDetails"].get("exception", params)))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            self.errors.append(params["entry"]["text"])
        elif method == "Runtime.consoleAPICalled" and params["type"] == "error":
            self.errors.append(str(params["args"]))

    async def use_timezone(self, zone: str) -> None:
        """Run the page in time zone `zone` (an IANA name), whatever the machine's."""
        await self.call("Emulation.setTimezoneOverride", timezoneId=zone)

    async def open(self, url: str) -> None:
        await self.call("Page.navigate", url=url)
        await self.until("document.readyState === 'complete'")

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def until(self, expression: str, within: float = 10.0) -> float:
        """Seconds until `expression` is true in the page (checked every 50 ms)."""
        started = time.monotonic()
        while time.monotonic() - started < within:
            if await self.evaluate(f"Boolean({expression})"):
                return time.monotonic() - started
            await asyncio.sleep(0.05)
        raise AssertionError(f"not true within {within} s: {expression}")

    async def screenshot(self) -> bytes:
        """The page as a PNG."""
        result = await self.call("Page.captureScreenshot", format="png")
        return base64.b64decode(result["data"])

    async def close(self) -> None:
        if self.socket is not None:
            await self.socket.close()
        if self.session is not None:
            await self.session.close()
        if self.process is not None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), timeout=10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
