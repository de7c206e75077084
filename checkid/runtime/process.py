"""What the daemon's processes do to themselves: their names, the privilege drop, where
their state lives, how a forked child leaves, and how an exit status reads in the log."""
from __future__ import annotations

import ctypes
import grp
import logging
import os
import pwd
import signal
import sys
from collections.abc import Iterable
from pathlib import Path

from checkid.config import Config
from checkid.errors import ConfigError

log = logging.getLogger(__name__)


def name_process(name: str) -> None:
    """The name ps, top and /proc/PID/comm show (Linux keeps 15 bytes), so an operator can
    tell the master, each worker slot and the metrics process apart."""
    try:
        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass  # not Linux: the names are a convenience


def state_dir(config: Config) -> str:
    """``[server] state_dir``, else systemd's ``$STATE_DIRECTORY`` (``StateDirectory=``), else
    the default for root or for an unprivileged user."""
    if config.server.state_dir:
        return config.server.state_dir
    if os.environ.get("STATE_DIRECTORY"):
        return os.environ["STATE_DIRECTORY"].split(":")[0]
    if os.geteuid() == 0:
        return "/var/lib/checkid"
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(base, "checkid")


def drop_privileges(config: Config, owned: Iterable[Path]) -> None:
    """When root and ``[server] user`` is set, give ``owned`` (and everything under it) to
    that user and become it. :raises ConfigError: for an unknown user or group"""
    server = config.server
    if os.geteuid() != 0 or not server.user:
        return
    try:
        user = pwd.getpwnam(server.user)
        gid = grp.getgrnam(server.group).gr_gid if server.group else user.pw_gid
    except KeyError as e:
        raise ConfigError(f"server.user/group: unknown {e}") from None
    for path in owned:
        for p in [path, *path.rglob("*")] if path.exists() else []:
            os.chown(p, user.pw_uid, gid)
    os.setgroups([])
    os.setgid(gid)
    os.setuid(user.pw_uid)
    log.info("running as %s:%s", server.user, server.group or user.pw_gid)


def exit_now(code: int) -> None:
    """Leave the forked child without running the parent's cleanup (atexit, buffers)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def describe(status: int) -> str:
    """A ``waitpid`` status as the log says it: "exit 3", "killed by SIGKILL"."""
    code = os.waitstatus_to_exitcode(status)
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
