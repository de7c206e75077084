"""The log of a real ``checkid serve``: JSON lines and syslog from the master, the workers
and the metrics process, and a rotation by logrotate with the snippet in deploy/."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from testsupport.dnsserver import TestDnsServer
from testsupport.policy import ask
from testsupport.processes import Checkid, free_port, wait_until, world_readable_tmpdir

ROOT = Path(__file__).resolve().parents[2]
#: bound on every wait below
WAIT_SECONDS = 20.0


def family(master: int) -> set[int]:
    """The master and its children (workers, metrics process), from /proc."""
    pids = {master}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == master:
                pids.add(int(stat.parent.name))
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
    return pids


def all_four(master: int) -> set[int]:
    """The pids of the master, its two workers and the metrics process, once all four run."""
    return wait_until(lambda: (lambda f: f if len(f) == 4 else None)(family(master)),
                      "master, two workers and the metrics process", WAIT_SECONDS)


def daemon(dns_server: TestDnsServer, workdir: Path, server: str) -> Checkid:
    port = free_port()
    toml = f"""
[[listen]]
protocol = "policy"
address = "127.0.0.1:{port}"
[server]
workers = 2
state_dir = "{workdir / 'state'}"
{server}
[dns]
nameservers = ["{dns_server.address}"]
timeout = 1.0
[registry]
zone = "registry.test"
"""
    checkid = Checkid(toml, workdir, [port])
    checkid.port = port  # type: ignore[attr-defined]
    return checkid


@pytest.fixture
def workdir() -> Path:
    return world_readable_tmpdir("checkid-logs-")


def serving(text: str) -> int:
    return len(re.findall(r"worker \d serving", text))


def test_json_log_from_every_process(dns_server: TestDnsServer, workdir: Path) -> None:
    log_file = workdir / "checkid.json"
    with daemon(dns_server, workdir, f'log_file = "{log_file}"\nlog_format = "json"') as checkid:
        wait_until(lambda: log_file.exists() and serving(log_file.read_text()) == 2,
                   "two workers serving", WAIT_SECONDS)
        assert checkid.proc is not None
        everyone = all_four(checkid.proc.pid)
        assert ask(checkid.port).startswith("PREPEND Authent:")  # type: ignore[attr-defined]
        checkid.proc.send_signal(signal.SIGUSR1)  # every process logs that it reopened

        def lines() -> list[dict[str, object]]:
            return [json.loads(text) for text in log_file.read_text().splitlines()]  # each line is JSON

        wait_until(lambda: {line["pid"] for line in lines() if line["msg"] == "log reopened"} == everyone,
                   "a JSON line from every process", WAIT_SECONDS)
        [decision] = [line for line in lines() if line["logger"] == "checkid.decision"]
        assert decision["ip"] == "192.0.2.1" and decision["action"] == "ACCEPT" and decision["helo"] == "example.com"
        assert decision["level"] == "INFO" and decision["pid"] in everyone - {checkid.proc.pid}


class Syslogd:
    """A unix datagram socket the test binds where /dev/log would be."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[str] = []
        self.sock = self._bind()

    def _bind(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(self.path))
        os.chmod(self.path, 0o666)
        sock.setblocking(False)
        return sock

    def restart(self) -> None:
        self.sock.close()
        os.unlink(self.path)
        self.sock = self._bind()

    def read(self) -> list[str]:
        """Every message received so far."""
        while True:
            try:
                self.messages.append(self.sock.recv(65536).decode())
            except BlockingIOError:
                return self.messages

    def senders(self, pattern: str) -> set[int]:
        """The pids of the messages matching ``pattern`` (after the tag)."""
        tagged = (re.match(r"<(\d+)>checkid\[(\d+)\]: (.*)", m, re.S) for m in self.read())
        return {int(t.group(2)) for t in tagged if t and re.search(pattern, t.group(3))}


@pytest.fixture
def syslogd(workdir: Path) -> Iterator[Syslogd]:
    daemon = Syslogd(workdir / "devlog")
    yield daemon
    daemon.sock.close()


def test_syslog_from_every_process_into_the_mail_facility(dns_server: TestDnsServer, workdir: Path,
                                                           syslogd: Syslogd) -> None:
    with daemon(dns_server, workdir, f'log_file = "syslog"\nsyslog_socket = "{syslogd.path}"') as checkid:
        wait_until(lambda: len(syslogd.senders(r"worker \d serving")) == 2, "two workers serving", WAIT_SECONDS)
        assert checkid.proc is not None
        everyone = all_four(checkid.proc.pid)
        assert ask(checkid.port).startswith("PREPEND Authent:")  # type: ignore[attr-defined]
        wait_until(lambda: syslogd.senders("INFO checkid.decision: policy .*ip=192.0.2.1"),
                   "the decision line", WAIT_SECONDS)
        assert all(m.startswith("<22>") or m.startswith("<20>") or m.startswith("<19>")
                   for m in syslogd.read())  # mail.info, mail.warning, mail.err
        # the syslog daemon restarts (a new socket at the same path): SIGUSR1 reconnects everyone
        syslogd.restart()
        syslogd.messages.clear()
        checkid.proc.send_signal(signal.SIGUSR1)
        wait_until(lambda: syslogd.senders("log reopened") == everyone, "every process on the new socket", WAIT_SECONDS)
        assert not checkid.log.read_text().strip()  # nothing went to standard error


def logrotate_config(workdir: Path, log_file: Path, pid_file: Path) -> Path:
    """deploy/checkid.logrotate with this test's paths (and user: root owns the workdir)."""
    snippet = (ROOT / "deploy" / "checkid.logrotate").read_text()
    for deployed, here in (("/var/log/checkid/checkid.log", str(log_file)), ("/var/lib/checkid/master.pid", str(pid_file)),
                           ("su checkid checkid", "su root root")):
        assert deployed in snippet
        snippet = snippet.replace(deployed, here)
    conf = workdir / "logrotate.conf"
    conf.write_text(snippet)
    return conf


def test_logrotate_snippet_rotates_and_every_process_reopens(dns_server: TestDnsServer, workdir: Path) -> None:
    logs = workdir / "log"
    logs.mkdir(mode=0o755)
    log_file = logs / "checkid.log"
    conf = logrotate_config(workdir, log_file, workdir / "state" / "master.pid")
    with daemon(dns_server, workdir, f'log_file = "{log_file}"') as checkid:
        wait_until(lambda: log_file.exists() and serving(log_file.read_text()) == 2,
                   "two workers serving", WAIT_SECONDS)
        assert checkid.proc is not None
        everyone = all_four(checkid.proc.pid)
        wait_until(lambda: (workdir / "state" / "master.pid").exists(), "the master's pid file", WAIT_SECONDS)
        out = subprocess.run(["logrotate", "--force", "--state", str(workdir / "logrotate.state"), str(conf)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and not out.stderr, out.stderr
        rotated = logs / "checkid.log.1"  # delaycompress: the newest rotation stays plain
        assert "worker 0 serving" in rotated.read_text()

        def reopened() -> set[int]:
            text = log_file.read_text() if log_file.exists() else ""
            return set(map(int, re.findall(r"checkid\[(\d+)\]: INFO checkid\.runtime\.logs: log reopened", text)))

        wait_until(lambda: reopened() == everyone,
                   "master, both workers and the metrics process in the new file", WAIT_SECONDS)
        for _ in range(10):
            ask(checkid.port)  # type: ignore[attr-defined]
        wait_until(lambda: log_file.read_text().count("checkid.decision") == 10,
                   "decisions in the new file", WAIT_SECONDS)
        assert "checkid.decision" not in rotated.read_text()
