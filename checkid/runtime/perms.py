"""Who may change what the daemon runs: sshd's StrictModes for the policy and config files.

The master reads the config and executes the policy file, as root when it is started as
root. A file that another local user can change (or replace, through a directory they can
write) is a way to run code as root, or to turn the checks off. :func:`check_private`
refuses one, naming the path and its mode. It accepts an owner of root or the run user, and
refuses a group or other write bit on the file and on every directory from its own up to
``/``. A world-writable directory with the sticky bit, such as ``/tmp``, is accepted on the
way when root or the run user owns it: there nobody but an entry's owner (and the
directory's) can rename or remove it, and the entry below it is checked in turn, so a file
another user planted in ``/tmp`` is refused by its owner. A sticky directory another user
owns is refused like any directory of theirs (they may remove what is in it). Symbolic
links are followed, and the directories that hold the path as it is written are checked
too (whoever can write those can change where the link points).

:func:`check_daemon_files` adds what a privilege drop needs: after it the master reads the
configuration on SIGHUP and the policy file on SIGHUP and on each edit as the run user, so
that user must be able to read both (:func:`unreadable_by`).
"""
from __future__ import annotations

import grp
import os
import pwd
import stat

from checkid.errors import ConfigError


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


def run_ids(user: str, group: str) -> tuple[int, int]:
    """The uid and gid the daemon runs as once it dropped its privileges (``[server] user``
    and ``group``, the user's own group by default), or root's when no user is named.

    :raises ConfigError: an unknown user or group
    """
    if not user:
        return ROOT_UID, os.getegid()
    try:
        entry = pwd.getpwnam(user)
        gid = grp.getgrnam(group).gr_gid if group else entry.pw_gid
    except KeyError as e:
        raise ConfigError(f"server.user/group: unknown {e}") from None
    return entry.pw_uid, gid


def unreadable_by(path: str | os.PathLike[str], uid: int, gid: int) -> str | None:
    """Why ``uid``:``gid`` cannot open ``path`` for reading, or None when it can. It really
    opens the file with those ids (and no supplementary groups, as after the privilege drop),
    so every rule the kernel applies counts: modes, each directory's search bit, ACLs.
    Called as root (it switches its effective ids and back); as anyone else it checks as itself.

    :param path: the file, as the configuration names it
    """
    switch = os.geteuid() == ROOT_UID and uid != ROOT_UID
    saved = (os.getegid(), os.getgroups())
    if switch:
        os.setgroups([])
        os.setegid(gid)
        os.seteuid(uid)
    try:
        with open(path, "rb"):
            return None
    except OSError as e:
        return f"{path}: uid {uid} gid {gid} cannot read it: {e.strerror or e}"
    finally:
        if switch:
            os.seteuid(ROOT_UID)
            os.setegid(saved[0])
            os.setgroups(saved[1])


def check_daemon_files(named: list[tuple[str, str]], uid: int, gid: int, readable: bool = True) -> list[str]:
    """What is wrong with the files a root-started daemon reads after it dropped to ``uid``:
    each ``(key, path)`` (the configuration file, the policy file) must be private
    (:func:`check_private`) and, with ``readable``, readable by ``uid``:``gid`` (SIGHUP and
    the policy edits read them after the drop). Empty when all is well.

    :returns: one message per fault, each naming the key
    """
    faults = []
    for key, path in named:
        try:
            check_private(path, uid)
        except ConfigError as e:
            faults.append(f"{key}: {e}")
            continue
        problem = unreadable_by(path, uid, gid) if readable else None
        if problem is not None:
            faults.append(f"{key}: {problem}; after the privilege drop a reload could not read it: "
                          f"give it to group {gid} with mode 0640, or to uid {uid}")
    return faults
