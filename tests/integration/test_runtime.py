"""The pre-fork daemon as a subprocess: workers, shared cache, crash and stall recovery,
live policy edits, reloads, draining, and metrics summed over workers."""
from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from checkid.engine.policy import DEFAULT_PATH
from checkid.protocols.postfix_policy import codec as pol
from testsupport.processes import Checkid, free_port, world_readable_tmpdir

#: bounds on every wait and load loop below
WAIT_SECONDS = 20.0


def eventually(predicate, seconds=WAIT_SECONDS, what="condition"):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached within {seconds} s")


def ask(port, ip="192.0.2.1", helo="example.com", timeout=10.0):
    """One policy request on a new connection (so SO_REUSEPORT spreads them over workers)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(pol.encode_request({"request": "smtpd_access_policy", "protocol_state": "RCPT",
                                      "client_address": ip, "helo_name": helo, "sender": "",
                                      "recipient": "u@example.org", "instance": ""}))
        data = b""
        while not data.endswith(b"\n\n"):
            chunk = s.recv(4096)
            if not chunk:
                raise ConnectionResetError("closed without a reply")
            data += chunk
    return pol.parse_reply(data)


def scrape(port):
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: Counter[str] = Counter()
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}"] += sample.value
    return out


def total(metrics, prefix):
    return sum(v for k, v in metrics.items() if k.startswith(prefix + "{"))


class Load(threading.Thread):
    """Requests on new connections until stopped, bounded in count and time."""

    def __init__(self, port, helo="example.com", max_requests=20_000, max_seconds=60.0):
        super().__init__(daemon=True)
        self.port, self.helo = port, helo
        self.max_requests, self.max_seconds = max_requests, max_seconds
        self.results: list[tuple[float, str]] = []
        self.errors: Counter[str] = Counter()
        self.halt = threading.Event()

    def run(self):
        end = time.monotonic() + self.max_seconds
        while not self.halt.is_set() and time.monotonic() < end and len(self.results) < self.max_requests:
            try:
                self.results.append((time.monotonic(), ask(self.port, helo=self.helo)))
            except ConnectionRefusedError:
                self.errors["refused"] += 1
            except OSError as e:
                self.errors[type(e).__name__] += 1

    def stop(self):
        self.halt.set()
        self.join(WAIT_SECONDS)


def daemon(dns_server, workdir, workers=2, extra=""):
    port = free_port()
    toml = f"""
