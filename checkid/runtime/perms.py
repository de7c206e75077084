"""Who may change what the daemon runs: sshd's StrictModes for the policy and config files.

The master reads the config and executes the policy file, as root when it is started as
root. A file that another local user can change (or replace, through a directory they can
write) is a way to run code as root, or to turn the checks off. :func:`check_private`
refuses one, naming the path and its mode. It accepts an owner of root or the run user, and
refuses a group or other write bit on the file and on every directory from its own up to
``/``. A world-writable directory with the sticky bit, such as ``/tmp``, is accepted on the
way: there nobody can rename or remove an entry they do not own. Symbolic links are
followed, and the directories that hold the path as it is written are checked too (whoever
can write those can change where the link points).
"""
from __future__ import annotations

import logging
import os
import stat

from checkid.errors import ConfigError

log = logging.getLogger(__name__)

#: root: may own anything the daemon reads, it could change it anyway
ROOT_UID = 0
#: the write bits of a group and of everyone else: either lets another user change the file
OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH


def check_private(path: str | os.PathLike[str], run_uid: int) -> None:
    """Refuse ``path`` (a policy or config file) when anyone but root or ``run_uid`` can
    change it: the file, or a directory it is reached through, owned by another user, or
    writable by a group or by everyone (a sticky directory excepted).

    :param path: the file, as the configuration names it
    :param run_uid: the user the daemon runs as (after any privilege drop)
    :raises ConfigError: naming the path, the file or directory at fault and its mode
    """
    given = os.path.abspath(os.fspath(path))
    real = os.path.realpath(given)
    seen: set[str] = set()
    for where in (real, *_directories(real), *_directories(given)):
        if where in seen:
            continue
        seen.add(where)
        problem = _problem(where, run_uid, is_file=where == real)
        if problem is not None:
            log.error("refusing %s: %s (StrictModes: only root or uid %d may change it)", given, problem, run_uid)
            raise ConfigError(f"{given}: {problem}: only root or uid {run_uid} may be able to change it")


def _directories(path: str) -> list[str]:
    """The directories holding ``path``, from its own up to ``/``."""
    found = []
    parent = os.path.dirname(path)
    while True:  # bounded: each round takes one component off
        found.append(parent)
        up = os.path.dirname(parent)
        if up == parent:
            return found
        parent = up


def _problem(where: str, run_uid: int, is_file: bool) -> str | None:
    """What lets another user change ``where``, or None."""
    try:
        st = os.lstat(where)
    except OSError as e:
        return f"cannot stat {where}: {e.strerror or e}"
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        return None  # a link's own mode means nothing; its directory and its target are checked
    if is_file and not stat.S_ISREG(st.st_mode):
        return f"{where} is not a regular file (mode {mode:04o})"
    if st.st_uid not in (ROOT_UID, run_uid):
        return f"{where} is owned by uid {st.st_uid} (mode {mode:04o})"
    if mode & OTHERS_WRITE and not (stat.S_ISDIR(st.st_mode) and mode & stat.S_ISVTX):
        who = "everyone" if mode & stat.S_IWOTH else f"group {st.st_gid}"
        return f"{where} is writable by {who} (mode {mode:04o})"
    return None
