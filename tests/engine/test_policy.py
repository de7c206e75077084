"""Loading, refusing and reloading the operator's policy file."""
from __future__ import annotations

import os

import pytest

from checkid.engine import policy
from checkid.config import PolicyConfig
from checkid.engine.decision import Action, Envelope
from checkid.errors import PolicyError
from tests.conftest import run

DEFAULT_SOURCE = policy.DEFAULT_PATH.read_text()


def test_default_policy_loads_with_its_tables():
    p = policy.load(policy.DEFAULT_PATH)
    assert set(p.module.METHOD_LIST) == {"QR1", "SPF1"}
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
