"""prometheus_client's multiprocess files, with their blocks allocated before they are mapped.

prometheus_client keeps each process's metric values in files it maps
(``prometheus_client/mmap_dict.py``): it makes a file by ``truncate`` to 64 KiB and grows it
by ``truncate`` to twice the size. Both leave the file sparse, and on a full disk the first
store into a page with no block behind it kills the process with SIGBUS: a worker started on
a full state directory died before it served. Here the blocks are reserved first with
``posix_fallocate``, so a full disk is an ``ENOSPC`` this module can answer:

- a file that cannot be made: the process keeps that file's values in memory (an anonymous
  map of the same layout), for its life, and they are not exported;
- a file that cannot grow: the series it holds go on being exported; a new series (a label
  value not seen before) is kept in memory, unexported, and the next new one tries again.

Either is logged and counted (``degraded{what="metrics_write"}``) by :func:`take_faults`'s
caller, not here: a fault is found inside prometheus_client's value lock, where counting
would deadlock. :func:`install` puts :func:`allocated_dict_class` in prometheus_client's
place; it must run after ``PROMETHEUS_MULTIPROC_DIR`` is set (importing prometheus_client
reads it).
"""
from __future__ import annotations

import io
import mmap
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # importing prometheus_client reads PROMETHEUS_MULTIPROC_DIR: not before install()
    from prometheus_client.mmap_dict import MmapedDict

#: what prometheus_client's entry costs beyond its key's UTF-8 bytes at most: a 4-byte
#: length, up to 8 bytes of padding, two doubles (value, timestamp); rounded up
ENTRY_OVERHEAD = 32

#: faults found since the last :func:`take_faults`: (file, what failed, the error)
_faults: list[tuple[str, str, str]] = []
#: faults kept between two :func:`take_faults` at most: a process that never takes them (none
#: of checkid's) must not grow; more than a tick's worth would only repeat the same lines
MAX_FAULTS = 64


def _note(filename: str, failed: str, error: OSError) -> None:
    if len(_faults) < MAX_FAULTS:
        _faults.append((filename, failed, error.strerror or str(error)))


def take_faults() -> list[tuple[str, str, str]]:
    """The faults found since the last call: ``(file, "create" or "grow", error)``."""
    got = _faults[:]
    del _faults[:len(got)]
    return got


def _reserve(fd: int, size: int) -> None:
    """Allocate the first ``size`` bytes of ``fd``'s file (and extend it to that size).

    :raises OSError: ``ENOSPC`` on a full disk; ``EOPNOTSUPP`` is not raised: glibc's
        ``posix_fallocate`` writes the blocks itself where the file system cannot
    """
    os.posix_fallocate(fd, 0, size)


def allocated_dict_class() -> type[MmapedDict]:
    """prometheus_client's ``MmapedDict`` with its blocks reserved before each mapping."""
    from prometheus_client.mmap_dict import _INITIAL_MMAP_SIZE, MmapedDict, _pack_integer

    class AllocatedDict(MmapedDict):
        """An ``MmapedDict`` whose file never has a mapped page without a block."""

        def __init__(self, filename: str, read_mode: bool = False) -> None:
            self._spilled: dict[str, tuple[float, float]] = {}
            #: no file: the values are in an anonymous map (the file could not be made)
            self._anonymous = False
            if read_mode:
                super().__init__(filename, read_mode)
                return
            try:
                self._make(filename)
            except OSError as e:
                _note(filename, "create", e)
                self._in_memory(filename)
                return
            super().__init__(filename)

        @staticmethod
        def _make(filename: str) -> None:
            fd = os.open(filename, os.O_RDWR | os.O_CREAT, 0o640)
            try:
                size = os.fstat(fd).st_size
                try:
                    _reserve(fd, max(size, _INITIAL_MMAP_SIZE))
                except OSError:
                    if size == 0:  # an empty file would break the collector: leave none
                        os.unlink(filename)
                    raise
            finally:
                os.close(fd)

        def _in_memory(self, filename: str) -> None:
            self._anonymous = True
            self._fname = filename
            self._f: Any = io.BytesIO()  # what close() closes
            self._capacity = _INITIAL_MMAP_SIZE
            self._m = mmap.mmap(-1, self._capacity)
            self._positions: dict[str, int] = {}
            self._used = 8
            _pack_integer(self._m, 0, self._used)

        def _room_for(self, key: str) -> bool:
            """Make the map big enough for ``key``'s entry (so prometheus_client never grows
            it itself); False when the file cannot grow."""
            needed = self._used + len(key.encode("utf-8")) + ENTRY_OVERHEAD
            capacity = self._capacity
            while needed > capacity:
                capacity *= 2
            if capacity == self._capacity:
                return True
            if self._anonymous:
                grown = mmap.mmap(-1, capacity)
                grown[:self._capacity] = self._m[:self._capacity]
                self._m, self._capacity = grown, capacity
                return True
            try:
                _reserve(self._f.fileno(), capacity)
            except OSError as e:
                _note(self._fname, "grow", e)
                return False
            self._m, self._capacity = mmap.mmap(self._f.fileno(), capacity), capacity
            return True

        def read_value(self, key: str) -> tuple[float, float]:
            if key in self._spilled:
                return self._spilled[key]
            if key not in self._positions and not self._room_for(key):
                self._spilled[key] = (0.0, 0.0)
                return self._spilled[key]
            value: tuple[float, float] = super().read_value(key)
            return value

        def write_value(self, key: str, value: float, timestamp: float) -> None:
            if key in self._spilled or (key not in self._positions and not self._room_for(key)):
                self._spilled[key] = (value, timestamp)
                return
            super().write_value(key, value, timestamp)

    return AllocatedDict


def install() -> None:
    """Make prometheus_client's values use :func:`allocated_dict_class` (once per process;
    forked children inherit it)."""
    from prometheus_client import values

    if getattr(values.MmapedDict, "checkid_allocated", False):
        return
    cls = allocated_dict_class()
    cls.checkid_allocated = True  # type: ignore[attr-defined]
    values.MmapedDict = cls  # type: ignore[misc]
