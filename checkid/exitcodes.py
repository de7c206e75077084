"""The exit statuses of ``checkid`` and of its worker processes, defined once."""
from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    #: done, or stopped on SIGTERM/SIGINT after draining
    OK = 0
    #: an unexpected failure (Python's own status for an uncaught exception)
    FAILURE = 1
    #: bad command-line usage (argparse's own status)
    USAGE = 2
    #: cannot start: the configuration or the policy is refused, or a worker could not boot
    #: (a worker exits with it, and its master then stops with it instead of fork-looping);
    #: starting again unchanged will not help (gunicorn's WORKER_BOOT_ERROR)
    CANNOT_START = 3
