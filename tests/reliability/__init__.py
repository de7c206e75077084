"""The reliability suite (issue 14): hostile input and faults, at two sizes.

CI runs it at the smoke size as part of the normal test run. ``python -m tests.reliability
--full`` runs it at full size (at least 1,000,000 generated inputs per protocol) and prints the
figures every phase recorded. A test reads its size from :func:`size` and records what it
measured with :func:`record`; nothing here asserts on speed.
"""
from __future__ import annotations

import json
import os
from typing import Any

#: the environment variable ``python -m tests.reliability --full`` sets
SIZE_VARIABLE = "CHECKID_RELIABILITY"
#: where recorded figures go (one JSON object per line), when set
REPORT_VARIABLE = "CHECKID_RELIABILITY_REPORT"


def full() -> bool:
    """Whether the suite runs at full size."""
    return os.environ.get(SIZE_VARIABLE, "smoke") == "full"


def size(smoke: int, full_size: int) -> int:
    """``smoke`` in CI, ``full_size`` under ``--full``."""
    return full_size if full() else smoke


def record(phase: str, **figures: Any) -> None:
    """Note one phase's figures (inputs, crashes, hangs, wrong answers, RSS before and after,
    lost requests, ...) for the full run's report; a no-op unless a report file is set."""
    path = os.environ.get(REPORT_VARIABLE)
    if not path:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"phase": phase, **figures}, sort_keys=True) + "\n")
