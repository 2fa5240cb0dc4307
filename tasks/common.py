"""Shared task settings."""

from prefect.cache_policies import NONE

from dept_core.errors import DeptError


def retry_io_only(task, task_run, state) -> bool:
    """Retry transient I/O failures, never bad input (a DeptError will fail the same way)."""
    try:
        state.result()
    except DeptError:
        return False
    except OSError:
        return True
    except Exception:
        return False
    return False


# DVC owns caching of stage outputs; Prefect's result cache stays off (DESIGN "Ownership").
NO_CACHE = dict(cache_policy=NONE, persist_result=False)
IO_RETRIES = dict(retries=2, retry_delay_seconds=1, retry_condition_fn=retry_io_only)
