"""A fleet of checkid hosts (issue 16, docs/fleet.md): three ``checkid serve`` instances on
127.0.0.2, .3 and .4 (the same ports on each, as on three hosts), a real HAProxy in front on
deploy/haproxy.cfg (its addresses and ports replaced by loopback ones), and a real Unbound on
deploy/unbound.conf forwarding to the test DNS server, which every instance resolves through.

- Decisions flow through HAProxy, for the policy protocol and MessagePack-RPC.
- A name one instance looked up is answered from Unbound's cache for another: the test DNS
  server sees no new query.
- One instance killed with -9 under load: a client that retries as Postfix's policy client
  does (a new connection and one more try, a second later, on a connection error or timeout:
  ``smtpd_policy_service_try_limit = 2``, ``smtpd_policy_service_retry_delay = 1s``) loses no
  decision.
- SIGTERM on an instance: HAProxy marks it down (``show stat`` on its stats socket) while its
  process still lives, and no decision fails.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dns.message
import dns.query
import pytest

from checkid.protocols.msgpack_rpc.client import Client
from checkid.protocols.postfix_policy import codec as pol
from testsupport.dnsserver import TestDnsServer
from testsupport.mta import HAProxy, terminate
from testsupport.processes import Checkid, free_port, wait_for_port, wait_until, world_readable_tmpdir

ROOT = Path(__file__).resolve().parents[2]
#: bound on every wait
SECONDS = 30.0
HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
#: deploy/haproxy.cfg's ports on each checkid host, and the metrics port its checks use
POLICY, MSGPACK, METRICS = 10030, 10031, 10039
#: Postfix's smtpd_policy_service_try_limit and smtpd_policy_service_retry_delay defaults
TRY_LIMIT, RETRY_DELAY = 2, 1.0
#: a load phase ends when the test has seen what it waits for, or after LOAD_SECONDS; the
#: count per client thread is a bound no machine reaches first, however fast
LOAD_COUNT, LOAD_SECONDS, LOAD_THREADS = 10**7, 300.0, 4
#: decisions the load must make after an event, to show that decisions went on
AFTER = 50
#: the private HAProxy's maxconn: it needs two descriptors a connection within the test's limit
TEST_MAXCONN = 1000


def port_free_on_all(hosts: tuple[str, ...]) -> int:
    """A TCP port no one listens on at any of ``hosts`` (each checkid host uses the same one)."""
    for _ in range(100):
        port = free_port()
        socks = []
        try:
            for host in hosts:
                s = socket.socket()
                socks.append(s)
                s.bind((host, port))
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no port free on every host address")


# -- Unbound -------------------------------------------------------------------------------------

def unbound_config(workdir: Path, port: int, upstream: TestDnsServer) -> str:
    """deploy/unbound.conf with loopback addresses, no DNSSEC (the test zones are unsigned),
    small caches and the test server as its upstream."""
    replaced = {"interface", "port", "access-control", "num-threads", "msg-cache-slabs", "rrset-cache-slabs",
                "infra-cache-slabs", "key-cache-slabs", "msg-cache-size", "rrset-cache-size", "module-config",
                "trust-anchor-file", "auto-trust-anchor-file", "use-syslog", "forward-addr", "outgoing-range",
                "so-reuseport"}
    kept = [line for line in (ROOT / "deploy" / "unbound.conf").read_text().splitlines()
            if line.split(":", 1)[0].strip() not in replaced]
    text = "\n".join(kept)
    local = f"""server:
    interface: 127.0.0.1
    port: {port}
    access-control: 127.0.0.0/8 allow
    num-threads: 1
    msg-cache-size: 4m
    rrset-cache-size: 8m
    outgoing-range: 256
    module-config: "iterator"
    use-syslog: no
    logfile: ""
    username: ""
    chroot: ""
    directory: "{workdir}"
    pidfile: "{workdir}/unbound.pid"
    do-not-query-localhost: no
    # RFC 6761 and RFC 5737 names Unbound answers itself by default: the test zones use them
    local-zone: "test." nodefault
    local-zone: "example." nodefault
    local-zone: "2.0.192.in-addr.arpa." nodefault
    local-zone: "100.51.198.in-addr.arpa." nodefault
    local-zone: "113.0.203.in-addr.arpa." nodefault
