"""flows/prefect_app.py: the Prefect server the pipeline starts replays a request that lost a
SQLite race (503) instead of sending the client into its 2 s back-off; starts a new store as a
copy of a migrated one; polls docket every 2 s."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import subprocess
import time
import urllib.request
from contextlib import closing
from datetime import timedelta
from pathlib import Path

import pytest

from flows.prefect_app import (DOCKET_POLL, RetryLockedRequests, SnapshotAfterStartup,
                               create_app, ephemeral_server, quieter_docket, seed_store,
                               warm_template)


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
    if isinstance(app, SnapshotAfterStartup):  # no store yet in this session's Prefect home
        app = app.app
    assert isinstance(app, RetryLockedRequests)
    assert any(getattr(r, "path", "") == "/api" for r in app.app.routes)


def test_docket_workers_poll_every_2_s_unless_the_caller_says_otherwise():
    from docket import Docket, Worker

    quieter_docket()
    quieter_docket()  # idempotent: not wrapped twice
    docket = Docket(name="dept-test", url="memory://")
    w = Worker(docket)
    assert w.minimum_check_interval == w.scheduling_resolution == DOCKET_POLL
    fast = timedelta(milliseconds=100)
    w = Worker(docket, minimum_check_interval=fast)
    assert w.minimum_check_interval == fast and w.scheduling_resolution == DOCKET_POLL
    w = Worker(docket, "w", 10, timedelta(minutes=5), timedelta(seconds=5), fast)  # positional
    assert w.minimum_check_interval == fast and w.scheduling_resolution == DOCKET_POLL


def _migrated_store(path: Path) -> None:
    with closing(sqlite3.connect(path)) as con, con:
        con.execute("create table alembic_version (version_num text)")
        con.execute("insert into alembic_version values ('head')")


def test_a_store_is_seeded_only_when_it_does_not_exist_and_the_template_is_sound(tmp_path):
    template, store = tmp_path / "cache" / "t.db", tmp_path / "home" / "prefect.db"
    assert not seed_store(store, template) and not store.exists()  # no template
    template.parent.mkdir()
    template.write_bytes(b"not a database")
    assert not seed_store(store, template) and not store.exists()  # unsound template
    template.unlink()
    _migrated_store(template)
    assert seed_store(store, template) and store.read_bytes() == template.read_bytes()
    store.write_bytes(b"a store with runs")
    assert not seed_store(store, template)
    assert store.read_bytes() == b"a store with runs"  # an existing store is never touched
    assert sorted(p.name for p in store.parent.iterdir()) == ["prefect.db"]  # no temp files


def _serve_once(home: Path, cache: Path) -> None:
    """Start the pipeline's Prefect server (as `dept` does) until it answers, then stop it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd, env = ephemeral_server(port, {**os.environ, "PREFECT_HOME": str(home),
                                        "DEPT_CACHE_DIR": str(cache)})
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen(cmd, env=env, cwd=Path(__file__).resolve().parent.parent,
                            stdin=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 120
        while True:
            assert proc.poll() is None, "the server exited"
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2).close()
                break
            except OSError:
                assert time.monotonic() < end, "the server did not answer"
                time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_first_new_store_becomes_the_template_of_the_next_ones(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("DEPT_CACHE_DIR", str(cache))
    template = warm_template()  # one Prefect server run in a scratch Prefect home
    assert warm_template() == template  # made once
    assert template.parent == cache and template.name.startswith("prefect-")
    assert sorted(p.name for p in cache.iterdir()) == [template.name]
    with closing(sqlite3.connect(template)) as con:
        assert con.execute("pragma journal_mode").fetchone() == ("delete",)
        assert con.execute("select count(*) from alembic_version").fetchone() == (1,)
        assert con.execute("select count(*) from block_type").fetchone()[0] > 0
        assert con.execute("select count(*) from flow_run").fetchone() == (0,)
        with con:  # mark it, to see the next new store start from it
            con.execute("create table dept_marker (x)")
    _serve_once(tmp_path / "home2", cache)
    with closing(sqlite3.connect(tmp_path / "home2" / "prefect.db")) as con:
        assert con.execute("select count(*) from dept_marker").fetchone() == (0,)
        assert con.execute("pragma journal_mode").fetchone() == ("wal",)  # Prefect's own
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "home2").iterdir())

