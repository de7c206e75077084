"""The pre-fork daemon as a subprocess: workers, shared cache, crash and stall recovery,
live policy edits, reloads, draining, and metrics summed over workers."""
from __future__ import annotations

import os
import pwd
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
from testsupport.policy import ask
from testsupport.processes import Checkid, connections_taken, free_port, wait_until, world_readable_tmpdir

#: bound on every wait below
WAIT_SECONDS = 20.0
#: a load that nobody stopped ends by itself after this (far above the waits of any test)
LOAD_CAP_SECONDS = 300.0


def requests_in_flight(port, n):
    """``n`` policy requests from threads, returned once each was sent and read by a worker
    (nothing left in a socket or accept queue) or answered: (threads, answers, errors)."""
    answers: list[str] = []
    errors: list[str] = []
    sent: list[int] = []

    def one():
        try:
            answers.append(ask(port, on_sent=lambda: sent.append(1)))
        except OSError as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    wait_until(lambda: len(answers) == n or (len(sent) == n and connections_taken(port) >= n),
               "requests in flight", WAIT_SECONDS)
    return threads, answers, errors


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
    """Policy requests on new connections from start() until stop(), so that no phase of a
    test can run out of them however fast the machine; a phase waits for its own count
    (:meth:`wait_for`). ``LOAD_CAP_SECONDS`` only ends a load whose test never stopped it."""

    def __init__(self, port, helo="example.com"):
        super().__init__(daemon=True)
        self.port, self.helo = port, helo
        self.results: list[tuple[float, str]] = []
        self.errors: Counter[str] = Counter()
        self.halt = threading.Event()

    def run(self):
        end = time.monotonic() + LOAD_CAP_SECONDS
        while not self.halt.is_set() and time.monotonic() < end:
            try:
                self.results.append((time.monotonic(), ask(self.port, helo=self.helo)))
            except ConnectionRefusedError:
                self.errors["refused"] += 1
            except OSError as e:
                self.errors[type(e).__name__] += 1

    def since(self, t):
        """The replies to requests answered after ``t``."""
        return [r for at, r in self.results if at > t]

    def wait_for(self, n, after=0.0, what="load"):
        """Return once ``n`` replies came after ``after``; fails at once if the load ended."""
        def enough():
            if not self.is_alive():
                raise AssertionError(f"the load ended before {what}")
            return len(self.since(after)) >= n
        wait_until(enough, what, WAIT_SECONDS)

    def stop(self):
        self.halt.set()
        self.join(WAIT_SECONDS)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


def daemon(dns_server, workdir, workers=2, extra="", accept_wait=0.1):
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
accept_wait = {accept_wait}
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


def worker_pids(checkid, log_file=None):
    """The workers started so far, oldest first, from the log (``log_file`` when configured)."""
    text = (log_file or checkid.log).read_text()
    return [int(p) for _, p in re.findall(r"worker (\d+) serving \(pid (\d+)\)", text)]


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


def ask_both(port: int) -> list[str]:
    """Two requests on two connections open at once: the accept gate gives the second to the
    worker without the first (a connection at a time, whichever idle worker wins the race)."""
    replies: list[str] = []
    replies.append(ask(port, on_sent=lambda: replies.append(ask(port))))
    return replies


def test_two_workers_serve_and_share_one_cache(dns_server, dns, workdir):
    # a long accept_wait: the gate's rule decides which worker takes a connection, never how
    # quickly a busy machine schedules the other
    with daemon(dns_server, workdir, accept_wait=30.0) as checkid:
        wait_until(lambda: len(worker_pids(checkid)) == 2, "two workers", WAIT_SECONDS)
        # ps and top tell the processes apart
        names = {Path(f"/proc/{pid}/comm").read_text().strip() for pid in worker_pids(checkid)}
        assert names == {"checkid-w0", "checkid-w1"}
        assert Path(f"/proc/{checkid.proc.pid}/comm").read_text().strip() == "checkid-master"
        # the first decision alone (it fills the shared layer), then pairs on both workers
        replies = [ask(checkid.port)] + [r for _ in range(20) for r in ask_both(checkid.port)]
        assert set(replies) == {"PREPEND Authent: 192.0.2.1 example.com SPF1 PASS ratings=S1:A,M2:A,H1:B"}
        # both workers decided (a log file is written at the end of a worker's loop turn,
        # maybe just after the reply: polled)
        wait_until(lambda: len(set(re.findall(r"checkid\[(\d+)\]: INFO checkid.decision", checkid.log.read_text())))
                   == 2, "a decision line from each worker", WAIT_SECONDS)
        # one query upstream for everything the 40 decisions needed, whichever worker asked
        assert dns.count("example.com.registry.test") == 1 and dns.count("example.com", "TXT") == 1