"""
    text = text.replace("server:\n", local, 1)
    return text.replace("forward-zone:\n    name: \".\"\n",
                        f"forward-zone:\n    name: \".\"\n    forward-addr: {upstream.host}@{upstream.port}\n", 1)


@pytest.fixture(scope="module")
def unbound(dns_server: TestDnsServer) -> Iterator[str]:
    workdir = world_readable_tmpdir("checkid-unbound-")
    port = free_port()
    conf = workdir / "unbound.conf"
    conf.write_text(unbound_config(workdir, port, dns_server))
    check = subprocess.run(["unbound-checkconf", str(conf)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    log = open(workdir / "unbound.log", "wb")
    proc = subprocess.Popen(["unbound", "-d", "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        def answers() -> bool:
            assert proc.poll() is None, (workdir / "unbound.log").read_text()
            try:
                reply = dns.query.udp(dns.message.make_query("registry.test", "SOA"), "127.0.0.1", 1.0, port)
            except (OSError, dns.exception.Timeout):
                return False
            return bool(reply.answer)
        wait_until(answers, "unbound answering", SECONDS)
        yield f"127.0.0.1:{port}"
    finally:
        terminate(proc)
        log.close()


# -- the checkid hosts ---------------------------------------------------------------------------

@dataclass
class Host:
    address: str
    checkid: Checkid
    name: str

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        assert self.checkid.proc is not None
        return self.checkid.proc


def start_host(n: int, address: str, ports: dict[int, int], resolver: str) -> Host:
    """``checkid serve`` as host ``n`` on ``address``, started (not yet listening: see :func:`ready`)."""
    workdir = world_readable_tmpdir(f"checkid-fleet{n}-")
    toml = f"""
[[listen]]
protocol = "policy"
address = "{address}:{ports[POLICY]}"
[[listen]]
protocol = "msgpack-rpc"
address = "{address}:{ports[MSGPACK]}"
[server]
workers = 1
state_dir = "{workdir / 'state'}"
leave_pool = 600          # the test ends the wait with a second SIGTERM once HAProxy saw it
[metrics]
address = "{address}:{ports[METRICS]}"
[dns]
nameservers = ["{resolver}"]
timeout = 2.0
[registry]
zone = "registry.test"
"""
    return Host(address, Checkid(toml, workdir, []).start(), f"host{n}")


def stop_host(host: Host) -> None:
    """SIGTERM, then once it is leaving the pool a second one (its leave_pool is 600 s)."""
    proc = host.checkid.proc
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            wait_until(lambda: proc.poll() is not None or "leaving the pool" in host.checkid.log.read_text(),
                       "the host leaving the pool", SECONDS)
        except TimeoutError:
            pass  # Checkid.stop() kills it
    host.checkid.stop()


def ready(host: Host, ports: dict[int, int]) -> None:
    for port in (ports[POLICY], ports[MSGPACK], ports[METRICS]):
        wait_for_port(port, host.proc, SECONDS, host=host.address)


def haproxy_config(root: Path, hosts: list[Host], ports: dict[int, int], binds: dict[int, int]) -> str:
    """deploy/haproxy.cfg as a private instance runs it: no chroot, user or syslog, a
    ``maxconn`` within an unprivileged descriptor limit, its stats socket in ``root``, each frontend bound on 127.0.0.1 at ``binds[its port]``, and its servers
    the test's ``hosts`` at ``ports[their port]``."""
    out: list[str] = []
    for line in (ROOT / "deploy" / "haproxy.cfg").read_text().splitlines():
        words = line.split()
        if words[:1] in (["chroot"], ["user"], ["group"], ["log"]):
            continue
        if words[:1] == ["maxconn"]:  # not root: HAProxy cannot raise its descriptor limit to 2 x 20000
            line = f"    maxconn {min(int(words[1]), TEST_MAXCONN)}"
        if words[:2] == ["stats", "socket"]:
            line = f"    stats socket {root / 'stats.sock'} mode 600 level admin"
        elif words[:1] == ["bind"]:
            port = int(words[1].rsplit(":", 1)[1])
            line = f"    bind 127.0.0.1:{binds.setdefault(port, free_port())}"
        elif words[:1] == ["server"]:
            if words[1] != "host1":
                continue  # one line per test host instead, written with host1's
            port = int(words[2].rsplit(":", 1)[1])
            rest = " ".join(words[3:])
            for host in hosts:
                out.append(f"    server {host.name} {host.address}:{ports.setdefault(port, free_port())} {rest}")
            continue
        elif words[:1] == ["default-server"]:
            line = re.sub(r"\bport \d+", f"port {ports[METRICS]}", line)
        out.append(line)
    return "\n".join(out) + "\n"


