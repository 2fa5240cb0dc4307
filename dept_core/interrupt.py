"""Ctrl-C and SIGTERM: stop at the next step, say where, leave everything resumable.

The command line (`flows/common.py`) installs `install()` before it runs a stage: the first
SIGINT or SIGTERM only records the signal, and the loops of the method call `check()` at
every optimiser step, evaluation batch and round, which raises `Interrupted` there — so the
run stops within a step, through the ordinary error paths (checkpoints are only written
whole, MLflow runs end KILLED, Prefect marks the flow run crashed), and the same command
resumes from the last finished round. A second signal while that clean-up runs ends the
process at once.

Why a flag and not the default KeyboardInterrupt: the signal arrives in the main thread
wherever it happens to be — inside Prefect's engine, MLflow's client or a library's
`except Exception` — and an exception raised there can be swallowed or leave a half-written
state; a check in our own loops raises at a point we chose. `where(...)` records what is
running, for the one line the user sees.
"""

from __future__ import annotations

import os
import signal

_signal: int | None = None
_stage, _detail = "start-up", ""
_installed = False


class Interrupted(BaseException):
    """Raised by `check()` after SIGINT/SIGTERM (a BaseException, like KeyboardInterrupt:
    `except Exception` blocks let it through)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _handler(signum, frame) -> None:  # noqa: ARG001
    global _signal
    if _signal is not None:  # a second Ctrl-C during clean-up: leave now
        os.write(2, f"dept: interrupted again at {_label()}; stopping now\n".encode())
        os._exit(128 + signum)
    _signal = signum


def install() -> None:
    """Take SIGINT and SIGTERM over (main thread only; idempotent)."""
    global _installed
    if _installed:
        return
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)
    _installed = True


def where(stage: str, detail: str = "") -> None:
    """What is running now (`pretrain glob`), for the interrupt message."""
    global _stage, _detail
    _stage, _detail = stage, detail


def detail(text: str) -> None:
    """Where inside the stage (`round 3/32`)."""
    global _detail
    _detail = text


def _label() -> str:
    return f"{_stage}, {_detail}" if _detail else _stage


def check() -> None:
    """Raise `Interrupted` if a signal arrived (cheap: a global read)."""
    if _signal is not None:
        raise Interrupted(_signal)


def requested() -> int | None:
    return _signal


def message() -> str:
    return f"dept: interrupted at {_label()}; run the same command to resume"


def reset() -> None:
    """Forget a recorded signal (tests; a process that handled the interrupt)."""
    global _signal
    _signal = None


def _termination(exc: BaseException) -> int | None:
    """The signal of Prefect's `TerminationSignal` (Prefect turns SIGTERM into that exception
    while a flow runs), recognised without importing Prefect (dept_core never does)."""
    if type(exc).__name__ == "TerminationSignal" and isinstance(getattr(exc, "signal", None),
                                                                 int):
        return exc.signal
    return None


def is_interrupt(exc: BaseException) -> bool:
    return isinstance(exc, (Interrupted, KeyboardInterrupt)) or _termination(exc) is not None


def exit_code(exc: BaseException) -> int:
    if isinstance(exc, Interrupted):
        return exc.exit_code
    if _termination(exc) is not None:
        return 128 + _termination(exc)
    return 128 + (_signal or signal.SIGINT)


__all__ = ["Interrupted", "check", "detail", "exit_code", "install", "is_interrupt", "message",
           "requested", "reset", "where"]
