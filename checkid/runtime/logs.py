"""Logging of the daemon's processes: the set-up, the reopen on SIGUSR1 (after logrotate),
and the fault handler that writes a hung or crashing worker's traceback into the same log."""
from __future__ import annotations

import faulthandler
import logging
import sys
from typing import TextIO

from checkid.config import Config

log = logging.getLogger(__name__)

FORMAT = "%(asctime)s checkid[%(process)d]: %(levelname)s %(name)s: %(message)s"


def setup_logging(config: Config) -> None:
    """Log to ``[server] log_file``, or to stderr when it is empty."""
    path = config.server.log_file
    handler: logging.Handler = logging.FileHandler(path) if path else logging.StreamHandler()
    handler.setFormatter(logging.Formatter(FORMAT))
    logging.basicConfig(level=config.server.log_level.upper(), handlers=[handler], force=True)


def reopen_logs() -> None:
    """SIGUSR1: reopen the log file (after logrotate moved it).

    The new file is opened before the old one is closed: when it cannot be (after a
    privilege drop the log directory may not be writable), the error is logged and the
    process keeps writing to the file it has.
    """
    for handler in logging.getLogger().handlers:
        if not isinstance(handler, logging.FileHandler):
            continue
        handler.acquire()
        try:
            try:
                stream = handler._open()
            except OSError as e:
                error: OSError | None = e
            else:
                error = None
                old, handler.stream = handler.stream, stream
                if faulthandler.is_enabled():
                    enable_faulthandler()  # onto the new file, before the old fd can be reused
                if old is not None:
                    old.close()
        finally:
            handler.release()
        if error is not None:
            log.error("cannot reopen the log file %s, logging on to the one open: %s",
                      handler.baseFilename, error.strerror or error)
        else:
            log.info("log reopened")


def enable_faulthandler() -> None:
    """Dump every thread's traceback into the log on SIGABRT (what the master sends a hung
    worker) and on a fatal signal (SIGSEGV, SIGBUS, ...)."""
    faulthandler.enable(file=_log_stream(), all_threads=True)


def _log_stream() -> TextIO:
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is not None:
            return handler.stream
    return sys.stderr