@dataclass
class Fleet:
    hosts: list[Host]
    haproxy: HAProxy
    binds: dict[int, int]
    stats: Path

    def server_status(self, backend: str = "checkid_policy") -> dict[str, str]:
        """Each server's status in ``backend`` ("UP", "DOWN", "UP 1/3" …) from ``show stat``."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(self.stats))
            s.sendall(b"show stat\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        lines = data.decode().splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","))) for line in lines[1:] if line]
        return {r["svname"]: r["status"] for r in rows
                if r["pxname"] == backend and r["svname"] not in ("FRONTEND", "BACKEND")}


@pytest.fixture
def fleet(unbound: str) -> Iterator[Fleet]:
    ports = {POLICY: port_free_on_all(HOSTS), MSGPACK: port_free_on_all(HOSTS), METRICS: port_free_on_all(HOSTS)}
    hosts: list[Host] = []
    haproxy: HAProxy | None = None
    try:
        for n, address in enumerate(HOSTS, 1):  # all at once, as a fleet boots
            hosts.append(start_host(n, address, ports, unbound))
        for host in hosts:
            ready(host, ports)
        root = world_readable_tmpdir("checkid-fleet-haproxy-")
        binds: dict[int, int] = {}
        config = haproxy_config(root, hosts, ports, binds)
        haproxy = HAProxy(config, [binds[POLICY], binds[MSGPACK]]).start()
        fleet = Fleet(hosts, haproxy, binds, root / "stats.sock")
        wait_until(lambda: set(fleet.server_status().values()) == {"UP"}, "every server UP in HAProxy", SECONDS)
        yield fleet
    finally:
        if haproxy is not None:
            haproxy.stop()
        for host in hosts:
            stop_host(host)


# -- a client that retries as Postfix does ---------------------------------------------------------

REQUEST = {"request": "smtpd_access_policy", "protocol_state": "RCPT", "client_address": "192.0.2.1",
           "helo_name": "example.com", "sender": "", "recipient": "u@example.org", "instance": ""}


class PolicyClient:
    """Postfix's policy client: one connection kept open across requests; on a connection
    error, end of file or timeout it closes it, waits ``smtpd_policy_service_retry_delay``
    (1 s), connects again and tries once more (``smtpd_policy_service_try_limit = 2``); a
    request that fails every try is lost. The delay is the client's own behaviour, not a wait
    for something: without it both tries can land on a host in the milliseconds its kernel
    still accepts connections for processes being killed."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.port = port
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.retries = 0

    def ask(self, request: dict[str, str]) -> str:
        for attempt in range(TRY_LIMIT):
            try:
                if self.sock is None:
                    self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
                self.sock.sendall(pol.encode_request(request))
                data = b""
                while not data.endswith(b"\n\n"):
                    chunk = self.sock.recv(4096)
                    if not chunk:
                        raise ConnectionResetError("closed without a reply")
                    data += chunk
                return pol.parse_reply(data)
            except OSError:
                self.close()
                if attempt + 1 == TRY_LIMIT:
                    raise
                self.retries += 1
                time.sleep(RETRY_DELAY)
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