def test_without_the_shared_layer_each_worker_asks_upstream(dns_server, dns, workdir):
    with daemon(dns_server, workdir, extra="[cache]\nshared = false\n", accept_wait=30.0) as checkid:
        wait_until(lambda: len(worker_pids(checkid)) == 2, "two workers", WAIT_SECONDS)
        for _ in range(20):
            ask_both(checkid.port)
        assert dns.count("example.com.registry.test") == 2


def test_a_killed_worker_is_replaced_without_refusing_connections(dns_server, dns, workdir):
    with daemon(dns_server, workdir) as checkid:
        wait_until(lambda: len(worker_pids(checkid)) == 2, "two workers", WAIT_SECONDS)
        ask(checkid.port)
        with Load(checkid.port) as load:
            load.wait_for(50, what="load running")
            victim = worker_pids(checkid)[0]
            os.kill(victim, signal.SIGKILL)
            killed_at = time.monotonic()
            wait_until(lambda: len(live(worker_pids(checkid))) == 2 and len(worker_pids(checkid)) == 3,
                       "a replacement worker", WAIT_SECONDS)
            load.wait_for(100, after=killed_at, what="load after the kill")
        assert load.errors["refused"] == 0
        assert all(r.startswith("PREPEND Authent:") for _, r in load.results)
        assert dns.count("example.com.registry.test") == 1  # the shared cache survived the kill
        metrics = wait_until(lambda: (m := scrape(checkid.metrics_port))
                             and total(m, "checkid_worker_restarts_total") == 1 and m, "restart counted", WAIT_SECONDS)
        assert metrics["checkid_worker_restarts_total{reason=killed}"] == 1


def test_a_stalled_worker_is_detected_and_replaced(dns_server, workdir):
    with daemon(dns_server, workdir) as checkid:
        wait_until(lambda: len(worker_pids(checkid)) == 2, "two workers", WAIT_SECONDS)
        stalled = worker_pids(checkid)[1]
        os.kill(stalled, signal.SIGSTOP)  # its event loop stops ticking
        wait_until(lambda: stalled not in live([stalled]) or not _running(stalled),
                   "stalled worker killed", WAIT_SECONDS)
        wait_until(lambda: len(live(worker_pids(checkid))) == 2, "replacement", WAIT_SECONDS)
        metrics = wait_until(lambda: (m := scrape(checkid.metrics_port))
                             and m["checkid_worker_restarts_total{reason=hung}"] == 1 and m,
                             "hung counted", WAIT_SECONDS)
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
        wait_until(lambda: len(worker_pids(checkid)) == 2, "two workers", WAIT_SECONDS)
        with Load(checkid.port, helo="example.net") as load:
            load.wait_for(20, what="load running")
            assert all(r.startswith("550 5.7.1") for _, r in load.results)

            policy.write_text(source.replace("REJECT_STATUS = 7", "REJECT_STATUS = 10"))  # failures now FILTER
            edited = time.monotonic()
            load.wait_for(40, after=edited + 2.0, what="load after 2 s")
            after = load.since(edited + 2.0)
            assert after and all(r.startswith("PREPEND Authent: 192.0.2.1 example.net SPF1 FAIL") for r in after)

            policy.write_text("async def decide(ctx):\n    return (\n")  # broken: refused
            broken = time.monotonic()
            wait_until(lambda: scrape(checkid.metrics_port)["checkid_policy_reload_failures_total{}"] == 2,
                       "both workers refused the broken policy", WAIT_SECONDS)
            load.wait_for(40, after=broken + 2.0, what="load after the edit")
        assert load.errors == Counter()
        assert all(r.startswith("PREPEND Authent:") for r in load.since(edited + 2.0))
        assert "policy refused, the previous one keeps serving" in checkid.log.read_text()


