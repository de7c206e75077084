"""Loading, refusing and reloading the operator's policy file."""
from __future__ import annotations

import logging
import os

import pytest

from checkid.config import PolicyConfig
from checkid.engine import policy
from checkid.engine.decision import Action, Envelope
from checkid.engine.engine import Engine
from checkid.errors import PolicyError
from tests.conftest import base_config, run

DEFAULT_SOURCE = policy.DEFAULT_PATH.read_text()


def test_default_policy_loads_with_its_tables():
    p = policy.load(policy.DEFAULT_PATH)
    assert set(p.module.METHOD_LIST) == {"QR1", "SPF1", "CSV", "DKIM"}
    assert "S1" in p.module.TRUSTED_SERVICES


@pytest.mark.parametrize("source, message", [
    ("async def decide(ctx):\n    return (\n", r"p\.py:2: syntax error"),
    ("import no_such_module_here\nasync def decide(ctx): pass\n", "ModuleNotFoundError"),
    ("raise SystemExit(3)\n", "SystemExit"),
    ("X = 1\n", r"no decide\(\) defined"),
    ("def decide(ctx):\n    return None\n", "must be 'async def decide"),
    ("METHOD_LIST = {'SPF1': 2}\nasync def decide(ctx): pass\n", "METHOD_LIST"),
    ("TRUSTED_SERVICES = {'S1': {'A': 'nine'}}\nasync def decide(ctx): pass\n", "TRUSTED_SERVICES"),
])
def test_a_bad_policy_file_is_refused_with_a_clear_message(tmp_path, source, message):
    path = tmp_path / "p.py"
    path.write_text(source)
    with pytest.raises(PolicyError, match=message):
        policy.load(path)


def _table(old: str, new: str) -> str:
    assert old in DEFAULT_SOURCE
    return DEFAULT_SOURCE.replace(old, new)


# each breaks one table of the default policy, which would otherwise load and then answer
# every authenticated message with 451 4.3.5
BROKEN_TABLES = [
    (_table('"accept_avg": 6.0', '"accept_avg": "six"'), "THRESHOLDS: accept_avg must be a number"),
    (_table('"accept_min": 5.0', '"acept_min": 5.0'), "THRESHOLDS: unknown key 'acept_min'"),
    (_table('    "reject_max": -1.0,\n', ""), "THRESHOLDS: reject_max is missing"),
    (_table('"accept_avg": 6.0', '"accept_avg": float("nan")'), "THRESHOLDS: accept_avg"),
    (_table('"accept_avg": 6.0', '"accept_avg": 60'), "THRESHOLDS: accept_avg"),
    (_table('"accept_avg": 6.0', '"accept_avg": True'), "THRESHOLDS: accept_avg"),
    (_table("REJECT_STATUS = 7", "REJECT_STATUS = 7\nTHRESHOLDS = [6.0, 5.0, -1.0]"), "THRESHOLDS: must map"),
    (_table("REJECT_STATUS = 7", "REJECT_STATUS = 0"), "REJECT_STATUS"),
    (_table("REJECT_STATUS = 7", "REJECT_STATUS = 11"), "REJECT_STATUS"),
    (_table("REJECT_STATUS = 7", 'REJECT_STATUS = "7"'), "REJECT_STATUS"),
    (_table('"SPF1": (2, 10)', '"SPF1": (2, -1)'), "METHOD_LIST: SPF1"),
    (_table('"SPF1": (2, 10)', '"SPF1": (2.5, 10)'), "METHOD_LIST: SPF1"),
    (_table('"S1": {"A": 9,', '"S1": {"A": 90,'), "TRUSTED_SERVICES: S1: grade 'A'"),
    (_table('"D": 0, "Wt": 5}', '"D": 0, "Wt": 0}'), "TRUSTED_SERVICES: S1: Wt"),
]


@pytest.mark.parametrize("source, message", BROKEN_TABLES)
def test_policy_with_a_broken_table_is_refused_naming_file_and_table(tmp_path, source, message):
    path = tmp_path / "site.py"
    path.write_text(source)
    with pytest.raises(PolicyError, match=f"^{path}: .*{message}"):
        policy.load(path)


def test_policy_tables_at_their_limits_are_accepted(tmp_path):
    source = _table('"reject_max": -1.0', '"reject_max": 9').replace("REJECT_STATUS = 7", "REJECT_STATUS = 10")
    path = tmp_path / "site.py"
    path.write_text(source.replace('"QR1": (1, 0)', '"QR1": (0, 0)'))
    assert policy.load(path).module.REJECT_STATUS == 10


