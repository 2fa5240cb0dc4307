"""Prefect tasks: thin, typed adapters over dept_core, one concern each; MLflow lives here."""

from tasks import _env  # noqa: F401  (process defaults, before prefect/mlflow are imported)