def test_sighup_reloads_configuration_and_refuses_a_bad_one(dns_server, dns, workdir):
    dns.set_fault("slow.example.registry.test", drop=True)
    with daemon(dns_server, workdir) as checkid:
        wait_until(lambda: len(worker_pids(checkid)) == 2, "two workers", WAIT_SECONDS)
        assert ask(checkid.port, helo="slow.example").startswith("451 4.4.3")
        text = checkid.config.read_text()
        checkid.config.write_text(text.replace("[dns]", "[policy]\non_temperror = \"filter\"\n[dns]"))
        checkid.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: ask(checkid.port, helo="slow.example").startswith("PREPEND Authent:")
                   and all(ask(checkid.port, helo="slow.example").startswith("PREPEND") for _ in range(10)),
                   "new configuration serving", WAIT_SECONDS)
        checkid.config.write_text(text.replace("[dns]", "[dns]\ntimout = 3"))  # typo: refused
        checkid.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload refused" in checkid.log.read_text(), "refusal logged", WAIT_SECONDS)
        assert all(ask(checkid.port, helo="slow.example").startswith("PREPEND") for _ in range(10))


def test_sigterm_answers_requests_in_flight_then_exits_cleanly(dns_server, dns, workdir):
    with daemon(dns_server, workdir) as checkid:
        wait_until(lambda: len(worker_pids(checkid)) == 2, "two workers", WAIT_SECONDS)
        dns.set_fault("example.com.registry.test", delay=0.4)  # below the per-try timeout (0.5 s)
        threads, answers, errors = requests_in_flight(checkid.port, 8)
        assert checkid.stop() == 0
        for t in threads:
            t.join(WAIT_SECONDS)
        assert errors == [] and len(answers) == 8
        assert all(a.startswith("PREPEND Authent: 192.0.2.1 example.com SPF1 PASS") for a in answers)
        assert "master" in checkid.log.read_text() and "Traceback" not in checkid.log.read_text()


def test_metrics_sum_the_counters_of_all_workers(dns_server, workdir):
    with daemon(dns_server, workdir) as checkid:
        wait_until(lambda: len(worker_pids(checkid)) == 2, "two workers", WAIT_SECONDS)
        for _ in range(30):
            ask(checkid.port)
        for _ in range(10):
            ask(checkid.port, helo="example.net")
        metrics = wait_until(lambda: (m := scrape(checkid.metrics_port))
                             and total(m, "checkid_decisions_total") == 40 and m, "40 decisions", WAIT_SECONDS)
        assert metrics["checkid_decisions_total{action=ACCEPT,frontend=policy,stage=reputation}"] == 30
        assert metrics["checkid_decisions_total{action=REJECT,frontend=policy,stage=methods}"] == 10
        assert metrics["checkid_decision_duration_seconds_count{frontend=policy}"] == 40
        assert metrics["checkid_connections_total{frontend=policy}"] == 41  # and the readiness probe
        body = urllib.request.urlopen(f"http://127.0.0.1:{checkid.metrics_port}/healthz", timeout=10).read()
        assert body == b"ok\n"


def test_a_restarted_daemon_answers_from_the_cache_it_had(dns_server, dns, workdir):
    with daemon(dns_server, workdir) as checkid:
        wait_until(lambda: len(worker_pids(checkid)) == 2, "two workers", WAIT_SECONDS)
        assert ask(checkid.port).startswith("PREPEND Authent:")
    asked = dns.total
    with daemon(dns_server, workdir) as checkid:  # same state_dir
        wait_until(lambda: len(worker_pids(checkid)) == 2, "two workers", WAIT_SECONDS)
        assert ask(checkid.port).startswith("PREPEND Authent: 192.0.2.1 example.com SPF1 PASS")
    assert dns.total == asked


def ask_unix(path):
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(pol.encode_request({"request": "smtpd_access_policy", "protocol_state": "RCPT",
                                      "client_address": "192.0.2.1", "helo_name": "example.com"}))
        return s.recv(4096)


