"""The admin API's changes: rollout actions, a config reload, and outcomes the application
reports.

Invariants
- Every change but `POST /outcomes` needs the admin token (`Access.protected`); outcomes need
  the outcomes token or the admin token.
- Nothing a client sends can forge an audit line: a `reason` is capped at `MAX_REASON`
  characters and its control characters escaped; the actor is the keyed hash of the token.
- A change the state store did not keep is said so: `500` with `"persisted": false` (applied in
  this process only); one it could not take at all changes nothing (`503`).
- Bodies are read within `admin.body_timeout` (`proxy.api.bodies`); outcomes at most
  `MAX_OUTCOMES_BODY` bytes at once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from proxy.analysis.outcome_reports import InvalidBatch, ReportedOutcomes, json_number, parse_batch
from proxy.api.access import Access, Handler
from proxy.api.answers import error_response, json_answer, printable, unknown_route
from proxy.api.bodies import BodyLost, bounded_body, cut, json_body
from proxy.api.status import transition_entry
from proxy.config.reload import ReloadResult
from proxy.rollout.controller import RolloutController
from proxy.rollout.machine import Action, IllegalTransition
from proxy.rollout.store import StateUnavailable
from proxy.runtime import clock
from proxy.telemetry.metrics import Recorder

MAX_REASON = 500  # characters of a `reason`
MAX_OUTCOMES_BODY = 1024 * 1024  # bytes of one POST /outcomes
ROLLOUT_ACTIONS = (
    ("pause", Action.PAUSE),
    ("resume", Action.RESUME),
    ("promote", Action.PROMOTE),
    ("rollback", Action.ROLLBACK),
    ("share", Action.SET_SHARE),
)  # POST /routes/{name}/<path>


class Actions:
    """The handlers of the admin API's changes."""

    def __init__(
        self,
        access: Access,
        controller: RolloutController,
        recorder: Recorder,
        book: ReportedOutcomes,
        reload: Callable[[str], Awaitable[ReloadResult]],
    ):
        self.access = access
        self.controller = controller
        self.recorder = recorder
        self.book = book
        self._reload = reload

    def add_routes(self, app: web.Application) -> None:
        """Serve every change on `app`."""
        for path, action in ROLLOUT_ACTIONS:
            app.router.add_post(f"/routes/{{name}}/{path}", self.access.protected(self.act(action)))
        app.router.add_post("/reload", self.access.protected(self.reload))
        app.router.add_post("/outcomes", self.outcomes)

    def act(self, action: Action) -> Handler:
        """The handler of `action` on the route named in the path."""

        async def act(request: web.Request) -> web.StreamResponse:
            name = request.match_info["name"]
            if name not in self.controller:
                return unknown_route(name)
            try:
                body, problem = await json_body(request, self.access.config.admin.body_timeout)
            except BodyLost:
                return await cut(request)
            if problem is not None:
                return problem
            return await self._apply(name, action, body)

        return act

    async def _apply(self, name: str, action: Action, body: dict[str, Any]) -> web.Response:
        """Check the body's fields, then take `action` on route `name`."""
        reason = body.get("reason")
        if reason is not None and not isinstance(reason, str):
            return error_response(400, "bad_request", "'reason' must be a string")
        if reason is not None and len(reason) > MAX_REASON:
            return error_response(
                400, "bad_request", f"'reason' must be at most {MAX_REASON} characters"
            )
        if reason is not None:
            reason = printable(reason)
        share: float | None = None
        if action is Action.SET_SHARE:
            given = body.get("share")
            if isinstance(given, bool) or not isinstance(given, int | float) or not 0 <= given <= 1:
                return error_response(400, "bad_request", "'share' must be a number in [0, 1]")
            share = float(given)
        keep_share = body.get("keep_share", False)
        if not isinstance(keep_share, bool) or (keep_share and action is not Action.RESUME):
            return error_response(
                400, "bad_request", "'keep_share' must be true or false, and only on resume"
            )
        try:
            outcome = await self.controller.act(
                name,
                action,
                clock.now(),
                actor=self.access.actor,
                reason=reason,
                share=share,
                keep_share=keep_share,
            )
        except IllegalTransition as exc:
            return error_response(
                409, "illegal_transition", str(exc), route=name, state=exc.state.value
            )
        except StateUnavailable as exc:
            return error_response(
                503, "state_unavailable", f"{exc}; nothing was changed: try again", route=name
            )
        result = {
            "route": name,
            **(transition_entry(outcome.transition) or {}),
            "share": self.controller.share(name, clock.now()),
            "persisted": outcome.persisted,
        }
        if not outcome.persisted:
            result["error"] = "state_not_persisted"
            result["message"] = f"applied in this process only: {outcome.error}"
        return json_answer(result, status=200 if outcome.persisted else 500)

    async def reload(self, request: web.Request) -> web.Response:
        """Reload the config file now: 200 with the outcome, 422 with the errors if invalid."""
        result = await self._reload("api")
        return json_answer(result.to_json(), status=422 if result.result == "invalid" else 200)

    async def outcomes(self, request: web.Request) -> web.Response:
        """Take outcomes the application reports: one or a list of `{request_id, name, value}`;
        200 with how many were taken and why the others were not, 422 naming bad items."""
        denied = self.access.check_outcomes_token(request)
        if denied is not None:
            return denied
        config = self.access.config
        try:
            body = await bounded_body(request, MAX_OUTCOMES_BODY, config.admin.body_timeout)
        except BodyLost:
            return await cut(request)
        if body is None:
            return error_response(
                413, "body_too_large", f"at most {MAX_OUTCOMES_BODY} bytes of outcomes at once"
            )
        try:
            # (a long integer is read as a float and refused as a value, not as a 500)
            document = json.loads(body, parse_int=json_number)
        except (ValueError, RecursionError):
            return error_response(400, "invalid_json", "the body is not JSON")
        try:
            reports = parse_batch(document, config.outcomes.max_batch)
            results = self.book.take(reports, time.time())
        except InvalidBatch as exc:
            answer = {"error": "invalid_outcomes", "message": str(exc), "errors": exc.errors[:20]}
            return json_answer(answer, status=422)
        self.recorder.count_not_taken(results)
        return json_answer(results)
