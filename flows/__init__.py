"""Prefect flows: one per pipeline stage plus the end-to-end flow; `dept` is their CLI.

Layering: flows -> tasks -> dept_core. Importing `tasks` first sets the process defaults
(tasks/_env.py) before prefect is imported.
"""

import tasks  # noqa: F401