def test_privileges_are_dropped_and_unix_sockets_get_their_mode(dns_server, workdir):
    import grp
    import stat

    sock = workdir / "policy.sock"
    nobody = pwd.getpwnam("nobody")
    checkid = daemon(dns_server, workdir, extra=f'[[listen]]\nprotocol = "policy"\naddress = "unix:{sock}"\n'
                                                 f'mode = "0660"\ngroup = "nogroup"\n')
    checkid.config.write_text(checkid.config.read_text().replace(
        "[server]\n", '[server]\nuser = "nobody"\ngroup = "nogroup"\n'))
    with checkid:
        wait_until(lambda: len(worker_pids(checkid)) == 2, "two workers", WAIT_SECONDS)
        st = os.stat(sock)
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == grp.getgrnam("nogroup").gr_gid
        for pid in [checkid.proc.pid, *worker_pids(checkid)]:
            uids = Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[:2]
            assert [int(u) for u in uids] == [nobody.pw_uid, nobody.pw_uid]
        assert ask_unix(sock).startswith(b"action=PREPEND Authent:")
        for _ in range(10):  # both workers, as nobody, read and write the shared cache
            assert ask(checkid.port).startswith("PREPEND Authent:")
        assert "shared cache write failed" not in checkid.log.read_text()
        # nobody may not unlink in root's directory (workdir): a clean exit all the same, and
        # the socket is left for the next start to replace (docs/operations.md)
        assert checkid.stop() == 0
        assert stat.S_ISSOCK(os.lstat(sock).st_mode)
        assert "Traceback" not in checkid.log.read_text()
    with checkid:
        wait_until(lambda: len(worker_pids(checkid)) == 2, "two workers again", WAIT_SECONDS)
        assert ask_unix(sock).startswith(b"action=PREPEND Authent:")


def child_pid(checkid, name):
    """The pid of the master's child called ``name`` in ps (e.g. checkid-metrics)."""
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == checkid.proc.pid and (stat_file.parent / "comm").read_text().strip() == name:
            return int(stat_file.parent.name)
    return None


def reopened_by(log_text):
    return set(map(int, re.findall(r"checkid\[(\d+)\]: INFO checkid\.runtime\.logs: log reopened", log_text)))


def test_sigusr1_reopens_the_log_file_in_every_process(dns_server, workdir):
    log_file = workdir / "checkid.log.live"
    checkid = daemon(dns_server, workdir)
    checkid.config.write_text(checkid.config.read_text().replace("[server]\n", f'[server]\nlog_file = "{log_file}"\n'))
    with checkid:
        wait_until(lambda: log_file.exists() and len(re.findall("worker . serving", log_file.read_text())) == 2,
                   "workers logging to the file", WAIT_SECONDS)
        metrics_pid = wait_until(lambda: child_pid(checkid, "checkid-metrics"), "the metrics process", WAIT_SECONDS)
        everyone = {checkid.proc.pid, metrics_pid, *worker_pids(checkid, log_file)}
        assert len(everyone) == 4
        rotated = workdir / "checkid.log.1"
        log_file.rename(rotated)  # as logrotate does
        checkid.proc.send_signal(signal.SIGUSR1)
        wait_until(lambda: log_file.exists() and reopened_by(log_file.read_text()) == everyone,
                   "master, both workers and the metrics process reopened", WAIT_SECONDS)
        for _ in range(20):
            ask(checkid.port)
        wait_until(lambda: log_file.read_text().count("checkid.decision") == 20,
                   "decisions in the new file", WAIT_SECONDS)
        assert "checkid.decision" not in rotated.read_text()


def test_sigusr1_keeps_the_open_log_when_the_new_one_cannot_be_created(dns_server, workdir):
    logs = workdir / "log"  # root's, as /var/log is: the daemon running as nobody cannot create in it
    logs.mkdir(mode=0o755)
    log_file = logs / "checkid.log"
    log_file.touch()
    os.chown(log_file, pwd.getpwnam("nobody").pw_uid, -1)
    checkid = daemon(dns_server, workdir)
    checkid.config.write_text(checkid.config.read_text().replace(
        "[server]\n", f'[server]\nlog_file = "{log_file}"\nuser = "nobody"\ngroup = "nogroup"\n'))
    with checkid:
        wait_until(lambda: len(re.findall("worker . serving", log_file.read_text())) == 2,
                   "workers logging", WAIT_SECONDS)
        metrics_pid = wait_until(lambda: child_pid(checkid, "checkid-metrics"), "the metrics process", WAIT_SECONDS)
        everyone = {checkid.proc.pid, metrics_pid, *worker_pids(checkid, log_file)}
        assert len(everyone) == 4
        rotated = logs / "checkid.log.1"
        log_file.rename(rotated)
        checkid.proc.send_signal(signal.SIGUSR1)
        refused = r"checkid\[(\d+)\]: ERROR checkid\.runtime\.logs: cannot reopen the log file"
        wait_until(lambda: set(map(int, re.findall(refused, rotated.read_text()))) == everyone,
                   "every process logged that it keeps its file", WAIT_SECONDS)
        assert checkid.proc.poll() is None
        for _ in range(20):
            assert ask(checkid.port).startswith("PREPEND Authent:")
        wait_until(lambda: rotated.read_text().count("checkid.decision") == 20,
                   "decisions in the open file", WAIT_SECONDS)
        assert not log_file.exists()
        assert checkid.stop() == 0


