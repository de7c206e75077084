"""Clients that retry once, as Postfix does: a request whose connection is reset or closed
before the reply is sent again, once, on a new connection. A request lost even so is lost.

:class:`PolicyClient` keeps one persistent Postfix policy connection (as ``smtpd`` does
between requests); :class:`RpcClient` one MessagePack-RPC connection. Both count the resets
they saw (``resets``) and the requests that failed twice (``lost``). Also here: the config of a
policy + RPC daemon the fault tests start with their own ``[server]``/``[dns]`` settings.
"""
from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

from checkid.protocols.msgpack_rpc.client import Client
from checkid.protocols.postfix_policy import codec as pol
from testsupport.dnsserver import TestDnsServer

CLIENT = "192.0.2.1"
IDENTITY = "example.com"
#: the seed decision for CLIENT/IDENTITY (testsupport/zones): what a right answer starts with
AUTHENT = f"{CLIENT} {IDENTITY} SPF1 PASS"
#: bound on one socket operation of a client
SECONDS = 20.0

REQUEST = pol.encode_request({"request": "smtpd_access_policy", "protocol_state": "RCPT",
                              "client_address": CLIENT, "helo_name": IDENTITY, "sender": "",
                              "recipient": "u@example.org", "instance": ""})


class Retrying:
    """Asks once more, on a new connection, when a request fails (reset, EOF with no reply,
    timeout), as Postfix does; counts what it saw."""

    def __init__(self) -> None:
        #: first attempts that failed (then retried)
        self.resets = 0
        #: of those, the connection resets (RST) seen: a graceful close between requests is an
        #: EOF, never one of these
        self.rsts = 0
        #: requests that failed twice
        self.lost = 0

    def _once(self) -> str:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def ask(self) -> str | None:
        """The answer to one request, or None when it was lost (failed twice)."""
        for attempt in (1, 2):
            try:
                return self._once()
            except (ConnectionError, socket.timeout, OSError) as e:
                self.close()
                if attempt == 1:
                    self.resets += 1
                    self.rsts += isinstance(e, ConnectionResetError)
        self.lost += 1
        return None


class PolicyClient(Retrying):
    """One persistent policy connection to 127.0.0.1:``port``; :meth:`ask` gives the action of
    one request's reply."""

    def __init__(self, port: int, timeout: float = SECONDS) -> None:
        super().__init__()
        self.port, self.timeout = port, timeout
        self.sock: socket.socket | None = None

    def _once(self) -> str:
        if self.sock is None:
            self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
        self.sock.sendall(REQUEST)
        data = b""
        while not data.endswith(b"\n\n"):
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed without a reply")
            data += chunk
        return pol.parse_reply(data)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class RpcClient(Retrying):
    """One MessagePack-RPC connection to 127.0.0.1:``port``; :meth:`ask` gives ``action code``
    and the headers of one checkID call."""

    def __init__(self, port: int, timeout: float = SECONDS) -> None:
        super().__init__()
        self.address, self.timeout = f"127.0.0.1:{port}", timeout
        self.client: Client | None = None

    def _once(self) -> str:
        if self.client is None:
            self.client = Client(self.address, timeout=self.timeout)
        action, reply, headers = self.client.checkID(CLIENT, IDENTITY, "mail.example.com",
                                                     "u@example.com", ["r@example.org"])
        return f"{action} {reply[0]} " + " | ".join(f"{h.get('label')} {h.get('text')}" for h in headers)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


def right(answer: str | None) -> bool:
    """Whether a policy or RPC answer is the seed decision."""
    return answer is not None and (answer.startswith(f"PREPEND Authent: {AUTHENT}")
                                   or answer.startswith(f"ACCEPT 250 Authent: {AUTHENT}"))


def counter(metrics_port: int, name: str, **labels: str) -> float:
    """The sum over the daemon's processes of counter ``checkid_<name>_total`` with these
    ``labels`` (others any), as its metrics endpoint shows it; 0 when none was counted."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=SECONDS).read().decode()
    total = 0.0
    for line in body.splitlines():
        series, _, value = line.rpartition(" ")
        metric, _, rest = series.partition("{")
        if metric != f"checkid_{name}_total":
            continue
        have = dict(pair.split("=", 1) for pair in rest.rstrip("}").split(",") if "=" in pair)
        if all(have.get(k) == f'"{v}"' for k, v in labels.items()):
            total += float(value)
    return total


def daemon_config(dns: TestDnsServer, policy: int, rpc: int, state_dir: Path, workers: int = 2,
                  server: str = "", dns_timeout: float = 1.0, decision_timeout: float = 8.0,
                  extra: str = "", dns_lines: str = "", nameserver: str | None = None) -> str:
    """A policy + MessagePack-RPC daemon on the test DNS server; ``server`` holds lines added
    to ``[server]``, ``dns_lines`` lines added to ``[dns]``, ``extra`` whole sections;
    ``nameserver`` (``IP:PORT``) replaces the test DNS server's address."""
    return f"""
[[listen]]
protocol = "policy"
address = "127.0.0.1:{policy}"
[[listen]]
protocol = "msgpack-rpc"
address = "127.0.0.1:{rpc}"
[server]
workers = {workers}
state_dir = "{state_dir}"
heartbeat_timeout = 2.0
grace = 5.0
{server}
[dns]
nameservers = ["{nameserver or dns.address}"]
timeout = {dns_timeout}
decision_timeout = {decision_timeout}
{dns_lines}
[registry]
zone = "registry.test"
{extra}
"""
