"""Prefect flows: one per pipeline stage plus the end-to-end flow; `dept` is their CLI."""

from flows import _env  # noqa: F401  (must run before prefect is imported)
