"""A ``checkid serve`` for the reliability suite: all four protocols on the test DNS server,
the front door relaying to Postfix's ``smtp-sink``; its worker PIDs and RSS; and one valid
request per protocol, checked for the right answer (:meth:`Daemon.probe`).

The right answer is the seed decision for client 192.0.2.1 with identity example.com
(``testsupport/zones``): SPF1 PASS, accepted with an ``Authent:`` header. The front door takes
a PROXY v2 header from loopback so it sees that client, as the policy, RPC and milter requests
name it.
"""
from __future__ import annotations

import os
import shutil
import smtplib
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from checkid.protocols.milter import codec as milter_codec
from checkid.protocols.milter.events import (Connect, EndOfHeaders, EndOfMessage, HeaderField, Helo, InsertHeader,
                                             Mail, OptNeg, OptNegReply, Quit, Rcpt, Response)
from checkid.protocols.msgpack_rpc.client import Client
from checkid.protocols.smtp import proxyproto
from checkid.runtime import control
from testsupport.dnsserver import TestDnsServer
from testsupport.mta import ProxySMTP, terminate
from testsupport.policy import ask
from testsupport.processes import Checkid, free_port, wait_for_port, wait_until, world_readable_tmpdir

CLIENT = "192.0.2.1"
IDENTITY = "example.com"
#: what every right answer's Authent: header starts with (the seed zones' decision)
AUTHENT = f"{CLIENT} {IDENTITY} SPF1 PASS"
#: bound on one probe's socket operations, and on waiting for the daemon
SECONDS = 20.0
WORKERS = 2


@dataclass
class Ports:
    policy: int
    rpc: int
    milter: int
    smtp: int
    sink: int


def config(dns: TestDnsServer, ports: Ports) -> str:
    return f"""
[[listen]]
protocol = "policy"
address = "127.0.0.1:{ports.policy}"
[[listen]]
protocol = "msgpack-rpc"
address = "127.0.0.1:{ports.rpc}"
[[listen]]
protocol = "milter"
address = "127.0.0.1:{ports.milter}"
[[listen]]
protocol = "smtp"
address = "127.0.0.1:{ports.smtp}"
backend = "127.0.0.1:{ports.sink}"
backend_client = "none"
proxy_protocol = true
proxy_hosts = ["127.0.0.1"]
[smtp]
hostname = "door.checkid.test"
[dns]
nameservers = ["{dns.address}"]
timeout = 1.0
[registry]
zone = "registry.test"
"""