def test_reload_refuses_a_broken_table_and_keeps_the_last_good_policy(make_engine, tmp_path):
    path = tmp_path / "site.py"
    path.write_text(DEFAULT_SOURCE)
    engine = make_engine(policy=PolicyConfig(path=str(path)))
    env = Envelope("192.0.2.1", "example.com")
    assert run(engine.decide(env)).action is Action.ACCEPT
    path.write_text(_table('"accept_avg": 6.0', '"accept_avg": "six"'))
    _bump(path)
    with pytest.raises(PolicyError, match="THRESHOLDS"):
        engine.policy.reload()
    assert run(engine.decide(env)).action is Action.ACCEPT  # not 451 4.3.5
    assert engine.policy.current.source == DEFAULT_SOURCE.encode()


def test_policy_keeps_the_text_it_compiled_and_compiles_given_text(tmp_path):
    path = tmp_path / "site.py"
    path.write_text(DEFAULT_SOURCE)
    loaded = policy.load(path)
    assert loaded.source == path.read_bytes()
    path.write_text("async def decide(ctx):\n    return (\n")
    again = policy.compile_policy(path, loaded.source)
    assert again.path == str(path) and again.module.REJECT_STATUS == 7
    with pytest.raises(PolicyError, match=rf"{path}:2: syntax error"):
        policy.compile_policy(path, path.read_bytes())


def test_engine_starts_on_the_last_good_policy_when_the_file_is_broken(dns, tmp_path, caplog):
    path = tmp_path / "site.py"
    path.write_text(DEFAULT_SOURCE.replace("REJECT_STATUS = 7", "REJECT_STATUS = 10"))
    good = path.read_bytes()
    path.write_text("async def decide(ctx):\n    return (\n")  # a refused edit, then a restart
    config = base_config(dns, policy=PolicyConfig(path=str(path)))
    with pytest.raises(PolicyError, match="syntax error"):
        Engine(config)  # a first start with no good policy fails
    with caplog.at_level(logging.WARNING, logger="checkid.engine.policy"):
        engine = Engine(config, policy_source=good)
    assert any(str(path) in r.getMessage() and "syntax error" in r.getMessage() for r in caplog.records)
    env = Envelope("192.0.2.1", "example.net")
    assert run(engine.decide(env)).action is Action.FILTER  # the last good policy decides
    assert not engine.policy.changed()  # the broken file is not retried until it changes

    path.write_text(DEFAULT_SOURCE)  # the operator fixes the file
    _bump(path)
    assert engine.policy.changed()
    engine.policy.reload()
    assert run(engine.decide(env)).action is Action.REJECT


def test_engine_without_a_good_fallback_reports_the_file_error(dns, tmp_path):
    path = tmp_path / "site.py"
    path.write_text("X = 1\n")
    config = base_config(dns, policy=PolicyConfig(path=str(path)))
    with pytest.raises(PolicyError, match=r"no decide\(\) defined"):
        Engine(config, policy_source=b"async def decide(ctx):\n    return (\n")


def test_missing_policy_file_is_refused(tmp_path):
    with pytest.raises(PolicyError, match="cannot read"):
        policy.load(tmp_path / "absent.py")


def _bump(path):
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_reload_picks_up_an_edit_and_keeps_the_last_good_policy(make_engine, tmp_path):
    path = tmp_path / "site.py"
    path.write_text(DEFAULT_SOURCE)
    engine = make_engine(policy=PolicyConfig(path=str(path)))
    env = Envelope("192.0.2.1", "example.net")
    assert run(engine.decide(env)).action is Action.REJECT

    # the operator decides that failed authoritative records go to the spam filter instead
    path.write_text(DEFAULT_SOURCE.replace("REJECT_STATUS = 7", "REJECT_STATUS = 10"))
    _bump(path)
    assert engine.policy.changed()
    engine.policy.reload()
    assert run(engine.decide(env)).action is Action.FILTER

    # a broken edit is refused; the previous policy keeps deciding
    path.write_text("async def decide(ctx):\n    return (\n")
    _bump(path)
    with pytest.raises(PolicyError):
        engine.policy.reload()
    assert engine.policy.failures == 1
    assert not engine.policy.changed()  # the refused file is not retried until it changes again
    assert run(engine.decide(env)).action is Action.FILTER


def test_a_policy_returning_garbage_gives_4xx(make_engine, tmp_path):
    path = tmp_path / "p.py"
    path.write_text("async def decide(ctx):\n    return 'ACCEPT'\n")
    d = run(make_engine(policy=PolicyConfig(path=str(path))).decide(Envelope("192.0.2.1", "example.com")))
    assert (d.action, d.code) == (Action.TEMPFAIL, 451)
