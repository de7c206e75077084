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
