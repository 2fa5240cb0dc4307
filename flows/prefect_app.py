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
goes to the client as before, whose own retries still apply.

Two more changes, both for the time `dept run` spends beside its own server (issue 14):
- a new Prefect database is a copy of a freshly migrated one: Prefect builds a new SQLite
  store by running its ~110 Alembic migrations one by one (~6.5 s of CPU, measured: 9.5 s to
  healthy on a new database against 2.8 s on an existing one) — in every new project, fresh
  clone and test project. The first server of an installed Prefect version snapshots its store
  right after the migrations (schema, block types; no runs) into a cache
  (`$DEPT_CACHE_DIR`, default `~/.cache/dept`), keyed by the Prefect version and its migration
  files; later new stores start as a copy of it and Prefect finds them already migrated. Only
  for the default kind of store (a SQLite file) and only when that file does not exist: an
  existing store is never touched, and any error here leaves Prefect to build it as before.
- docket (the queue of Prefect's background services) polls every 2 s instead of 250 ms:
  an idle server used 1.6 % of a core (~170 thread switches/s) next to the training, 0.9 %
  (~130/s) with this. Only background services' own work waits up to 2 s longer.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import os
import shutil
import sqlite3
import sys
from contextlib import closing
from datetime import timedelta
from pathlib import Path
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


DOCKET_POLL = timedelta(seconds=2)


def quieter_docket() -> None:
    """Make docket Workers created from now on in this process (Prefect's server creates one,
    with defaults) poll every DOCKET_POLL; values a caller passes are kept."""
    from docket import worker

    init = worker.Worker.__init__
    if getattr(init, "dept_poll", None):
        return
    names = list(inspect.signature(init).parameters)[1:]

    def __init__(self, *args, **kwargs):
        given = set(names[:len(args)]) | set(kwargs)
        for name in ("minimum_check_interval", "scheduling_resolution"):
            if name not in given:
                kwargs[name] = DOCKET_POLL
        init(self, *args, **kwargs)

    __init__.dept_poll = DOCKET_POLL
    worker.Worker.__init__ = __init__


def cache_dir() -> Path:
    return Path(os.environ.get("DEPT_CACHE_DIR")
                or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dept")


def sqlite_store() -> Path | None:
    """The file of Prefect's database when it is a SQLite file (the default), else None."""
    from prefect.settings import get_current_settings

    url = get_current_settings().server.database.connection_url
    url = url.get_secret_value() if url is not None else ""
    for prefix in ("sqlite+aiosqlite:///", "sqlite:///"):
        if url.startswith(prefix) and ":memory:" not in url and "?" not in url:
            return Path(url[len(prefix):])
    return None


def template_path() -> Path:
    """The cached fresh store for this Prefect: keyed by its version and migration files."""
    import prefect
    from prefect.server import database

    versions = Path(database.__file__).parent / "_migrations" / "versions" / "sqlite"
    key = hashlib.sha256("\n".join(sorted(os.listdir(versions))).encode()).hexdigest()[:12]
    return cache_dir() / f"prefect-{prefect.__version__}-{key}.db"


def _migrated(path: Path) -> bool:
    try:  # immutable: read as a plain file, no -wal/-shm files next to it
        with closing(sqlite3.connect(f"file:{path}?immutable=1", uri=True)) as con:
            return bool(con.execute("select version_num from alembic_version").fetchone())
    except sqlite3.Error:
        return False


def seed_store(store: Path, template: Path) -> bool:
    """Start a store that does not exist yet as a copy of the template; True when it did. Never
    replaces an existing file (a hard link that fails if one appeared meanwhile)."""
    if store.exists() or not template.is_file() or not _migrated(template):
        return False
    store.parent.mkdir(parents=True, exist_ok=True)
    tmp = store.with_name(f".{store.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(template, tmp)
        os.link(tmp, store)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def snapshot_store(store: Path, template: Path) -> None:
    """Copy a store (just migrated, no runs yet) to the template, atomically."""
    template.parent.mkdir(parents=True, exist_ok=True)
    tmp = template.with_name(f".{template.name}.{os.getpid()}.tmp")
    try:
        with closing(sqlite3.connect(store)) as src, closing(sqlite3.connect(tmp)) as dst:
            src.backup(dst)
            # a single self-contained file (Prefect switches every connection to WAL itself)
            dst.execute("pragma journal_mode = delete")
        if _migrated(tmp):
            os.replace(tmp, template)
    finally:
        tmp.unlink(missing_ok=True)


class SnapshotAfterStartup:
    """ASGI wrapper: once the app reports its lifespan startup complete (migrations and block
    types done, no request served yet), snapshot the new store to the template."""

    def __init__(self, app: Any, store: Path, template: Path, lock: Any = None):
        self.app, self.store, self.template, self.lock = app, store, template, lock

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "lifespan":
            return await self.app(scope, receive, send)

        async def send_after_snapshot(message):
            if message["type"] == "lifespan.startup.complete" and not self.template.exists():
                try:
                    snapshot_store(self.store, self.template)
                except (OSError, sqlite3.Error):
                    pass  # no cache this time: the next new store is migrated as before
            if message["type"].startswith("lifespan.startup") and self.lock is not None:
                self.lock.release()  # the new store is migrated: other servers may open it
                self.lock = None
            await send(message)

        await self.app(scope, receive, send_after_snapshot)


def create_app():
    """Prefect's app (`prefect.server.api.server:create_app`, configured by the same
    environment as the CLI's server and Prefect's ephemeral one), wrapped."""
    quieter_docket()
    store = template = lock = None
    try:
        store, template = sqlite_store(), template_path()
        if store is not None:
            # two servers creating one new store would both migrate it: the one that creates
            # it holds a file lock (filelock) until its migrations are done; a server that
            # finds the store waits for that lock before opening it
            from filelock import FileLock

            store.parent.mkdir(parents=True, exist_ok=True)
            lock = FileLock(store.with_name(f".{store.name}.lock"), thread_local=False)
            lock.acquire()
        if store is not None and (store.exists() or seed_store(store, template)):
            store = None  # an existing store, or one seeded now: nothing to snapshot
    except (OSError, sqlite3.Error):
        store = None
    from prefect.server.api.server import create_app as prefect_app

    app = RetryLockedRequests(prefect_app())
    if store is not None:
        return SnapshotAfterStartup(app, store, template, lock)
    if lock is not None:
        lock.release()
    return app


def ephemeral_server(port: int, env: dict | None = None) -> tuple[list[str], dict]:
    """The command and environment of the server `dept` starts for itself: uvicorn over this
    module's app, as Prefect starts its temporary server (ephemeral mode, no UI)."""
    import importlib.util

    app_dir = Path(importlib.util.find_spec("prefect").submodule_search_locations[0]).parent
    cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(app_dir), "--factory",
           "flows.prefect_app:create_app", "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "error", "--lifespan", "on"]
    return cmd, {**(os.environ if env is None else env), "PREFECT_UI_ENABLED": "0",
                 "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}


def warm_template(timeout: float = 120.0) -> Path:
    """Make the cached migrated store now if there is none (one Prefect server run in a scratch
    Prefect home, stopped once it answers); returns its path. For benchmarks and set-up."""
    import socket
    import subprocess
    import tempfile
    import time
    import urllib.request

    with tempfile.TemporaryDirectory(prefix="dept-prefect-") as home:
        env = {k: v for k, v in os.environ.items() if k not in (
            "PREFECT_API_URL", "PREFECT_API_DATABASE_CONNECTION_URL",
            "PREFECT_SERVER_DATABASE_CONNECTION_URL")}  # the default store, in that home
        env["PREFECT_HOME"] = home
        code = "from flows.prefect_app import template_path; print(template_path())"
        template = Path(subprocess.run([sys.executable, "-c", code], env=env, check=True,
                                       capture_output=True, text=True).stdout.strip())
        if template.is_file():
            return template
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        cmd, env = ephemeral_server(port, env)
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            end = time.monotonic() + timeout
            while True:
                if proc.poll() is not None or time.monotonic() > end:
                    raise RuntimeError("the Prefect server did not start: "
                                       + proc.stderr.read().decode()[-2000:])
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health",
                                           timeout=2).close()
                    break
                except OSError:
                    time.sleep(0.1)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    if not template.is_file():
        raise RuntimeError(f"no Prefect store template was written to {template.parent}")
    return template


if __name__ == "__main__":
    print(warm_template())
