"""The worker process's own set-up, before its loop runs."""
from __future__ import annotations

import subprocess
import sys
import textwrap


def test_worker_boot_survives_a_log_rotation_and_a_reload_signal():
    """SIGUSR1 (logrotate) or SIGHUP reaching a worker that is still building its engine must
    not kill it; its loop takes these signals over once it serves."""
    script = textwrap.dedent("""
        import os, signal
        from checkid.runtime.worker import boot_signals
        boot_signals()
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGHUP)
        print("alive")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout.strip()) == (0, "alive")


def test_a_status_report_is_a_heartbeat_on_the_masters_clock(tmp_path):
    """The master compares the heartbeat file's mtime with its monotonic clock. Writing the
    status sets the mtime to wall-clock time: a worker stopped right after such a write (its
    "serving" report, before the first tick) was never found silent."""
    import os
    import time

    from checkid.config import Config
    from checkid.engine.dns.cache import MemoryCache
    from checkid.runtime.worker import Worker, WorkerSpec

    fd = os.open(tmp_path / "heartbeat", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        worker = Worker(WorkerSpec(0, Config(), [], fd, os.getpid(), str(tmp_path / "cache")))
        worker.memory = MemoryCache(10)
        worker._report()
        beat = os.fstat(fd).st_mtime
        assert abs(beat - time.monotonic()) < 60  # the master's clock, not the wall clock
    finally:
        os.close(fd)


def test_the_heap_trimmer_is_glibcs_malloc_trim_or_none():
    """The worker's tick hands freed heap back with ``malloc_trim(0)`` where the C library has
    it; elsewhere (musl) there is nothing to call and the tick skips it."""
    import platform

    from checkid.runtime.worker import heap_trimmer

    trim = heap_trimmer()
    if platform.libc_ver()[0] == "glibc":
        assert trim is not None
        assert trim() in (0, 1)
    else:
        assert trim is None
