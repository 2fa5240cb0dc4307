"""flows/prefect_app.py: the Prefect server the pipeline starts replays a request that lost a
SQLite race (503) instead of sending the client into its 2 s back-off."""

from __future__ import annotations

import asyncio
import json

import pytest

from flows.prefect_app import RetryLockedRequests, create_app


def _call(app, body: bytes = b'{"name": "tokenizers-0"}', path: str = "/api/task_runs/",
          sent: list[dict] | None = None):
    sent = [] if sent is None else sent
    chunks = [{"type": "http.request", "body": body[:5], "more_body": True},
              {"type": "http.request", "body": body[5:], "more_body": False}]

    async def receive():
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "root_path": "", "headers": []}
    asyncio.run(app(scope, receive, send))
    return sent


class LockedFor:
    """An ASGI app that answers like Prefect's under a locked SQLite store for its first
    `n` calls (a 503, then the error re-raised, as Starlette's error middleware does), then
    201; it records what each call saw."""

    def __init__(self, n: int):
        self.n, self.seen = n, []

    async def __call__(self, scope, receive, send):
        body = b""
        while True:
            m = await receive()
            body += m.get("body", b"")
            if not m.get("more_body"):
                break
        self.seen.append((scope["path"], body))
        scope["path"] = "/task_runs/"  # routing rewrites the scope (a mount under /api)
        status = 503 if len(self.seen) <= self.n else 201
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": json.dumps(status).encode()})
        if status == 503:
            raise RuntimeError("database is locked")


def test_a_locked_write_is_replayed_with_its_body_until_it_succeeds():
    app = LockedFor(2)
    sent = _call(RetryLockedRequests(app, first_delay=0.001))
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [201]
    assert [m["body"] for m in sent if m["type"] == "http.response.body"] == [b"201"]
    assert app.seen == [("/api/task_runs/", b'{"name": "tokenizers-0"}')] * 3


def test_a_lock_that_persists_reaches_the_client_as_a_503():
    app, sent = LockedFor(100), []
    with pytest.raises(RuntimeError):  # re-raised after the 503 went out, as without us
        _call(RetryLockedRequests(app, retries=3, first_delay=0.001), sent=sent)
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [503]
    assert len(app.seen) == 4  # the first try and 3 replays; then the client's own retries


def test_other_errors_and_non_http_traffic_pass_through():
    seen = []

    async def app(scope, receive, send):
        seen.append(scope["type"])

    asyncio.run(RetryLockedRequests(app)({"type": "lifespan"}, None, None))
    assert seen == ["lifespan"]
    sent = _call(RetryLockedRequests(LockedFor(0)))
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [201]


def test_the_factory_wraps_prefects_own_app():
    app = create_app()
    assert isinstance(app, RetryLockedRequests)
    assert any(getattr(r, "path", "") == "/api" for r in app.app.routes)
