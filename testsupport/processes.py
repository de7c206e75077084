"""Starting and stopping the real processes integration tests talk to."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

#: bound on waiting for a process to become ready
READY_SECONDS = 30.0

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen[bytes] | None = None, seconds: float = READY_SECONDS,
                  host: str = "127.0.0.1") -> None:
    """Return once host:port accepts connections; bounded in time."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {seconds:.0f} s")


def wait_until(condition: Callable[[], T], what: str, seconds: float = READY_SECONDS) -> T:
    """Poll ``condition`` until it returns a true value, and return that value; bounded in
    time (``what`` names it in the error)."""
    deadline = time.monotonic() + seconds
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} (after {seconds:.0f} s)")
        time.sleep(0.02)
    return value


def connections_taken(port: int) -> int:
    """How many TCP connections to local ``port`` its server has accepted and read all the
    sent bytes of, or -1 while a listener on ``port`` still has connections queued (Linux:
    /proc/net/tcp{,6} shows a listener's accept queue as its rx_queue)."""
    taken = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            state, rx_queue = fields[3], int(fields[4].split(":")[1], 16)
            if local_port != port:
                continue
            if state == "0A" and rx_queue:  # LISTEN, with connections not yet accepted
                return -1
            if state == "01" and rx_queue == 0:  # ESTABLISHED, nothing left unread
                taken += 1
    return taken


def world_readable_tmpdir(prefix: str) -> Path:
    """A temporary folder that daemons dropping to their own user can still traverse."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


class Checkid:
    """``checkid serve`` as a subprocess on a TOML configuration."""

    def __init__(self, toml: str, workdir: Path, ports: list[int], workers: int = 1) -> None:
        self.config = workdir / "checkid.toml"
        self.metrics_port = free_port()
        if "[server]" not in toml:
            toml += f'\n[server]\nworkers = {workers}\nstate_dir = "{workdir / "state"}"\n'
        if "[metrics]" not in toml:
            toml += f'\n[metrics]\naddress = "127.0.0.1:{self.metrics_port}"\n'
        self.config.write_text(toml)
        self.log = workdir / "checkid.log"
        self.ports = ports
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "Checkid":
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "checkid", "serve", "-c", str(self.config)],
                                         stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
        for port in self.ports:
            wait_for_port(port, self.proc)
        return self

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def __enter__(self) -> "Checkid":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def get_healthz(port: int) -> tuple[int, bytes]:
    """``GET /healthz`` of a daemon's metrics port on loopback: (status, body); (0, b"") when
    nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""
