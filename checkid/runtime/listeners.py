"""Listening sockets, created once by the master and kept by it for the daemon's life.

A TCP listener gets one ``SO_REUSEPORT`` socket per worker slot: the kernel spreads new
connections over them evenly, and because the master keeps every socket open, a worker that
dies leaves its slot's queue intact for the worker that takes the slot over: nothing queued
is refused. A unix-socket listener is one socket shared by all workers (the kernel does not
balance AF_UNIX across reuseport sockets). Its file is removed on exit when the master may
(after a privilege drop it often may not: the directory is root's); otherwise it stays, and
the next start replaces it.
"""
from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
import socket
import stat
from dataclasses import dataclass

from checkid.config import ListenConfig, parse_listen
from checkid.errors import ConfigError

log = logging.getLogger(__name__)

BACKLOG = 1024


@dataclass
class Listener:
    config: ListenConfig
    #: TCP: one socket per worker slot; unix: a single shared socket
    sockets: list[socket.socket]
    unix_path: str = ""

    def for_slot(self, slot: int) -> socket.socket:
        return self.sockets[slot] if len(self.sockets) > 1 else self.sockets[0]

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        if self.unix_path:
            try:
                os.unlink(self.unix_path)
            except FileNotFoundError:
                pass
            except OSError as e:
                log.info("leaving %s for the next start to replace: %s", self.unix_path, e.strerror or e)


def bind(config: ListenConfig, slots: int) -> Listener:
    """Bind ``config``'s address. :raises ConfigError: naming the address that failed"""
    kind, host, port = parse_listen(config.address)
    try:
        if kind == "unix":
            return Listener(config, [_unix(host, config)], host)
        return Listener(config, [_tcp(host, port) for _ in range(slots)])
    except OSError as e:
        raise ConfigError(f"listen {config.address}: {e.strerror or e}") from None


def _tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _unix(path: str, config: ListenConfig) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)  # left by a previous run
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, int(config.mode, 8))
        if config.owner or config.group:
            uid = pwd.getpwnam(config.owner).pw_uid if config.owner else -1
            gid = grp.getgrnam(config.group).gr_gid if config.group else -1
            os.chown(path, uid, gid)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except (OSError, KeyError) as e:
        sock.close()
        if isinstance(e, KeyError):
            raise OSError(f"unknown user or group {e}") from None
        raise
    return sock
