"""The Prefect server the pipeline starts itself: Prefect's own app, retrying lost SQLite races.

    python -m uvicorn --factory flows.prefect_app:create_app --host 127.0.0.1 --port N

Used by `dept`'s temporary server and by `scripts/with_prefect_server.sh` (the shared server
of `make demo`/`dvc repro`); a server you run yourself (PREFECT_API_URL) is left as it is.

Why (measured on the smoke config, issue 14): on its SQLite store, Prefect's server answers a
write that lost a race with its own background task-run recorder with 503 ("database is
locked": the request's deferred transaction cannot be upgraded, so SQLite's busy timeout does
not apply), and the client then waits 2 s (its first back-off step) before trying again —
about once per subflow after a burst of task runs. The rolled-back request is replayed here
after a few milliseconds instead (at most `RETRIES` times within ~1.5 s); a 503 that persists
goes to the client as before, whose own retries still apply. Nothing else changes.
"""

from __future__ import annotations

import asyncio
from typing import Any

RETRIES = 5
FIRST_DELAY = 0.05  # seconds; doubled per retry: 0.05 + 0.1 + 0.2 + 0.4 + 0.8


class RetryLockedRequests:
    """ASGI middleware: replay an HTTP request whose response is a 503 (Prefect's answer to a
    retryable database error, its transaction rolled back), with short back-off: the same
    request Prefect's client would send again after its own back-off, only sooner."""

    def __init__(self, app: Any, retries: int = RETRIES, first_delay: float = FIRST_DELAY):
        self.app, self.retries, self.first_delay = app, retries, first_delay

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":  # lifespan, websockets (events, logs): untouched
            return await self.app(scope, receive, send)
        body, more = [], True
        while more:  # the request body, kept so the request can be replayed
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, _replay([message], receive), send)
            body.append(message)
            more = message.get("more_body", False)
        pristine, delay = dict(scope), self.first_delay
        for attempt in range(self.retries + 1):
            retry = attempt < self.retries
            state = {"held": False}

            async def send_or_hold(message, state=state, retry=retry):
                if message["type"] == "http.response.start" and message["status"] == 503 \
                        and retry:
                    state["held"] = True  # this attempt's answer is dropped; replayed below
                if not state["held"]:
                    await send(message)

            try:
                # a fresh copy of the scope per attempt: routing rewrites it (mounts)
                await self.app(dict(pristine), _replay(list(body), receive), send_or_hold)
            except Exception:
                if not state["held"]:
                    raise
                # Starlette re-raises the error after sending its 503: this attempt is over
            if not state["held"]:
                return
            await asyncio.sleep(delay)
            delay *= 2


def _replay(messages: list[dict], receive):
    async def replayed() -> dict:
        return messages.pop(0) if messages else await receive()
    return replayed


def create_app():
    """Prefect's app (`prefect.server.api.server:create_app`, configured by the same
    environment as the CLI's server and Prefect's ephemeral one), wrapped."""
    from prefect.server.api.server import create_app as prefect_app

    return RetryLockedRequests(prefect_app())
