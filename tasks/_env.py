"""Process-wide defaults, set before prefect/mlflow are imported (see README "Hygiene").

Imported by `tasks/__init__.py`, so by every task and flow module and the CLI.

Every value is only a default: a variable already set in the environment wins.
"""

import os
from pathlib import Path

_DEFAULTS = {
    # Prefect: state inside the project, no telemetry, patient start-up on a loaded 2-core box.
    "PREFECT_HOME": str(Path.cwd() / ".prefect"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    # MLflow / DVC / Hugging Face: no telemetry.
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # no per-shard bars when exporting small models
}

for _key, _value in _DEFAULTS.items():
    os.environ.setdefault(_key, _value)
