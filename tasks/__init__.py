"""Prefect tasks: thin, typed adapters over dept_core, one concern each."""

from flows import _env  # noqa: F401  (must run before prefect is imported)
