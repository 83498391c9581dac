"""Prefect settings for an offline, server-less run: set before ``prefect`` is first imported.

Ephemeral mode starts a throw-away API per process; analytics would try the network, and the
default ``PREFECT_HOME`` (~/.prefect) would mix this project's runs with everyone else's.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.layout import Layout

DEFAULTS = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "HF_HUB_OFFLINE": "1",
    "DVC_NO_ANALYTICS": "1",
}


def configure(project_root: str | Path = ".") -> None:
    """Fill in the defaults (an explicit environment variable always wins)."""
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("PREFECT_HOME", str(Layout(Path(project_root).resolve()).prefect_home))