def test_a_worker_replaced_after_a_broken_edit_serves_the_last_good_policy(dns_server, workdir):
    policy = workdir / "site.py"
    source = DEFAULT_PATH.read_text()
    policy.write_text(source)
    with daemon(dns_server, workdir, extra=f'[policy]\npath = "{policy}"\n') as checkid:
        wait_until(lambda: len(worker_pids(checkid)) == 2, "two workers", WAIT_SECONDS)
        filtering = "PREPEND Authent: 192.0.2.1 example.net SPF1 FAIL"
        policy.write_text(source.replace("REJECT_STATUS = 7", "REJECT_STATUS = 10"))  # a good edit, then
        wait_until(lambda: all(ask(checkid.port, helo="example.net").startswith(filtering) for _ in range(10)),
                   "the good edit serving", WAIT_SECONDS)
        policy.write_text("async def decide(ctx):\n    return (\n")  # a broken one: refused
        wait_until(lambda: scrape(checkid.metrics_port)["checkid_policy_reload_failures_total{}"] == 2,
                   "both workers refused the broken policy", WAIT_SECONDS)
        victim = worker_pids(checkid)[0]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: len(live(worker_pids(checkid))) == 2 and len(worker_pids(checkid)) == 3,
                   "a replacement worker", WAIT_SECONDS)
        assert checkid.proc.poll() is None
        # 40 new connections: the accept gate gives the replacement its share of them
        replies = [ask(checkid.port, helo="example.net") for _ in range(40)]
        assert all(r.startswith(filtering) for r in replies), Counter(replies)
        assert "could not start" not in checkid.log.read_text()
        policy.write_text(source)  # a fixed file is picked up by every worker, the replacement too
        wait_until(lambda: all(ask(checkid.port, helo="example.net").startswith("550 5.7.1") for _ in range(20)),
                   "the fixed policy serving", WAIT_SECONDS)
        assert checkid.stop() == 0


def test_a_hung_worker_leaves_its_traceback_in_the_log_and_is_replaced(dns_server, workdir):
    policy = workdir / "site.py"
    policy.write_text(DEFAULT_PATH.read_text() + (
        "\nimport time as _time\n_decide = decide\n\n\n"
        "async def decide(ctx):\n"
        "    if ctx.identity == 'hang.example':\n"
        "        _time.sleep(3600)  # blocks the event loop\n"
        "    return await _decide(ctx)\n"))
    with daemon(dns_server, workdir, extra=f'[policy]\npath = "{policy}"\n') as checkid:
        wait_until(lambda: len(worker_pids(checkid)) == 2, "two workers", WAIT_SECONDS)
        with socket.create_connection(("127.0.0.1", checkid.port), timeout=WAIT_SECONDS) as hang:
            hang.sendall(pol.encode_request({"request": "smtpd_access_policy", "protocol_state": "RCPT",
                                             "client_address": "192.0.2.1", "helo_name": "hang.example"}))
            metrics = wait_until(lambda: (m := scrape(checkid.metrics_port))
                                 and m["checkid_worker_restarts_total{reason=hung}"] == 1 and m,
                                 "the hung worker replaced", WAIT_SECONDS)
        assert total(metrics, "checkid_worker_restarts_total") == 1
        wait_until(lambda: len(live(worker_pids(checkid))) == 2, "two live workers", WAIT_SECONDS)
        log = checkid.log.read_text()
        assert "killed by SIGABRT" in log
        # faulthandler's dump: where the loop hung
        assert "Fatal Python error: Aborted" in log
        assert re.search(rf'File "{re.escape(str(policy))}", line \d+ in decide', log)
        assert ask(checkid.port).startswith("PREPEND Authent:")


