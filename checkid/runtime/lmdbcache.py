"""The shared cache layer: one LMDB file on this host that every worker reads and writes.

Entries carry a wall-clock expiry, so they mean the same in every process and after a
restart. Values are encoded by the engine's codec (:mod:`checkid.engine.dns.codec`, plain
msgpack, never pickle), so this layer knows no mail type. LMDB gives each write one atomic
transaction and robust locks, so a worker killed mid-write loses at most its own write.
When the map is full, expired entries go first, then the oldest half, then everything: it
is a cache, and the engine keeps serving. When the disk is full, a write fails and is counted
(``degraded{what="cache_write"}``); a file that is not LMDB at open (corrupt, truncated) is
set aside and made anew (``degraded{what="cache_corrupt"}``).

Open it only after fork: py-lmdb refuses to open an environment in a child whose parent
had it open (reference/runtime.md §3).
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Hashable
from typing import Any

import lmdb
import msgpack

from checkid.engine.dns.cache import CacheStats
from checkid.engine.dns.codec import decode_value, encode_value
from checkid.runtime.metrics import degraded

log = logging.getLogger(__name__)

#: LMDB's default key limit is 511 bytes; longer keys are hashed
MAX_KEY = 500
#: readers: a slot per concurrent read transaction (one per worker) plus tools
MAX_READERS = 512
#: the cache says which senders talk to this site: the files are for the run user (and its
#: group, to read), never for any local user, as LMDB's default 0644 would make them
FILE_MODE = 0o640
#: its directory: the same, searchable
DIR_MODE = 0o750
#: the files LMDB keeps in the directory (``subdir=True``)
FILES = ("data.mdb", "lock.mdb")
#: what LMDB raises at open for a file that is not a usable LMDB environment: set aside
CORRUPT = (lmdb.InvalidError, lmdb.CorruptedError, lmdb.VersionMismatchError, lmdb.PageNotFoundError)


def encode_key(key: Hashable) -> bytes:
    raw = msgpack.packb(key, use_bin_type=True)
    return raw if len(raw) <= MAX_KEY else b"#" + hashlib.blake2b(raw, digest_size=32).digest()


def decode_key(raw: bytes) -> Hashable | None:
    """The key :func:`encode_key` stored (lists back as tuples), or None for a hashed one."""
    if raw.startswith(b"#"):
        return None
    try:
        key = msgpack.unpackb(raw, raw=False)
    except (ValueError, TypeError):
        return None
    return tuple(key) if isinstance(key, list) else key


def tighten(path: str) -> None:
    """Take away what :data:`DIR_MODE` and :data:`FILE_MODE` do not grant from the cache
    directory and its files, when this process owns them: a cache an older version made
    0644 (or a directory made with a loose umask) is readable by no one else from now on.
    Never widens a mode; a file owned by another user is left alone."""
    for name, allowed in (("", DIR_MODE), *((f, FILE_MODE) for f in FILES)):
        where = os.path.join(path, name) if name else path
        try:
            st = os.stat(where)
            if st.st_uid == os.geteuid() and st.st_mode & 0o777 & ~allowed:
                os.chmod(where, st.st_mode & 0o777 & allowed)
                log.warning("shared cache %s was mode %o, readable beyond the run user: made %o", where,
                            st.st_mode & 0o777, st.st_mode & 0o777 & allowed)
        except FileNotFoundError:
            continue
        except OSError as e:  # a read-only file system, say: the cache still works
            log.warning("shared cache %s: cannot tighten its mode: %s", where, e.strerror or e)


class LmdbCache:
    """A :class:`~checkid.engine.dns.cache.Cache` in an LMDB file shared by the host's workers."""

    def __init__(self, path: str, size_mb: int, mono: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        os.makedirs(path, mode=DIR_MODE, exist_ok=True)
        self.path = path
        self.map_size = max(1, size_mb) * 1024 * 1024
        try:
            self.env = self._open()
        except CORRUPT as e:
            aside = set_aside(path)
            degraded("cache_corrupt", "shared cache %s is not a usable LMDB file (%s): set aside as %s, "
                     "starting empty", path, e, aside)
            self.env = self._open()
        tighten(path)
        self.mono = mono
        self.wall = wall
        self.stats = CacheStats()
        self.evictions = 0
        self.errors = 0

    def _open(self) -> lmdb.Environment:
        # no writemap: with the map written through memory, a page of a sparse file that the
        # disk has no room for kills the process with SIGBUS; written with pwrite, a full disk
        # is an error (ENOSPC) this layer survives
        return lmdb.open(self.path, map_size=self.map_size, subdir=True, max_readers=MAX_READERS,
                         writemap=False, sync=False, metasync=False, lock=True, mode=FILE_MODE)

    def get(self, key: Hashable, now: float) -> Any | None:
        entry = self.get_entry(key, now)
        return None if entry is None else entry[0]

    def get_entry(self, key: Hashable, now: float) -> tuple[Any, float] | None:
        try:
            with self.env.begin(buffers=True) as txn:
                raw = txn.get(encode_key(key))
                data = None if raw is None else msgpack.unpackb(raw, raw=False)
        except (lmdb.Error, ValueError) as e:
            self.errors += 1
            log.warning("shared cache read failed: %s", e)
            return None
        if data is None:
            self.stats.misses += 1
            return None
        wall_expires, _stored, value = data
        remaining = wall_expires - self.wall()
        if remaining <= 0:
            self.stats.misses += 1
            return None
        try:
            decoded = decode_value(value)
        except (ValueError, TypeError, IndexError):
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        return decoded, now + remaining

    def put(self, key: Hashable, value: Any, expires: float) -> None:
        wall_now = self.wall()
        record = msgpack.packb([expires - self.mono() + wall_now, wall_now, encode_value(value)], use_bin_type=True)
        k = encode_key(key)
        for attempt in range(4):
            try:
                with self.env.begin(write=True) as txn:
                    txn.put(k, record)
                self.stats.puts += 1
                return
            except lmdb.MapFullError:
                self._evict(attempt)
            except lmdb.Error as e:  # a full disk (ENOSPC), an I/O error: the memory layer serves
                self.errors += 1
                degraded("cache_write", "shared cache %s: write failed: %s", self.path, e)
                return

    def _evict(self, attempt: int) -> None:
        """Make room: expired entries, then the oldest half, then everything. Deleting needs
        pages too, so a step that cannot commit in a full map gives way to the next one."""
        steps: tuple[Callable[[], int], ...] = (lambda: self._sweep(None), self._drop_oldest_half, self._drop_all)
        for step in steps[attempt:]:
            try:
                removed = step()
            except lmdb.Error:  # a full map, or a full disk: the next step, or give up the write
                continue
            self.evictions += removed
            log.info("shared cache full: evicted %d entries", removed)
            return

    def _drop_all(self) -> int:
        with self.env.begin(write=True) as txn:
            removed = int(txn.stat(self.env.open_db())["entries"])
            txn.drop(self.env.open_db(), delete=False)
        return removed

    def sweep(self, limit: int | None = None) -> int:
        """Delete expired entries (at most ``limit``); returns how many went (0 when the
        deletion cannot commit: a full disk, counted as a failed write)."""
        try:
            return self._sweep(limit)
        except lmdb.Error as e:
            self.errors += 1
            degraded("cache_write", "shared cache %s: sweep failed: %s", self.path, e)
            return 0

    def _sweep(self, limit: int | None) -> int:
        now, removed = self.wall(), 0
        with self.env.begin(write=True) as txn:
            cursor = txn.cursor()
            ok = cursor.first()
            while ok and (limit is None or removed < limit):
                wall_expires = _expiry(cursor.value())
                if wall_expires is None or wall_expires <= now:
                    ok = cursor.delete()
                    removed += 1
                else:
                    ok = cursor.next()
        return removed

    def _drop_oldest_half(self) -> int:
        with self.env.begin() as txn:
            stored = sorted((_stored(v), bytes(k)) for k, v in txn.cursor())
        victims = stored[: max(1, len(stored) // 2)]
        with self.env.begin(write=True) as txn:
            for _, k in victims:
                txn.delete(k)
        return len(victims)

    def reader_check(self) -> int:
        """Clear reader slots left by dead processes; returns how many."""
        return int(self.env.reader_check())

    def flush(self) -> None:
        self._drop_all()

    def items(self, matches: Callable[[Hashable], bool]) -> list[tuple[Hashable, Any, float]]:
        """The live entries whose key ``matches``: (key, value, seconds left). Keys too
        long to store as they are (hashed) cannot be matched and are left out."""
        now, found = self.wall(), []
        with self.env.begin() as txn:
            for raw_key, raw in txn.cursor():
                key = decode_key(bytes(raw_key))
                if key is None or not matches(key):
                    continue
                try:
                    wall_expires, _stored, value = msgpack.unpackb(raw, raw=False)
                    decoded = decode_value(value)
                except (ValueError, TypeError, IndexError):
                    continue
                if wall_expires > now:
                    found.append((key, decoded, wall_expires - now))
        return found

    def drop_where(self, matches: Callable[[Hashable], bool]) -> int:
        """Delete every entry whose key ``matches``; returns how many went."""
        with self.env.begin() as txn:
            victims = [bytes(k) for k, _ in txn.cursor() if (key := decode_key(bytes(k))) is not None
                       and matches(key)]
        with self.env.begin(write=True) as txn:
            for k in victims:
                txn.delete(k)
        return len(victims)

    def usage(self) -> tuple[int, int]:
        """(bytes in use, bytes of the map): how full the file is."""
        info, stat = self.env.info(), self.env.stat()
        return (info["last_pgno"] + 1) * stat["psize"], info["map_size"]

    def __len__(self) -> int:
        return int(self.env.stat()["entries"])

    def close(self) -> None:
        self.env.close()


def set_aside(path: str) -> str:
    """Rename the LMDB files of ``path`` to ``<name>.corrupt-<unix time>`` (kept for a look,
    never read again) so a fresh environment can be made; returns the data file's new name."""
    stamp = int(time.time())
    moved = ""
    for name in FILES:
        where = os.path.join(path, name)
        if os.path.exists(where):
            os.replace(where, f"{where}.corrupt-{stamp}")
            moved = moved or f"{where}.corrupt-{stamp}"
    return moved


def _expiry(raw: bytes) -> float | None:
    try:
        return float(msgpack.unpackb(raw, raw=False)[0])
    except (ValueError, TypeError, IndexError):
        return None


def _stored(raw: bytes) -> float:
    try:
        return float(msgpack.unpackb(raw, raw=False)[1])
    except (ValueError, TypeError, IndexError):
        return 0.0