[[listen]]
protocol = "policy"
address = "127.0.0.1:{port}"
[server]
workers = {workers}
state_dir = "{workdir / 'state'}"
heartbeat_timeout = 2.0
grace = 5.0
[dns]
nameservers = ["{dns_server.address}"]
timeout = 1.0
[registry]
zone = "registry.test"
{extra}
"""
    checkid = Checkid(toml, workdir, [port])
    checkid.port = port
    return checkid


def worker_pids(checkid):
    return [int(p) for _, p in re.findall(r"worker (\d+) serving \(pid (\d+)\)", checkid.log.read_text())]


def live(pids):
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
            alive.append(pid)
        except ProcessLookupError:
            pass
    return alive


@pytest.fixture
def workdir():
    return world_readable_tmpdir("checkid-runtime-")


def test_two_workers_serve_and_share_one_cache(dns_server, dns, workdir):
    with daemon(dns_server, workdir) as checkid:
        eventually(lambda: len(worker_pids(checkid)) == 2, what="two workers")
        # ps and top tell the processes apart
        names = {Path(f"/proc/{pid}/comm").read_text().strip() for pid in worker_pids(checkid)}
        assert names == {"checkid-w0", "checkid-w1"}
        assert Path(f"/proc/{checkid.proc.pid}/comm").read_text().strip() == "checkid-master"
        replies = [ask(checkid.port) for _ in range(40)]
        assert set(replies) == {"PREPEND Authent: 192.0.2.1 example.com SPF1 PASS ratings=S1:A,M2:A,H1:B"}
        log = checkid.log.read_text()
        deciders = set(re.findall(r"checkid\[(\d+)\]: INFO checkid.decision", log))
        assert len(deciders) == 2  # both workers decided
        # one query upstream for everything the 40 decisions needed, whichever worker asked
        assert dns.count("example.com.registry.test") == 1 and dns.count("example.com", "TXT") == 1


def test_without_the_shared_layer_each_worker_asks_upstream(dns_server, dns, workdir):
    with daemon(dns_server, workdir, extra="[cache]\nshared = false\n") as checkid:
        eventually(lambda: len(worker_pids(checkid)) == 2, what="two workers")
        for _ in range(40):
            ask(checkid.port)
        assert dns.count("example.com.registry.test") == 2


def test_a_killed_worker_is_replaced_without_refusing_connections(dns_server, dns, workdir):
    with daemon(dns_server, workdir) as checkid:
        eventually(lambda: len(worker_pids(checkid)) == 2, what="two workers")
        ask(checkid.port)
        load = Load(checkid.port)
        load.start()
        eventually(lambda: len(load.results) > 50, what="load running")
        victim = worker_pids(checkid)[0]
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        eventually(lambda: len(live(worker_pids(checkid))) == 2 and len(worker_pids(checkid)) == 3,
                   what="a replacement worker")
        eventually(lambda: sum(1 for t, _ in load.results if t > killed_at) > 100, what="load after the kill")
        load.stop()
        assert load.errors["refused"] == 0
        assert all(r.startswith("PREPEND Authent:") for _, r in load.results)
        assert dns.count("example.com.registry.test") == 1  # the shared cache survived the kill
        metrics = eventually(lambda: (m := scrape(checkid.metrics_port))
                             and total(m, "checkid_worker_restarts_total") == 1 and m, what="restart counted")
        assert metrics["checkid_worker_restarts_total{reason=killed}"] == 1


def test_a_stalled_worker_is_detected_and_replaced(dns_server, workdir):
    with daemon(dns_server, workdir) as checkid:
        eventually(lambda: len(worker_pids(checkid)) == 2, what="two workers")
        stalled = worker_pids(checkid)[1]
        os.kill(stalled, signal.SIGSTOP)  # its event loop stops ticking
        eventually(lambda: stalled not in live([stalled]) or not _running(stalled), what="stalled worker killed")
        eventually(lambda: len(live(worker_pids(checkid))) == 2, what="replacement")
        metrics = eventually(lambda: (m := scrape(checkid.metrics_port))
                             and m["checkid_worker_restarts_total{reason=hung}"] == 1 and m, what="hung counted")
        assert metrics["checkid_workers{}"] == 2


def _running(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] not in ("Z", "X")
    except FileNotFoundError:
        return False


def test_policy_edit_is_live_within_two_seconds_and_a_broken_edit_is_refused(dns_server, workdir):
    policy = workdir / "site.py"
    source = DEFAULT_PATH.read_text()
    policy.write_text(source)
    with daemon(dns_server, workdir, extra=f'[policy]\npath = "{policy}"\n') as checkid:
        eventually(lambda: len(worker_pids(checkid)) == 2, what="two workers")
        load = Load(checkid.port, helo="example.net")
        load.start()
        eventually(lambda: len(load.results) > 20, what="load running")
        assert all(r.startswith("550 5.7.1") for _, r in load.results)

        policy.write_text(source.replace("REJECT_STATUS = 7", "REJECT_STATUS = 10"))  # failures now FILTER
        edited = time.monotonic()
        eventually(lambda: sum(1 for t, _ in load.results if t > edited + 2.0) > 40, what="load after 2 s")
        after = [r for t, r in load.results if t > edited + 2.0]
        assert after and all(r.startswith("PREPEND Authent: 192.0.2.1 example.net SPF1 FAIL") for r in after)

        policy.write_text("async def decide(ctx):\n    return (\n")  # broken: refused
        broken = time.monotonic()
        eventually(lambda: scrape(checkid.metrics_port)["checkid_policy_reload_failures_total{}"] == 2,
                   what="both workers refused the broken policy")
        eventually(lambda: sum(1 for t, _ in load.results if t > broken + 2.0) > 40, what="load after the edit")
        load.stop()
        assert load.errors == Counter()
        assert all(r.startswith("PREPEND Authent:") for t, r in load.results if t > edited + 2.0)
        assert "policy refused, the previous one keeps serving" in checkid.log.read_text()


def test_sighup_reloads_configuration_and_refuses_a_bad_one(dns_server, dns, workdir):
    dns.set_fault("slow.example.registry.test", drop=True)
    with daemon(dns_server, workdir) as checkid:
        eventually(lambda: len(worker_pids(checkid)) == 2, what="two workers")
        assert ask(checkid.port, helo="slow.example").startswith("451 4.4.3")
        text = checkid.config.read_text()
        checkid.config.write_text(text.replace("[dns]", "[policy]\non_temperror = \"filter\"\n[dns]"))
        checkid.proc.send_signal(signal.SIGHUP)
        eventually(lambda: ask(checkid.port, helo="slow.example").startswith("PREPEND Authent:")
                   and all(ask(checkid.port, helo="slow.example").startswith("PREPEND") for _ in range(10)),
                   what="new configuration serving")
        checkid.config.write_text(text.replace("[dns]", "[dns]\ntimout = 3"))  # typo: refused
        checkid.proc.send_signal(signal.SIGHUP)
        eventually(lambda: "reload refused" in checkid.log.read_text(), what="refusal logged")
        assert all(ask(checkid.port, helo="slow.example").startswith("PREPEND") for _ in range(10))


def test_sigterm_answers_requests_in_flight_then_exits_cleanly(dns_server, dns, workdir):
    with daemon(dns_server, workdir) as checkid:
        eventually(lambda: len(worker_pids(checkid)) == 2, what="two workers")
        dns.set_fault("example.com.registry.test", delay=0.4)  # below the per-try timeout (0.5 s)
        answers: list[str] = []
        errors: list[str] = []

        def one():
            try:
                answers.append(ask(checkid.port))
            except OSError as e:
                errors.append(repr(e))

        threads = [threading.Thread(target=one) for _ in range(8)]
        for t in threads:
            t.start()
        eventually(lambda: dns.count("example.com.registry.test") >= 1, what="requests in flight")
        assert checkid.stop() == 0
        for t in threads:
            t.join(WAIT_SECONDS)
        assert errors == [] and len(answers) == 8
        assert all(a.startswith("PREPEND Authent: 192.0.2.1 example.com SPF1 PASS") for a in answers)
        assert "master" in checkid.log.read_text() and "Traceback" not in checkid.log.read_text()


def test_metrics_sum_the_counters_of_all_workers(dns_server, workdir):
    with daemon(dns_server, workdir) as checkid:
        eventually(lambda: len(worker_pids(checkid)) == 2, what="two workers")
        for _ in range(30):
            ask(checkid.port)
        for _ in range(10):
            ask(checkid.port, helo="example.net")
        metrics = eventually(lambda: (m := scrape(checkid.metrics_port))
                             and total(m, "checkid_decisions_total") == 40 and m, what="40 decisions")
        assert metrics["checkid_decisions_total{action=ACCEPT,frontend=policy,stage=reputation}"] == 30
        assert metrics["checkid_decisions_total{action=REJECT,frontend=policy,stage=methods}"] == 10
        assert metrics["checkid_decision_duration_seconds_count{frontend=policy}"] == 40
        assert metrics["checkid_connections_total{frontend=policy}"] == 41  # and the readiness probe
        body = urllib.request.urlopen(f"http://127.0.0.1:{checkid.metrics_port}/healthz", timeout=10).read()
        assert body == b"ok\n"


def test_a_restarted_daemon_answers_from_the_cache_it_had(dns_server, dns, workdir):
    with daemon(dns_server, workdir) as checkid:
        eventually(lambda: len(worker_pids(checkid)) == 2, what="two workers")
        assert ask(checkid.port).startswith("PREPEND Authent:")
    asked = dns.total
    with daemon(dns_server, workdir) as checkid:  # same state_dir
        eventually(lambda: len(worker_pids(checkid)) == 2, what="two workers")
        assert ask(checkid.port).startswith("PREPEND Authent: 192.0.2.1 example.com SPF1 PASS")
    assert dns.total == asked


def test_privileges_are_dropped_and_unix_sockets_get_their_mode(dns_server, workdir):
    import grp
    import pwd
    import stat

    sock = workdir / "policy.sock"
    nobody = pwd.getpwnam("nobody")
    checkid = daemon(dns_server, workdir, extra=f'[[listen]]\nprotocol = "policy"\naddress = "unix:{sock}"\n'
                                                 f'mode = "0660"\ngroup = "nogroup"\n')
    checkid.config.write_text(checkid.config.read_text().replace(
        "[server]\n", '[server]\nuser = "nobody"\ngroup = "nogroup"\n'))
    with checkid:
        eventually(lambda: len(worker_pids(checkid)) == 2, what="two workers")
        st = os.stat(sock)
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == grp.getgrnam("nogroup").gr_gid
        for pid in [checkid.proc.pid, *worker_pids(checkid)]:
            uids = Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[:2]
            assert [int(u) for u in uids] == [nobody.pw_uid, nobody.pw_uid]
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(sock))
            s.sendall(pol.encode_request({"request": "smtpd_access_policy", "protocol_state": "RCPT",
                                          "client_address": "192.0.2.1", "helo_name": "example.com"}))
            assert s.recv(4096).startswith(b"action=PREPEND Authent:")
        for _ in range(10):  # both workers, as nobody, read and write the shared cache
            assert ask(checkid.port).startswith("PREPEND Authent:")
        assert "shared cache write failed" not in checkid.log.read_text()


def test_sigusr1_reopens_the_log_file(dns_server, workdir):
    log_file = workdir / "checkid.log.live"
    checkid = daemon(dns_server, workdir)
    checkid.config.write_text(checkid.config.read_text().replace("[server]\n", f'[server]\nlog_file = "{log_file}"\n'))
    with checkid:
        eventually(lambda: log_file.exists() and len(re.findall("worker . serving", log_file.read_text())) == 2,
                   what="workers logging to the file")
        rotated = workdir / "checkid.log.1"
        log_file.rename(rotated)  # as logrotate does
        checkid.proc.send_signal(signal.SIGUSR1)
        eventually(lambda: log_file.exists() and log_file.read_text().count("log reopened") == 3,
                   what="master and both workers reopened")
        for _ in range(20):
            ask(checkid.port)
        eventually(lambda: log_file.read_text().count("checkid.decision") == 20, what="decisions in the new file")
        assert "checkid.decision" not in rotated.read_text()