@dataclass
class Load:
    """``LOAD_THREADS`` Postfix-like clients asking through HAProxy until :meth:`finish`, or
    each made ``LOAD_COUNT`` decisions, or ``LOAD_SECONDS`` passed."""
    port: int
    done: int = 0
    retries: int = 0
    failures: list[str] = field(default_factory=list)
    answers: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list[threading.Thread] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> "Load":
        deadline = time.monotonic() + LOAD_SECONDS
        for _ in range(LOAD_THREADS):
            thread = threading.Thread(target=self._run, args=(deadline,), daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def _run(self, deadline: float) -> None:
        client = PolicyClient(self.port)
        try:
            for _ in range(LOAD_COUNT):
                if time.monotonic() > deadline or self.stop.is_set():
                    break
                try:
                    action = client.ask(REQUEST)
                except OSError as e:
                    with self.lock:
                        self.failures.append(repr(e))
                    continue
                with self.lock:
                    self.done += 1
                    self.answers.add(action.split()[0])
        finally:
            with self.lock:
                self.retries += client.retries
            client.close()

    def running(self) -> bool:
        return any(t.is_alive() for t in self.threads)

    def go_on(self, what: str) -> int:
        """Wait until ``AFTER`` more decisions were made (or the load ended) and return the count."""
        start = self.done
        wait_until(lambda: self.done >= start + AFTER or not self.running(), what, SECONDS)
        return self.done

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(LOAD_SECONDS + SECONDS)
        assert not any(t.is_alive() for t in self.threads)


def processes_of(master: int) -> list[int]:
    """The master and its children (workers, metrics process), from /proc."""
    pids = [master]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == master:
                pids.append(int(entry.name))
    return pids


# -- the tests -----------------------------------------------------------------------------------

def test_decisions_flow_through_haproxy_and_unbound_is_the_fleets_cache(fleet: Fleet, dns_server: TestDnsServer):
    client = PolicyClient(fleet.binds[POLICY])
    try:
        assert client.ask(REQUEST).startswith("PREPEND")
    finally:
        client.close()
    with Client(f"127.0.0.1:{fleet.binds[MSGPACK]}") as rpc:
        assert rpc.checkID("192.0.2.1", "example.com")[0] == "ACCEPT"
    # a name asked through one host is warm in Unbound for the others: no new upstream query.
    # Compared name by name: a lookup host 1 started ahead and did not wait for (a prefetch)
    # may reach the server after its answer, and is no query of the others
    first, *others = fleet.hosts
    request = {**REQUEST, "helo_name": "example.net", "client_address": "192.0.2.7"}
    before = upstream_counts(dns_server)
    with socket.create_connection((first.address, fleet_port(fleet, first, POLICY)), timeout=10) as s:
        answer = exchange(s, request)
    after_first = upstream_counts(dns_server)
    asked = {key: n for key, n in after_first.items() if n > before.get(key, 0)}
    assert ("example.net.registry.test", "TXT") in asked
    for host in others:
        with socket.create_connection((host.address, fleet_port(fleet, host, POLICY)), timeout=10) as s:
            assert exchange(s, request) == answer
    now = upstream_counts(dns_server)
    assert {key: now[key] for key in asked} == {key: after_first[key] for key in asked}


def upstream_counts(server: TestDnsServer) -> dict[tuple[str, str], int]:
    """What the test DNS server was asked, by (name, type). ``dict()`` of the Counter copies it
    in one C call, which the server's thread cannot interleave with."""
    return dict(server.queries)


def fleet_port(fleet: Fleet, host: Host, port: int) -> int:
    """The port ``host`` serves deploy/haproxy.cfg's ``port`` on (the same on every host)."""
    text = host.checkid.config.read_text()
    protocol = {POLICY: "policy", MSGPACK: "msgpack-rpc"}[port]
    match = re.search(rf'protocol = "{protocol}"\naddress = "[^:"]+:(\d+)"', text)
    assert match is not None
    return int(match.group(1))


def exchange(sock: socket.socket, request: dict[str, str]) -> str:
    sock.sendall(pol.encode_request(request))
    data = b""
    while not data.endswith(b"\n\n"):
        chunk = sock.recv(4096)
        assert chunk, "closed without a reply"
        data += chunk
    return pol.parse_reply(data)


def test_a_host_killed_under_load_costs_no_decision(fleet: Fleet):
    load = Load(fleet.binds[POLICY]).start()
    victim = fleet.hosts[0]
    try:
        before = load.go_on("decisions under way")
        for pid in processes_of(victim.proc.pid):  # the whole host at once: master, workers, metrics
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        victim.proc.wait(SECONDS)
        wait_until(lambda: fleet.server_status()[victim.name].startswith("DOWN"), "HAProxy marks the host down",
                   SECONDS)
        after = load.go_on("decisions after the host is down")
        assert load.running(), "the load ran out before the end of the test: raise LOAD_COUNT or LOAD_SECONDS"
    finally:
        load.finish()
    assert load.failures == [], load.failures
    assert after > before
    assert load.answers == {"PREPEND"}


def test_sigterm_takes_a_host_out_of_the_pool_before_it_stops(fleet: Fleet):
    load = Load(fleet.binds[POLICY]).start()
    leaving = fleet.hosts[1]
    try:
        load.go_on("decisions under way")
        leaving.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: fleet.server_status()[leaving.name] == "DOWN", "HAProxy marks the draining host down",
                   SECONDS)
        assert leaving.proc.poll() is None  # out of the pool while it still runs
        during = load.done
        leaving.proc.send_signal(signal.SIGTERM)  # the second one ends leave_pool: drain now
        assert leaving.proc.wait(SECONDS) == 0
        after = load.go_on("decisions after the host stopped")
        assert load.running(), "the load ran out before the end of the test: raise LOAD_COUNT or LOAD_SECONDS"
    finally:
        load.finish()
    assert load.failures == [], load.failures
    assert after > during
    assert load.answers == {"PREPEND"}
    # the others stay in: a health check that came late (the metrics process runs at nice 10,
    # HAProxy's "timeout check" is 1 s) may show one "UP 2/3" for a moment, never "DOWN"
    statuses = fleet.server_status()
    others = [name for name in statuses if name != leaving.name]
    assert not [name for name in others if statuses[name].startswith("DOWN")], statuses
    wait_until(lambda: all(fleet.server_status()[name] == "UP" for name in others), "the other hosts UP", SECONDS)
