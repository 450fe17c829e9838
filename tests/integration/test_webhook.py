"""The rollback webhook toward a receiver that misbehaves: no redirects, no secrets in logs."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.analysis.webhook import RollbackNotifier
from proxy.config.loader import parse_config
from proxy.rollout.machine import Action, State, Transition
from tests.support.configs import route_yaml
from tests.support.upstream import url_of


async def test_a_redirect_is_not_followed_and_the_path_is_never_logged(caplog):
    hits: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        hits.append(request.path)
        if request.path.startswith("/hook"):
            raise web.HTTPTemporaryRedirect("/elsewhere")
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/{tail:.*}", hook)
    receiver = TestServer(app, host="127.0.0.1")
    await receiver.start_server()
    base = url_of(receiver)
    url = f"{base}/hook/T0KEN-in-the-path"
    config = parse_config(
        "routes:\n"
        + route_yaml(
            "http://127.0.0.1:1",
            "http://127.0.0.1:2",
            extra=f'    on_rollback: {{webhook: "{url}", attempts: 1, timeout: 2s}}\n',
        )
    )
    notifier = RollbackNotifier()
    await notifier.start()
    try:
        with caplog.at_level(logging.INFO, logger="grayscale.webhook"):
            transition = Transition(
                Action.ROLLBACK, 1.0, "analysis", State.RAMPING, State.ROLLED_BACK
            )
            notifier(config.routes[0], transition, None)
            await notifier.close()
    finally:
        await receiver.close()
    assert hits == ["/hook/T0KEN-in-the-path"]  # the redirect was not followed
    (record,) = [r for r in caplog.records if "webhook" in r.getMessage()]
    assert "status 307" in record.getMessage()
    assert record.__dict__["url"] == base
    assert "T0KEN" not in caplog.text
