"""deploy/: the Grafana dashboard asks only for metrics and labels checkid exports, the
sample configuration is valid, the systemd unit passes ``systemd-analyze`` and runs the real
commands, and the script that creates the checkid user does so."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from checkid import config as config_mod
from checkid.config import Config
from checkid.engine.decision import Action
from testsupport.policy import ask
from testsupport.processes import Checkid, free_port, wait_until, world_readable_tmpdir

ROOT = Path(__file__).resolve().parents[1]


#: labels Prometheus adds when it scrapes
SCRAPE_LABELS = {"instance", "job"}
#: bound on every wait for the daemon
WAIT_SECONDS = 20.0


def exposition_labels(text):
    """sample name -> {label name -> values seen} of a Prometheus text exposition."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = samples.setdefault(sample.name, {})
            for name, value in sample.labels.items():
                labels.setdefault(name, set()).add(value)
    return samples


def every_metric_exposition(tmp_path):
    """A real multiprocess exposition of every metric the workers export, each touched once."""
    script = textwrap.dedent(f"""
        from collections import Counter
        from checkid.runtime import metrics
        metrics.prepare_dir({str(tmp_path / "metrics")!r})
        e = metrics.Exporter()
        counts = Counter({{(name, *("x" for _ in labels)): 1 for name, (_, labels) in metrics.COUNTERS.items()}})
        e.sync(counts, {{"policy": 1}})
        e.observe_decision("policy", 0.001)
        e.observe_dns("A", 0.001)
        e.workers.set(2)
        print(metrics.render()[0].decode())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    return exposition_labels(out.stdout)


def live_exposition(dns, workdir):
    """GET /metrics of a real ``checkid serve`` after an ACCEPT, a pre-screen REJECT, a
    TEMPFAIL (the registry answers SERVFAIL), a refused reload and a killed worker."""
    port = free_port()
    drop = workdir / "drop.cidr"
    drop.write_text("198.51.100.0/24\n")
    toml = f"""
[[listen]]
protocol = "policy"
address = "127.0.0.1:{port}"
[server]
workers = 1
state_dir = "{workdir / 'state'}"
[dns]
nameservers = ["{dns.address}"]
timeout = 1.0
[registry]
zone = "registry.test"
[prescreen]
block_files = ["{drop}"]
"""
    dns.set_fault("slow.example.registry.test", servfail=True)
    with Checkid(toml, workdir, [port], workers=1) as checkid:
        assert ask(port, "example.com").startswith("PREPEND Authent:")
        assert ask(port, "example.com", ip="198.51.100.9").startswith("550 5.7.1")
        assert ask(port, "slow.example").startswith("4")
        checkid.config.write_text(checkid.config.read_text() + "\n[server.nonsense]\n")  # refused
        checkid.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload refused" in checkid.log.read_text(), "the reload refused", WAIT_SECONDS)
        url = f"http://127.0.0.1:{checkid.metrics_port}/metrics"

        def scraped(*wanted):
            text = urllib.request.urlopen(url, timeout=10).read().decode()
            return text if all(w in text for w in wanted) else None

        # the worker's counts reach the metric files once a tick: kill it only after
        wait_until(lambda: scraped('action="TEMPFAIL"', 'result="failed"'), "the decisions in /metrics", WAIT_SECONDS)
        worker = int(wait_until(lambda: re.findall(r"worker 0 serving \(pid (\d+)\)", checkid.log.read_text()),
                                "the worker", WAIT_SECONDS)[0])
        os.kill(worker, signal.SIGKILL)
        text = wait_until(lambda: scraped('checkid_worker_restarts_total{reason="killed"}'),
                          "the restart", WAIT_SECONDS)
        return exposition_labels(text)


def test_every_dashboard_query_selects_exported_metrics_and_labels(tmp_path, dns):
    exported = every_metric_exposition(tmp_path)
    live = live_exposition(dns, world_readable_tmpdir("checkid-deploy-"))
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "checkid.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs.append(dashboard["templating"]["list"][1]["query"]["query"])
    for expr in exprs:
        for name, matchers in re.findall(r"\b(checkid_[a-z_]+)(?:\{([^}]*)\})?", expr):
            assert name in exported or name in live, f"{name} is not exported ({expr})"
            labels = {**exported.get(name, {}), **live.get(name, {})}
            for label, op, value in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', matchers):
                assert label in labels or label in SCRAPE_LABELS, f"{name} has no label {label} ({expr})"
                if op == "=" and label not in SCRAPE_LABELS:  # a value the daemon really writes
                    assert value in live.get(name, {}).get(label, set()), f"{name}{{{label}={value!r}}} never seen"
        for by, inner in re.findall(r"\bby \(([^)]*)\)\s*\((.*)", expr):
            name = re.search(r"\bcheckid_[a-z_]+", inner).group(0)
            labels = {**exported.get(name, {}), **live.get(name, {})}
            for label in (label.strip() for label in by.split(",")):
                assert label in labels or label in SCRAPE_LABELS, f"{name} has no label {label} ({expr})"
    assert {a.value for a in Action} >= live["checkid_decisions_total"]["action"]
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("decisions per second", "latency", "cache hit ratio", "dns latency", "pre-screen", "restarts",
                  "by front-end", "tempfail", "temperrors", "policy errors", "refused reloads",
                  "dnsbl lookup errors", "worker restarts per second"):
        assert topic in titles, topic


def test_sample_configuration_is_valid_and_states_the_defaults():
    sample = config_mod.load(ROOT / "deploy" / "checkid.toml")
    assert sample == Config()  # every value shown is the built-in default
    out = subprocess.run([sys.executable, "-m", "checkid", "check-config", "-c", str(ROOT / "deploy" / "checkid.toml")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def installed_unit(tmp_path):
    """deploy/checkid.service with this checkout's checkid in place of /opt/checkid's
    (systemd-analyze checks that the commands exist)."""
    unit = (ROOT / "deploy" / "checkid.service").read_text()
    assert "/opt/checkid/.venv/bin/checkid " in unit
    here = tmp_path / "checkid.service"
    here.write_text(unit.replace("/opt/checkid/.venv/bin/checkid ", f"{Path(sys.executable).parent / 'checkid'} "))
    return here


def test_systemd_unit_runs_serve_notifies_and_reloads_with_the_command():
    unit = (ROOT / "deploy" / "checkid.service").read_text()
    assert re.search(r"(?m)^ExecStart=\S+/checkid serve -c /etc/checkid/checkid.toml$", unit)
    assert re.search(r"(?m)^ExecReload=\S+/checkid reload -c /etc/checkid/checkid.toml$", unit)
    assert re.search(r"(?m)^Type=notify$", unit) and re.search(r"(?m)^User=checkid$", unit)
    assert re.search(r"(?m)^KillMode=mixed$", unit)
    for option in ("ProtectSystem=strict", "ProtectHome=true", "PrivateTmp=true", "NoNewPrivileges=true",
                   "CapabilityBoundingSet=CAP_NET_BIND_SERVICE", "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
                   "StateDirectory=checkid", "ReadWritePaths=/var/lib/checkid"):
        assert re.search(rf"(?m)^{re.escape(option)}$", unit), option


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path):
    unit = installed_unit(tmp_path)
    out = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    # an unknown or misspelt option is only a warning: none may show
    assert out.returncode == 0 and unit.name not in out.stdout + out.stderr, out.stdout + out.stderr


def test_systemd_unit_is_sandboxed(tmp_path):
    unit = installed_unit(tmp_path)
    # exposure 0 (locked down) to 10 (none): at most 2.0, systemd's "OK"
    out = subprocess.run(["systemd-analyze", "security", "--offline=true", "--threshold=20", str(unit)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout[-2000:]


def test_create_user_makes_the_system_user_and_its_state_directory(tmp_path):
    host_passwd = Path("/etc/passwd").read_text()
    etc = tmp_path / "etc"
    etc.mkdir()
    for name in ("passwd", "group", "shadow", "gshadow", "login.defs"):
        shutil.copy(Path("/etc") / name, etc / name)
    for _ in range(2):  # running it again changes nothing
        subprocess.run(["sh", str(ROOT / "deploy" / "create-user"), str(tmp_path)], check=True, timeout=60)
    [entry] = [line.split(":") for line in (etc / "passwd").read_text().splitlines() if line.startswith("checkid:")]
    uid, gid, home, shell = int(entry[2]), int(entry[3]), entry[5], entry[6]
    assert uid < 1000 and home == "/var/lib/checkid" and shell == "/usr/sbin/nologin"  # a system user, no login
    assert [line for line in (etc / "group").read_text().splitlines() if line.startswith("checkid:")] == \
        [f"checkid:x:{gid}:"]
    state = (tmp_path / "var" / "lib" / "checkid").stat()
    assert (state.st_uid, state.st_gid, state.st_mode & 0o777) == (uid, gid, 0o750)
    assert Path("/etc/passwd").read_text() == host_passwd  # only the files under ROOT changed


def test_install_script_creates_the_user_when_run_as_root():
    script = (ROOT / "scripts" / "install").read_text()
    assert re.search(r'(?m)^\[ "\$\(id -u\)" != 0 \] \|\| sh deploy/create-user$', script)


def test_check_config_names_the_policy_line_at_fault(tmp_path):
    policy = tmp_path / "policy.py"
    policy.write_text("async def decide(ctx):\n    return (\n")
    conf = tmp_path / "checkid.toml"
    conf.write_text(f'[policy]\npath = "{policy}"\n')
    out = subprocess.run([sys.executable, "-m", "checkid", "check-config", "-c", str(conf)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and f"{policy}:2: syntax error" in out.stderr


def haproxy_sections(text):
    """deploy/haproxy.cfg as {"backend checkid_policy": [its lines, split into words]}."""
    sections, current = {}, None
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if not line[0].isspace():
            current = sections.setdefault(" ".join(words[:2]), [])
        elif current is not None:
            current.append(words)
    return sections


def test_haproxy_config_passes_haproxy_check_and_health_checks_every_backend():
    path = ROOT / "deploy" / "haproxy.cfg"
    out = subprocess.run(["haproxy", "-c", "-f", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    sections = haproxy_sections(path.read_text())
    defaults = sections["defaults"]
    assert ["mode", "tcp"] in defaults and ["balance", "leastconn"] in defaults
    [server_defaults] = [w for w in defaults if w[0] == "default-server"]
    assert "check" in server_defaults
    metrics_port = int(server_defaults[server_defaults.index("port") + 1])
    sample = config_mod.load(ROOT / "deploy" / "checkid.toml")
    assert metrics_port == int(sample.metrics.address.rsplit(":", 1)[1])  # the checks ask /healthz's port
    backends = {name.split()[1]: lines for name, lines in sections.items() if name.startswith("backend ")}
    listened = {int(lst.address.rsplit(":", 1)[1]) for lst in sample.listen if not lst.address.startswith("unix:")}
    served = set()
    for name, lines in backends.items():
        assert ["option", "httpchk", "GET", "/healthz"] in lines, name
        assert ["http-check", "expect", "status", "200"] in lines, name
        servers = [w for w in lines if w[0] == "server"]
        assert len(servers) >= 2, name
        served |= {int(w[2].rsplit(":", 1)[1]) for w in servers}
        if name == "checkid_smtp":  # the front door takes the client's address by the PROXY protocol
            assert all("send-proxy-v2" in w for w in servers)
    assert listened <= served  # every TCP listener of the sample configuration is balanced
    # a host marked down while it drains keeps the connections it is answering
    assert not any("shutdown-sessions" in w for lines in sections.values() for w in lines)


def test_haproxy_marks_a_draining_host_down_within_the_leave_pool_the_config_advises():
    text = (ROOT / "deploy" / "haproxy.cfg").read_text()
    [server_defaults] = [w for w in haproxy_sections(text)["defaults"] if w[0] == "default-server"]
    seconds = {"s": 1.0, "ms": 0.001}

    def duration(word):
        number, unit = re.fullmatch(r"(\d+)(ms|s)?", word).groups()
        return int(number) * seconds[unit or "ms"]
    inter = duration(server_defaults[server_defaults.index("inter") + 1])
    fall = int(server_defaults[server_defaults.index("fall") + 1])
    [check_timeout] = [duration(w[2]) for w in haproxy_sections(text)["defaults"] if w[:2] == ["timeout", "check"]]
    advised = float(re.search(r"leave_pool = ([\d.]+)", text).group(1))
    assert advised >= inter * fall + check_timeout


def test_unbound_config_passes_unbound_checkconf():
    out = subprocess.run(["unbound-checkconf", str(ROOT / "deploy" / "unbound.conf")], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_haproxy_caps_connections_and_finds_a_silent_host_by_keepalive():
    sections = haproxy_sections((ROOT / "deploy" / "haproxy.cfg").read_text())
    assert any(w[0] == "maxconn" for w in sections["global"])
    for name, lines in sections.items():
        if name.startswith("frontend "):
            assert any(w[0] == "maxconn" for w in lines), name
    defaults = sections["defaults"]
    assert ["option", "srvtcpka"] in defaults
    setting = {w[0]: w[1] for w in defaults if w[0].startswith("srvtcpka-")}
    seconds = {name: int(value.rstrip("s")) for name, value in setting.items() if name != "srvtcpka-cnt"}
    # a powered-off host's idle sessions are closed within 30 s, not after `timeout server`
    assert seconds["srvtcpka-idle"] + seconds["srvtcpka-intvl"] * int(setting["srvtcpka-cnt"]) <= 30


def test_unbound_listens_on_its_own_address_not_the_wildcard():
    # bound to 0.0.0.0, a multi-address host can answer UDP from an address the client did not ask
    lines = [line.split("#", 1)[0].strip() for line in (ROOT / "deploy" / "unbound.conf").read_text().splitlines()]
    interfaces = [line.split(":", 1)[1].strip() for line in lines if line.startswith("interface:")]
    assert interfaces and not {"0.0.0.0", "::", "::0"} & set(interfaces) \
        or "interface-automatic: yes" in lines
