"""Offline-friendly process defaults, applied once when ``tasks`` is imported.

Nothing here may reach a network: analytics and telemetry are off, and the Hugging Face hub is offline unless
the user says otherwise (set ``HF_HUB_OFFLINE=0`` to let ``from_pretrained`` download on a connected machine).
``setdefault`` everywhere: a value the user exported wins.
"""

from __future__ import annotations

import os

OFFLINE_DEFAULTS = {
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "GX_ANALYTICS_ENABLED": "false",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # Artifact uploads print progress bars into every stage log; the stage logs its own progress.
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def apply_offline_defaults() -> None:
    for key, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(key, value)
