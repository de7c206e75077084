"""deploy/: the Grafana dashboard asks only for metrics checkid exports, the sample
configuration is valid, and the systemd unit runs the real commands."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from checkid import config as config_mod
from checkid.config import Config

ROOT = Path(__file__).resolve().parents[1]


def exported_metric_names(tmp_path):
    """The sample names of a real multiprocess exposition, every metric touched once."""
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
    return {line.split("{")[0].split()[0] for line in out.stdout.splitlines() if line and not line.startswith("#")}


def test_every_dashboard_query_names_an_exported_metric(tmp_path):
    exported = exported_metric_names(tmp_path)
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "checkid.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs.append(dashboard["templating"]["list"][1]["query"]["query"])
    used = {name for e in exprs for name in re.findall(r"\bcheckid_[a-z_]+", e)}
    assert used and used <= exported, used - exported
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("decisions per second", "latency", "cache hit ratio", "dns latency", "pre-screen", "restarts"):
        assert topic in titles


def test_sample_configuration_is_valid_and_states_the_defaults():
    sample = config_mod.load(ROOT / "deploy" / "checkid.toml")
    assert sample == Config()  # every value shown is the built-in default
    out = subprocess.run([sys.executable, "-m", "checkid", "check-config", "-c", str(ROOT / "deploy" / "checkid.toml")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_systemd_unit_runs_serve_and_reloads_with_sighup():
    unit = (ROOT / "deploy" / "checkid.service").read_text()
    assert re.search(r"(?m)^ExecStart=\S+/checkid serve -c /etc/checkid/checkid.toml$", unit)
    assert re.search(r"(?m)^ExecReload=/bin/kill -HUP \$MAINPID$", unit)
    assert re.search(r"(?m)^KillMode=mixed$", unit)


def test_check_config_names_the_policy_line_at_fault(tmp_path):
    policy = tmp_path / "policy.py"
    policy.write_text("async def decide(ctx):\n    return (\n")
    conf = tmp_path / "checkid.toml"
    conf.write_text(f'[policy]\npath = "{policy}"\n')
    out = subprocess.run([sys.executable, "-m", "checkid", "check-config", "-c", str(conf)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and f"{policy}:2: syntax error" in out.stderr