def milter_idle_connection(port):
    """A milter connection that negotiated and then sends nothing, as an MTA's between mails."""
    from checkid.protocols.milter import codec as milter_codec
    from checkid.protocols.milter.events import OptNeg, OptNegReply

    conn = socket.create_connection(("127.0.0.1", port), timeout=WAIT_SECONDS)
    conn.sendall(milter_codec.encode_command(OptNeg(6, 0x1FF, 0x1FFFFF)))
    parser = milter_codec.ResponseParser()
    while (event := parser.next_event()) is None:
        data = conn.recv(4096)
        assert data, "closed before the OPTNEG reply"
        parser.receive_data(data)
    assert isinstance(event, OptNegReply)
    return conn


def milter_daemon(dns_server, workdir, grace):
    milter_port = free_port()
    checkid = daemon(dns_server, workdir,
                     extra=f'[[listen]]\nprotocol = "milter"\naddress = "127.0.0.1:{milter_port}"\n')
    checkid.config.write_text(checkid.config.read_text().replace("grace = 5.0", f"grace = {grace}"))
    checkid.milter_port = milter_port
    return checkid


def test_sigterm_does_not_wait_the_grace_period_for_an_idle_milter_connection(dns_server, workdir):
    grace = 60.0
    checkid = milter_daemon(dns_server, workdir, grace)
    with checkid, milter_idle_connection(checkid.milter_port) as idle:
        wait_until(lambda: len(worker_pids(checkid)) == 2, "two workers", WAIT_SECONDS)
        checkid.proc.send_signal(signal.SIGTERM)
        # far below the grace: the idle connection is closed at once, not waited on
        assert checkid.proc.wait(WAIT_SECONDS) == 0
        assert idle.recv(4096) == b""  # closed by the worker
    assert "did not finish in time" not in checkid.log.read_text()


def test_sighup_retires_the_old_workers_after_their_requests_not_after_the_grace(dns_server, dns, workdir):
    grace = 60.0
    checkid = milter_daemon(dns_server, workdir, grace)
    with checkid, milter_idle_connection(checkid.milter_port):
        wait_until(lambda: len(worker_pids(checkid)) == 2, "two workers", WAIT_SECONDS)
        old = worker_pids(checkid)
        dns.set_fault("example.com.registry.test", delay=0.4)  # below the per-try timeout (0.5 s)
        threads, answers, errors = requests_in_flight(checkid.port, 8)
        checkid.proc.send_signal(signal.SIGHUP)
        for t in threads:
            t.join(WAIT_SECONDS)
        assert errors == [] and len(answers) == 8  # the old generation answered what it had
        assert all(a.startswith("PREPEND Authent: 192.0.2.1 example.com SPF1 PASS") for a in answers)
        wait_until(lambda: live(old) == [] and len(live(worker_pids(checkid))) == 2,
                   "the old generation gone, far within the grace", WAIT_SECONDS)
        # a worker's process is gone before the master's next pass reaps it and logs that line
        wait_until(lambda: all(re.search(rf"worker {pid} \(slot \d+\) finished", checkid.log.read_text())
                               for pid in old), "the master logging each old worker finished", WAIT_SECONDS)
    assert checkid.stop() == 0


def test_sighup_refuses_a_configuration_whose_files_do_not_load(dns_server, workdir):
    """A missing thresholds (or block list) file is refused by the master, not found by new
    workers that then cannot start and take the daemon down."""
    with daemon(dns_server, workdir) as checkid:
        wait_until(lambda: len(worker_pids(checkid)) == 2, "two workers", WAIT_SECONDS)
        before = worker_pids(checkid)
        checkid.config.write_text(checkid.config.read_text()
                                  + f'\n[reputation]\nrecipient_thresholds = "{workdir / "missing.txt"}"\n')
        checkid.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload refused" in checkid.log.read_text(), "refusal logged", WAIT_SECONDS)
        assert checkid.proc.poll() is None and live(before) == before
        assert ask(checkid.port).startswith("PREPEND Authent:")


