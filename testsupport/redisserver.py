"""A real ``redis-server`` on loopback for the fleet tests and benchmarks (scripts/mta-deps
installs it): a free port, no persistence; stopped by whoever started it."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from testsupport.processes import free_port, wait_for_port


class RedisServer:
    """One ``redis-server`` on 127.0.0.1; :meth:`stop` and :meth:`start` again on the same port."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"  # scripts/mta-deps installs it
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.folder), "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, self.proc)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self.proc = None