class Daemon:
    """The running daemon (:func:`running`) and what a suite test asks of it."""

    def __init__(self, checkid: Checkid, ports: Ports, state_dir: Path) -> None:
        self.checkid = checkid
        self.ports = ports
        self.state_dir = state_dir

    @property
    def log(self) -> Path:
        return self.checkid.log

    def worker_pids(self) -> list[int]:
        """The serving workers' PIDs, from the master's state file."""
        state = control.read_json(self.state_dir / control.STATE_FILE) or {}
        return sorted(w["pid"] for w in state.get("workers", []) if w.get("serving") and not w.get("retiring"))

    def serving(self) -> list[int]:
        """The worker PIDs once all of them serve (waits, bounded)."""
        def all_serving() -> list[int]:
            pids = self.worker_pids()
            return pids if len(pids) == WORKERS else []
        return wait_until(all_serving, f"{WORKERS} workers serving", SECONDS)

    def rss_kib(self) -> dict[int, int]:
        """Each worker's resident set (VmRSS, KiB)."""
        return {pid: rss_kib(pid) for pid in self.worker_pids()}

    # -- one valid request per protocol -----------------------------------------------------
    def probe_policy(self) -> str:
        return ask(self.ports.policy, helo=IDENTITY, ip=CLIENT, timeout=SECONDS)

    def probe_rpc(self) -> str:
        with Client(f"127.0.0.1:{self.ports.rpc}", timeout=SECONDS) as client:
            action, reply, headers = client.checkID(CLIENT, IDENTITY, "mail.example.com", "u@example.com",
                                                   ["r@example.org"])
        return f"{action} {reply[0]} " + " | ".join(f"{h.get('label')} {h.get('text')}" for h in headers)

    def probe_milter(self) -> str:
        """One message through the milter; the Authent: value inserted at end of message."""
        with socket.create_connection(("127.0.0.1", self.ports.milter), timeout=SECONDS) as conn:
            parser = milter_codec.ResponseParser()

            def answer(*commands: object) -> list[Response]:
                conn.sendall(b"".join(milter_codec.encode_command(c) for c in commands))  # type: ignore[arg-type]
                out: list[Response] = []
                while not out or not _final(out[-1]):
                    while (event := parser.next_event()) is None:
                        data = conn.recv(65536)
                        if not data:
                            raise ConnectionError(f"milter closed the connection after {out}")
                        parser.receive_data(data)
                    out.append(event)
                return out
            negotiated = answer(OptNeg(6, 0x1FF, 0))  # no no-reply bits: every step is answered
            assert isinstance(negotiated[0], OptNegReply)
            answer(Connect("mail.example.com", "4", 40000, CLIENT))
            answer(Helo(IDENTITY))
            mail = answer(Mail(("<u@example.com>",)))
            answer(Rcpt(("<r@example.org>",)))
            answer(HeaderField("Subject", " hello"))
            answer(EndOfHeaders())
            end = answer(EndOfMessage(b""))
            conn.sendall(milter_codec.encode_command(Quit()))
        inserted = [r.value.strip() for r in end if isinstance(r, InsertHeader) and r.name == "Authent"]
        return f"{type(mail[-1]).__name__}:{mail[-1]!r} " + " | ".join(inserted)

    def probe_smtp(self) -> str:
        """One message through the front door, as 192.0.2.1 by a PROXY v2 header: the final reply."""
        header = proxyproto.encode_v2(CLIENT, 40000, "127.0.0.1", self.ports.smtp)
        with ProxySMTP("127.0.0.1", self.ports.smtp, header=header) as client:
            client.timeout = SECONDS
            assert client.ehlo("mail.example.com")[0] == 250
            assert client.docmd("ID", IDENTITY)[0] == 250
            try:
                client.sendmail("u@example.com", ["r@example.org"], b"Subject: hello\r\n\r\nbody\r\n")
            except smtplib.SMTPException as e:
                return f"refused: {e}"
            return "250 sent"

    def probe(self) -> dict[str, str]:
        """Each protocol's answer to one valid request ("right" ones pass :func:`right`)."""
        out = {}
        for name, probe in (("policy", self.probe_policy), ("msgpack-rpc", self.probe_rpc),
                            ("milter", self.probe_milter), ("smtp", self.probe_smtp)):
            try:
                out[name] = probe()
            except Exception as e:  # noqa: BLE001 - any failure is a wrong answer
                out[name] = f"failed: {type(e).__name__}: {e}"
        return out


def _final(response: Response) -> bool:
    """Whether a milter response ends a step's answer (a verdict, or the OPTNEG reply)."""
    return not isinstance(response, InsertHeader) and type(response).__name__ != "ChangeHeader"


def right(protocol: str, answer: str) -> bool:
    """Whether ``answer`` (from :meth:`Daemon.probe`) is the seed decision for 192.0.2.1."""
    if protocol == "policy":
        return answer.startswith(f"PREPEND Authent: {AUTHENT}")
    if protocol == "msgpack-rpc":
        return answer.startswith(f"ACCEPT 250 Authent: {AUTHENT}")
    if protocol == "milter":
        return AUTHENT in answer and not answer.startswith("failed")
    return answer == "250 sent"  # smtp-sink keeps no message: taken is the answer


def wrong_answers(daemon: Daemon) -> dict[str, str]:
    """The probes whose answer was not right (empty when all four are)."""
    return {name: answer for name, answer in daemon.probe().items() if not right(name, answer)}


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return 0


def smtp_sink(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    """Postfix's ``smtp-sink`` on 127.0.0.1:``port`` (it refuses to run as root without -u)."""
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    with open(workdir / "smtp-sink.log", "wb") as log:
        proc = subprocess.Popen(["smtp-sink", *user, f"127.0.0.1:{port}", "256"], stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    wait_for_port(port, proc)
    return proc


@contextmanager
def running(dns: TestDnsServer) -> Iterator[Daemon]:
    """A daemon with two workers, every protocol, and the sink behind the front door; all
    stopped (and the folder removed) after."""
    if shutil.which("smtp-sink") is None:
        raise RuntimeError("smtp-sink (Postfix) is not installed: run scripts/mta-deps")
    workdir = world_readable_tmpdir("checkid-reliability-")
    ports = Ports(free_port(), free_port(), free_port(), free_port(), free_port())
    sink = smtp_sink(workdir, ports.sink)
    try:
        checkid = Checkid(config(dns, ports), workdir, [ports.policy, ports.rpc, ports.milter, ports.smtp],
                          workers=WORKERS)
        with checkid:
            daemon = Daemon(checkid, ports, workdir / "state")
            daemon.serving()
            yield daemon
    finally:
        terminate(sink)
        shutil.rmtree(workdir, ignore_errors=True)
