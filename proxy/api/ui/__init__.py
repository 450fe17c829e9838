"""The live status page, `GET /ui` on the admin listener: static files shipped in the package
(no external assets), a page that reads `/status`, `/routes/{name}/verdicts` and
`/routes/{name}/timeline` like any other client and redraws itself every two seconds, its charts
drawn as inline SVG by its own script.

Invariants
- The files carry no data: the rollouts' state reaches a browser only through the JSON API,
  which enforces `admin.protect_reads` (the page then asks for the token and keeps it in the
  tab's session storage, never in a cookie or the URL).
- A strict Content-Security-Policy: scripts, styles and requests to the page's own origin only,
  no inline code, no frames; the script inserts everything the API returns as text, never as
  markup (route names and rollback reasons come from operators and configs).
- Read-only: the page never calls an action.
"""

from __future__ import annotations

from importlib.resources import files

from aiohttp import web

_TYPES = {
    "index.html": "text/html",
    "format.js": "text/javascript",
    "charts.js": "text/javascript",
    "app.js": "text/javascript",
    "app.css": "text/css",
}
_FILES = {name: (files(__package__) / name).read_bytes() for name in _TYPES}
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _file(name: str) -> web.Response:
    return web.Response(
        body=_FILES[name], content_type=_TYPES[name], charset="utf-8", headers=_HEADERS
    )


async def status_page(request: web.Request) -> web.Response:
    """`GET /ui`: the page."""
    return _file("index.html")


async def status_page_asset(request: web.Request) -> web.Response:
    """`GET /ui/{asset}`: its scripts and style sheet."""
    name = request.match_info["asset"]
    if name not in _TYPES or name == "index.html":
        raise web.HTTPNotFound(text="no such file\n")
    return _file(name)
