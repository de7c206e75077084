"""The operator's commands against a real ``checkid serve``: --version, stats, reload,
cache stats/show/flush, the policy refusal seen once, and systemd readiness."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client.parser import text_string_to_metric_families

import checkid
from checkid.engine.policy import DEFAULT_PATH
from testsupport.policy import ask
from testsupport.processes import Checkid, free_port, wait_until, world_readable_tmpdir

WAIT_SECONDS = 20.0


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "checkid", *args], capture_output=True, text=True, timeout=90,
                          env={**os.environ, **(env or {})})


def gauge(port, name):
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    values = [s.value for f in text_string_to_metric_families(body) for s in f.samples if s.name == name]
    return values[0] if values else None


def daemon(dns_server, workdir, workers=2, extra=""):
    port = free_port()
    toml = (f'[[listen]]\nprotocol = "policy"\naddress = "127.0.0.1:{port}"\n'
            f'[server]\nworkers = {workers}\nstate_dir = "{workdir / "state"}"\n'
            f'[dns]\nnameservers = ["{dns_server.address}"]\ntimeout = 1.0\n[registry]\nzone = "registry.test"\n'
            + extra)
    d = Checkid(toml, workdir, [port])
    d.port = port
    return d


def stats(d):
    out = run("stats", "--json", "-c", str(d.config))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def serving(d):
    return stats(d)["workers"]["serving"] == 2


@pytest.fixture
def workdir():
    return world_readable_tmpdir("checkid-commands-")


def test_version_is_printed_and_logged_with_the_files_in_use(dns_server, workdir):
    out = run("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"checkid {checkid.__version__}"
    with daemon(dns_server, workdir, workers=1) as d:
        wait_until(lambda: "ready" in d.log.read_text(), "ready", WAIT_SECONDS)
        log = d.log.read_text()
    assert f"checkid {checkid.__version__}: configuration {d.config}, policy {DEFAULT_PATH}" in log


def test_stats_sums_every_worker_and_shows_workers_policy_and_cache(dns_server, dns, workdir):
    with daemon(dns_server, workdir) as d:
        wait_until(lambda: serving(d), "two workers serving", WAIT_SECONDS)
        replies = [ask(d.port) for _ in range(30)]
        assert all(r.startswith("PREPEND Authent:") for r in replies)

        def decided():
            s = stats(d)
            counted = sum(c["value"] for c in s["counters"].get("decisions", [])) == 30
            return s if counted and s["cache"]["l1"]["entries"] else None  # both reported once a tick
        s = wait_until(decided, "30 decisions counted over both workers", WAIT_SECONDS)
        assert s["running"] and s["workers"] == {"running": 2, "wanted": 2, "serving": 2}
        assert s["policy"]["refused"] is False and s["uptime"] >= 0
        cache = s["cache"]
        assert cache["l2"]["entries"] > 0 and cache["l1"]["entries"] > 0
        assert 0 < cache["l1"]["hit_rate"] <= 1  # 30 decisions, one upstream query per name
        text = run("stats", "-c", str(d.config))
        assert text.returncode == 0 and "2 serving of 2" in text.stdout and "hit rate" in text.stdout


def test_reload_waits_for_the_outcome_and_exits_non_zero_when_refused(dns_server, workdir):
    policy = workdir / "site.py"
    policy.write_text(DEFAULT_PATH.read_text())
    with daemon(dns_server, workdir, extra=f'[policy]\npath = "{policy}"\n') as d:
        wait_until(lambda: serving(d), "two workers serving", WAIT_SECONDS)
        first = run("reload", "-c", str(d.config))
        assert first.returncode == 0 and "reloaded" in first.stdout, first.stderr
        # the new generation serves when reload returns
        s = stats(d)
        assert s["generation"] == 1 and s["workers"]["serving"] == 2 and s["last_reload"]["result"] == "ok"

        text = d.config.read_text()
        d.config.write_text(text.replace("[dns]", "[dns]\ntimout = 3"))
        typo = run("reload", "-c", str(workdir / "checkid.toml"))
        assert typo.returncode != 0 and "refused" in typo.stderr and "dns.timout: unknown key" in typo.stderr
        d.config.write_text(text)

        policy.write_text("async def decide(ctx):\n    return (\n")
        broken = run("reload", "-c", str(d.config))
        assert broken.returncode != 0 and "syntax error" in broken.stderr
        assert ask(d.port).startswith("PREPEND Authent:")  # the last good policy serves
        assert stats(d)["generation"] == 1


def test_a_refused_policy_edit_is_logged_once_and_raises_the_gauge(dns_server, workdir):
    policy = workdir / "site.py"
    source = DEFAULT_PATH.read_text()
    policy.write_text(source)
    with daemon(dns_server, workdir, extra=f'[policy]\npath = "{policy}"\n') as d:
        wait_until(lambda: serving(d), "two workers serving", WAIT_SECONDS)
        assert gauge(d.metrics_port, "checkid_policy_refused") == 0
        policy.write_text("async def decide(ctx):\n    return (\n")
        wait_until(lambda: gauge(d.metrics_port, "checkid_policy_refused") == 1, "gauge raised", WAIT_SECONDS)
        wait_until(lambda: stats(d)["counters"].get("policy_reload_failures", [{}])[0].get("value") == 2,
                   "both workers refused it", WAIT_SECONDS)
        assert stats(d)["policy"]["refused"] is True
        assert d.log.read_text().count("policy refused, the previous one keeps serving") == 1
        policy.write_text(source.replace("REJECT_STATUS = 7", "REJECT_STATUS = 10"))
        wait_until(lambda: gauge(d.metrics_port, "checkid_policy_refused") == 0, "gauge lowered", WAIT_SECONDS)


def test_cache_show_and_flush_reach_every_worker(dns_server, dns, workdir):
    registry_name = "example.com.registry.test"
    with daemon(dns_server, workdir) as d:
        wait_until(lambda: serving(d), "two workers serving", WAIT_SECONDS)
        assert all(ask(d.port).startswith("PREPEND Authent:") for _ in range(20))
        shown = run("cache", "show", registry_name, "-c", str(d.config), "--json")
        assert shown.returncode == 0, shown.stderr
        entries = json.loads(shown.stdout)
        assert [e["key"] for e in entries] == [[registry_name, "TXT"]]
        assert entries[0]["layer"] == "l2" and 0 < entries[0]["ttl_left"] and "svc=S1:A" in entries[0]["answer"]

        # the registry stops answering: the cached answers keep serving, in every worker ...
        dns.set_fault(registry_name, drop=True)
        assert all(ask(d.port).startswith("PREPEND Authent:") for _ in range(20))
        # ... until the name is flushed from the shared layer and from each worker's memory
        flushed = run("cache", "flush", "registry.test", "-c", str(d.config))
        assert flushed.returncode == 0 and "2 workers confirmed" in flushed.stdout, flushed.stderr
        with ThreadPoolExecutor(16) as pool:  # at once: each waits for the DNS timeout
            replies = Counter(r.split()[0] for r in pool.map(lambda _: ask(d.port), range(16)))
        assert replies == Counter({"451": 16})
        assert json.loads(run("cache", "show", registry_name, "-c", str(d.config), "--json").stdout) == []
        dns.clear_faults()
        everything = run("cache", "flush", "-c", str(d.config))
        assert everything.returncode == 0 and "flushed everything" in everything.stdout
        cache = json.loads(run("cache", "stats", "--json", "-c", str(d.config)).stdout)
        assert cache["l2"]["entries"] == 0


def test_readiness_reload_and_stopping_reach_the_notify_socket(dns_server, workdir, monkeypatch):
    path = workdir / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(WAIT_SECONDS)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    d = daemon(dns_server, workdir)
    try:
        d.start()
        ready = sock.recv(4096).decode()
        assert ready.startswith("READY=1")
        assert stats(d)["workers"]["serving"] == 2  # both workers served before READY=1
        d.proc.send_signal(signal.SIGHUP)
        reloading = sock.recv(4096).decode().split("\n")
        assert reloading[0] == "RELOADING=1" and reloading[1].startswith("MONOTONIC_USEC=")
        assert sock.recv(4096).decode().startswith("READY=1")
        assert stats(d)["generation"] == 1 and stats(d)["workers"]["serving"] == 2
        d.proc.send_signal(signal.SIGTERM)
        assert sock.recv(4096).decode() == "STOPPING=1"
        assert d.stop() == 0
    finally:
        d.stop() if d.proc is not None else None
        sock.close()
    assert not (workdir / "state" / "master.pid").exists()


def test_commands_say_plainly_when_no_daemon_runs(workdir):
    conf = workdir / "checkid.toml"
    conf.write_text(f'[server]\nstate_dir = "{workdir / "state"}"\n')
    out = run("reload", env={"CHECKID_CONFIG": str(conf)})
    assert out.returncode != 0 and "no checkid master running" in out.stderr
    s = run("stats", "--json", env={"CHECKID_CONFIG": str(conf)})
    assert s.returncode == 0 and json.loads(s.stdout)["running"] is False