def test_sigterm_aborts_a_worker_hung_past_the_grace_with_its_traceback_then_exits(dns_server, workdir):
    policy = workdir / "site.py"
    policy.write_text(DEFAULT_PATH.read_text() + (
        "\nimport time as _time\n_decide = decide\n\n\n"
        "async def decide(ctx):\n"
        "    if ctx.identity == 'hang.example':\n"
        "        _time.sleep(3600)  # blocks the event loop through the drain\n"
        "    return await _decide(ctx)\n"))
    checkid = daemon(dns_server, workdir, workers=1, extra=f'[policy]\npath = "{policy}"\n')
    text = checkid.config.read_text().replace("heartbeat_timeout = 2.0", "heartbeat_timeout = 600.0")
    checkid.config.write_text(text.replace("grace = 5.0", "grace = 0.5"))
    with checkid:
        wait_until(lambda: len(worker_pids(checkid)) == 1, "the worker", WAIT_SECONDS)
        with socket.create_connection(("127.0.0.1", checkid.port), timeout=WAIT_SECONDS) as hang:
            hang.sendall(pol.encode_request({"request": "smtpd_access_policy", "protocol_state": "RCPT",
                                             "client_address": "192.0.2.1", "helo_name": "hang.example"}))
            wait_until(lambda: connections_taken(checkid.port) >= 1, "the request read", WAIT_SECONDS)
            assert checkid.stop() == 0
        log = checkid.log.read_text()
        assert "did not finish in time; aborting it" in log
        assert "Fatal Python error: Aborted" in log
        assert re.search(rf'File "{re.escape(str(policy))}", line \d+ in decide', log)


def test_the_master_wakes_when_a_respawn_is_due_not_at_its_next_pass():
    """A respawn logged as "restarting in 0.1 s" happens then: the loop's wait for a signal
    ends at the slot's time, not after a whole pass interval (in-process, no daemon)."""
    import dataclasses

    from checkid.config import Config
    from checkid.runtime import supervisor

    master = supervisor.Master(Config(server=dataclasses.replace(Config().server, workers=2)))
    now = 1000.0
    master.slots[0].not_before = now + 0.1  # slot 0 empty: its worker crashed, back-off 0.1 s
    master.slots[1].not_before = now + 5.0
    assert master.next_pass_in(now) == pytest.approx(0.1)
    assert master.next_pass_in(now + 0.3) == 0.0  # overdue: no wait at all
    master.slots[0].not_before = master.slots[1].not_before = now + 5.0
    assert master.next_pass_in(now) == supervisor.PASS_SECONDS


def _checkid_command(*args):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "checkid", *args], capture_output=True, text=True,
                          timeout=WAIT_SECONDS * 2)


def test_sighup_refuses_a_file_that_would_silently_revert_dns_and_the_registry(dns_server, workdir):
    """Issue 14: an empty (or gutted) file on SIGHUP was accepted and switched DNS to the
    system resolver and the registry to the public zone. Now refused, with the reason."""
    with daemon(dns_server, workdir) as checkid:
        wait_until(lambda: len(worker_pids(checkid)) == 2, "two workers", WAIT_SECONDS)
        before = worker_pids(checkid)
        good = checkid.config.read_text()
        server_table = good[good.index("[server]"):good.index("[dns]")]
        listen_table = good[good.index("[[listen]]"):good.index("[server]")]
        checkid.config.write_text(listen_table + server_table)  # [dns] and [registry] gone
        out = _checkid_command("reload", "-c", str(checkid.config), "--timeout", str(WAIT_SECONDS))
        assert out.returncode == 1, out
        assert "reload refused" in out.stderr and "dns.nameservers" in out.stderr and "registry.zone" in out.stderr
        checkid.config.write_text("# emptied by mistake\n")
        checkid.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "states no setting" in checkid.log.read_text(), "the empty file refused", WAIT_SECONDS)
        assert live(before) == before and worker_pids(checkid) == before
        # still the test DNS server and its registry zone: the site's answer, not a default's
        assert ask(checkid.port).startswith("PREPEND Authent: 192.0.2.1 example.com SPF1 PASS")
        # stating the key makes it deliberate
        checkid.config.write_text(good.replace("timeout = 1.0", "timeout = 0.9"))
        out = _checkid_command("reload", "-c", str(checkid.config), "--timeout", str(WAIT_SECONDS))
        assert out.returncode == 0, out
