"""What the master records in its state directory, and what the commands read there.

- ``master.pid``: the master's process id (``checkid reload``, logrotate's ``kill -USR1``).
- ``master.json``: the master's state, rewritten atomically (a temporary file renamed over
  it) whenever it changes: version, start time, configuration and policy in use, whether
  the policy file on disk is refused, the workers, and the outcome of the last reloads.
- ``cache-flush.json``: cache flush requests (``checkid cache flush``), numbered; every
  worker drops the named entries from its memory layer within a tick and says which
  request it has applied through its heartbeat file, which the master copies into its
  state, so the command can wait until every worker has.

With ``[fleet]``, a flush is also published on the fleet's Redis channel
(:func:`publish_flush`): every worker of every host applies it to its memory layer, and
each host's slot 0 worker to its shared layer.

A reload is matched to the command that asked for it by time: the command notes the
monotonic clock (one clock for every process of the host) before it sends SIGHUP and takes
the first reload the master started at or after it; such a reload read the files after the
operator saved them. Two commands racing each get a reload that saw their files.

A worker's heartbeat file holds its status (:func:`encode_status`): the master reads it
with one ``pread`` per worker and pass, the worker writes it with one ``pwrite`` per tick.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from checkid.config.fleet import FleetConfig
from checkid.errors import CheckidError

PID_FILE = "master.pid"
STATE_FILE = "master.json"
FLUSH_FILE = "cache-flush.json"
#: flush requests kept in the file; a worker that missed more flushes its whole memory layer
FLUSH_KEPT = 64
#: reload outcomes kept in the master's state
RELOADS_KEPT = 8
#: bytes of a worker's status record in its heartbeat file
STATUS_SIZE = 64


class NotRunning(CheckidError):
    """No checkid master is running."""


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a reader sees the old file or the new one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_master(state_dir: str | Path) -> tuple[int, dict[str, Any]]:
    """The pid and state of the master recorded in ``state_dir``.

    :raises NotRunning: no pid file, or its process is gone
    """
    directory = Path(state_dir)
    try:
        pid = int((directory / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        raise NotRunning(f"no checkid master running (no pid file in {directory})") from None
    if not alive(pid):
        raise NotRunning(f"no checkid master running (pid {pid} of {directory / PID_FILE} is gone)")
    state = read_json(directory / STATE_FILE)
    if not isinstance(state, dict) or state.get("pid") != pid:
        raise NotRunning(f"checkid master {pid} has not recorded its state in {directory} yet")
    return pid, state


# -- worker status, in the heartbeat file ------------------------------------------------

@dataclass(frozen=True, slots=True)
class WorkerStatus:
    #: the worker's listeners accept connections
    serving: bool = False
    #: the last cache flush request applied to its memory layer
    flushed: int = 0
    #: entries in its memory layer
    entries: int = 0


def encode_status(status: WorkerStatus) -> bytes:
    text = f"{int(status.serving)} {status.flushed} {status.entries}"
    return text.encode().ljust(STATUS_SIZE)


def decode_status(data: bytes) -> WorkerStatus:
    try:
        serving, flushed, entries = data.split()[:3]
        return WorkerStatus(serving == b"1", int(flushed), int(entries))
    except ValueError:
        return WorkerStatus()


# -- reloads ---------------------------------------------------------------------------

def wait_for_reload(state_dir: str | Path, timeout: float, clock: Callable[[], float] = time.monotonic,
                    pause: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """SIGHUP the running master and return the outcome of the first reload it starts from
    now on, once it is known (``result`` ``ok``, ``refused`` or ``failed``, ``reason``).

    :raises NotRunning: before the signal, or when the master exits meanwhile
    :raises CheckidError: no outcome within ``timeout`` seconds
    """
    import signal

    pid, _ = running_master(state_dir)
    asked = clock()
    os.kill(pid, signal.SIGHUP)
    deadline = asked + timeout
    while True:
        state = read_json(Path(state_dir) / STATE_FILE)
        if isinstance(state, dict):
            mine = [r for r in state.get("reloads", []) if r.get("started", 0) >= asked]
            if mine and mine[0].get("result") != "pending":
                return dict(mine[0])
        if not alive(pid):
            raise NotRunning(f"checkid master {pid} exited during the reload (see its log)")
        if clock() >= deadline:
            raise CheckidError(f"no reload outcome from master {pid} within {timeout:g} s")
        pause(0.05)


# -- cache flushes ---------------------------------------------------------------------

@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    with open(directory / f".{FLUSH_FILE}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def request_flush(state_dir: str | Path, name: str | None) -> int:
    """Record a flush of ``name`` (None: everything) for every worker; returns its number."""
    directory = Path(state_dir)
    directory.mkdir(parents=True, exist_ok=True)
    with _locked(directory):
        requests = read_flushes(directory)
        number = requests[-1][0] + 1 if requests else 1
        requests = [*requests, (number, name)][-FLUSH_KEPT:]
        write_atomic(directory / FLUSH_FILE, json.dumps([list(r) for r in requests]).encode())
    return number


def read_flushes(state_dir: str | Path) -> list[tuple[int, str | None]]:
    """The flush requests on record, oldest first: (number, name or None for all)."""
    data = read_json(Path(state_dir) / FLUSH_FILE)
    if not isinstance(data, list):
        return []
    out = []
    for item in data:
        if isinstance(item, list) and len(item) == 2 and isinstance(item[0], int) \
                and (item[1] is None or isinstance(item[1], str)):
            out.append((item[0], item[1]))
    return out


def publish_flush(fleet: FleetConfig, name: str | None, timeout: float = 5.0) -> int:
    """Publish a flush of ``name`` (None: everything) to every host of the fleet; returns how
    many workers (of every host) were subscribed to hear it.

    :raises CheckidError: Redis cannot be reached within ``timeout`` seconds
    """
    import asyncio

    from checkid.engine.fleet import Flush, connect, encode_event

    async def publish() -> int:
        client = connect(fleet)
        try:
            async with asyncio.timeout(timeout):
                return int(await client.publish(f"{fleet.key_prefix}events", encode_event(Flush(name))))
        finally:
            await client.aclose()

    try:
        return asyncio.run(publish())
    except Exception as e:
        raise CheckidError(f"the fleet's Redis ({fleet.redis or ', '.join(fleet.sentinels)}): "
                           f"{'no answer' if isinstance(e, TimeoutError) else e}") from None


class FlushFollower:
    """A worker's view of the flush requests: :meth:`poll` costs one ``stat`` when nothing
    changed, and returns what to drop from the memory layer."""

    def __init__(self, state_dir: str | Path) -> None:
        self.path = Path(state_dir) / FLUSH_FILE
        self.stamp: tuple[int, int] | None = self._stamp()
        requests = read_flushes(state_dir)
        #: a new worker's memory layer is empty: it starts past every request on record
        self.applied = requests[-1][0] if requests else 0

    def _stamp(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_ino)

    def poll(self) -> list[str | None] | None:
        """The names to drop (None in the list: everything) since the last call, or None
        when there is nothing new."""
        stamp = self._stamp()
        if stamp == self.stamp:
            return None
        self.stamp = stamp
        requests = read_flushes(self.path.parent)
        new = [(n, name) for n, name in requests if n > self.applied]
        if not new:
            return None
        missed = new[0][0] > self.applied + 1
        self.applied = new[-1][0]
        return [None] if missed else [name for _, name in new]
