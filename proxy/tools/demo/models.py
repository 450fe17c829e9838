"""Two toy model servers for the demo: a sentiment classifier and a streaming chat model.

The stable (v1) and candidate (v2) versions answer visibly differently and at different speeds,
so a split through the proxy is easy to see. They speak a KServe-like predict API and an
OpenAI-like chat completions API (with server-sent events when `stream` is true).
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from dataclasses import dataclass, field

from aiohttp import web

_POSITIVE = {"good": 1.0, "great": 2.0, "love": 2.0, "excellent": 2.0, "fast": 1.0, "nice": 1.0}
_NEGATIVE = {"bad": 1.0, "awful": 2.0, "hate": 2.0, "slow": 1.0, "broken": 2.0, "poor": 1.0}
_NEGATIONS = {"not", "never", "no", "hardly"}
_WORD = re.compile(r"[a-z']+")


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One version of the toy model: its name, latency (seconds) and chat style."""

    version: str
    latency: float
    token_delay: float
    negation_aware: bool
    greeting: str


STABLE_MODEL = ModelSpec("v1", latency=0.015, token_delay=0.03, negation_aware=False, greeting="Hi")
CANDIDATE_MODEL = ModelSpec(
    "v2", latency=0.018, token_delay=0.02, negation_aware=True, greeting="Hello there"
)
MODEL = web.AppKey("model", ModelSpec)


@dataclass
class Degradation:
    """Makes a model go bad `after` seconds: some answers fail, all get slower."""

    after: float | None
    error_rate: float = 0.15
    slowdown: float = 3.0
    started: float = field(default_factory=time.monotonic)

    @property
    def active(self) -> bool:
        """Whether the model has gone bad by now."""
        return self.after is not None and time.monotonic() - self.started >= self.after

    def failed(self) -> web.Response | None:
        """An error answer for a share of requests while degraded, else None."""
        if self.active and random.random() < self.error_rate:
            return web.json_response({"error": "model overloaded"}, status=503)
        return None

    def latency(self, seconds: float) -> float:
        """`seconds`, slowed down while degraded."""
        return seconds * self.slowdown if self.active else seconds


DEGRADATION = web.AppKey("degradation", Degradation)


def classify(text: str, spec: ModelSpec) -> dict[str, object]:
    """Score `text`: v1 counts lexicon words, v2 also flips words after a negation."""
    score = 0.0
    negate = False
    for word in _WORD.findall(text.lower()):
        if spec.negation_aware and word in _NEGATIONS:
            negate = True
            continue
        weight = _POSITIVE.get(word, 0.0) - _NEGATIVE.get(word, 0.0)
        score += -weight if negate else weight
        negate = False
    if spec.negation_aware and abs(score) < 0.5:
        label = "neutral"
    else:
        label = "positive" if score >= 0 else "negative"
    return {"label": label, "score": round(score, 2)}


async def _pause(seconds: float) -> None:
    await asyncio.sleep(seconds * random.uniform(0.7, 1.3))


async def predict(request: web.Request) -> web.Response:
    """KServe-style ``{"instances": [{"text": ...}]}`` → ``{"predictions": [...]}``."""
    spec, degradation = request.app[MODEL], request.app[DEGRADATION]
    try:
        body = await request.json()
        texts = [str(item["text"]) for item in body["instances"]]
    except (ValueError, KeyError, TypeError):
        return web.json_response({"error": 'expected {"instances": [{"text": "..."}]}'}, status=400)
    await _pause(degradation.latency(spec.latency))
    failure = degradation.failed()
    if failure is not None:
        return failure
    predictions = [classify(text, spec) for text in texts]
    return web.json_response({"model": f"sentiment-{spec.version}", "predictions": predictions})


def _reply(spec: ModelSpec, prompt: str) -> list[str]:
    words = f"{spec.greeting}! You said {len(prompt.split())} words; model {spec.version} agrees."
    return [word + " " for word in words.split()]


async def chat(request: web.Request) -> web.StreamResponse:
    """OpenAI-style chat completions; streams tokens as server-sent events when asked."""
    spec, degradation = request.app[MODEL], request.app[DEGRADATION]
    try:
        body = await request.json()
        prompt = " ".join(str(m["content"]) for m in body["messages"])
    except (ValueError, KeyError, TypeError):
        return web.json_response({"error": 'expected {"messages": [...]}'}, status=400)
    model = f"chat-{spec.version}"
    tokens = _reply(spec, prompt)
    await _pause(degradation.latency(spec.latency))
    failure = degradation.failed()
    if failure is not None:
        return failure
    if not body.get("stream"):
        message = {"role": "assistant", "content": "".join(tokens).strip()}
        return web.json_response({"model": model, "choices": [{"index": 0, "message": message}]})
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    try:
        await response.prepare(request)
        for token in tokens:
            chunk = {"model": model, "choices": [{"index": 0, "delta": {"content": token}}]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await _pause(spec.token_delay)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client hung up mid-stream (`curl ... | head`): nothing to finish
    return response


async def healthz(request: web.Request) -> web.Response:
    """Liveness of the toy model server."""
    return web.json_response({"status": "ok", "version": request.app[MODEL].version})


def build_model_app(spec: ModelSpec, degrade_after: float | None = None) -> web.Application:
    """A toy model server for `spec`, going bad `degrade_after` seconds after it starts."""
    app = web.Application()
    app[MODEL] = spec
    app[DEGRADATION] = Degradation(degrade_after)
    app.router.add_post("/v1/models/sentiment:predict", predict)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/healthz", healthz)
    return app
