"""The engine's seams: what it tells an observer, what it offers front-ends, what it imports."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from checkid.config import ReputationConfig
from checkid.engine import context
from checkid.engine.decision import Action, Envelope
from checkid.engine.engine import Engine
from tests.conftest import base_config, run


class Recorder:
    """An :class:`~checkid.engine.engine.Observer` that keeps what it is told."""

    def __init__(self) -> None:
        self.decisions: list[tuple[str, float]] = []
        self.dns: list[tuple[str, float]] = []

    def observe_decision(self, frontend: str, seconds: float) -> None:
        self.decisions.append((frontend, seconds))

    def observe_dns(self, rdtype: str, seconds: float) -> None:
        self.dns.append((rdtype, seconds))


def test_engine_tells_its_observer_each_decision_and_each_dns_query(dns):
    seen = Recorder()
    engine = Engine(base_config(dns), observer=seen)
    env = Envelope("192.0.2.1", "example.com")
    assert run(engine.decide(env, frontend="milter")).action is Action.ACCEPT
    assert [f for f, _ in seen.decisions] == ["milter"]
    assert {"TXT", "A"} <= {t for t, _ in seen.dns}  # registry/SPF records, the DNSBL
    queries = len(seen.dns)
    run(engine.decide(env))  # warm: a decision, no query
    assert [f for f, _ in seen.decisions] == ["milter", "inprocess"] and len(seen.dns) == queries
    assert all(s >= 0 for _, s in seen.decisions + seen.dns)


def test_recipients_of_one_threshold_entry_share_a_class(dns, tmp_path):
    table = tmp_path / "thresholds"
    table.write_text("strict@example.org reject_max=0\n@picky.example accept_avg=9\n")
    engine = Engine(base_config(dns, reputation=ReputationConfig(recipient_thresholds=str(table))))
    classes = {r: engine.recipient_class(r) for r in
               ("<Strict@example.org>", "other@example.org", "a@picky.example", "b@PICKY.example", "c@else.example")}
    assert classes["<Strict@example.org>"] != classes["other@example.org"]
    assert classes["a@picky.example"] == classes["b@PICKY.example"] != classes["other@example.org"]
    assert classes["other@example.org"] == classes["c@else.example"] == Engine(base_config(dns)).recipient_class("x@y")


def test_engine_imports_no_runtime_nor_front_end():
    code = ("import sys, checkid.engine.engine, checkid.engine.policyapi; "
            "print(sorted(m for m in sys.modules if m.startswith(('checkid.runtime', 'checkid.protocols'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_context_does_not_import_the_engine_that_builds_it():
    tree = ast.parse(Path(context.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "checkid.engine.engine" not in imported
