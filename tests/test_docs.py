"""The guides hold exactly what the integration tests run."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_exim_guide_holds_the_tested_configuration():
    assert (ROOT / "tests" / "data" / "exim.conf").read_text() in (ROOT / "docs" / "exim.md").read_text()


def test_postfix_guide_holds_the_tested_restrictions():
    guide = (ROOT / "docs" / "postfix.md").read_text()
    test = (ROOT / "tests" / "integration" / "test_postfix_policy.py").read_text()
    assert "reject_unauth_destination, check_policy_service inet:127.0.0.1:{policy_port}" in test
    assert "    reject_unauth_destination,\n    check_policy_service inet:127.0.0.1:10030" in guide


def test_postfix_guide_holds_the_tested_milter_settings():
    guide = (ROOT / "docs" / "postfix.md").read_text()
    test = (ROOT / "tests" / "integration" / "test_postfix_milter.py").read_text()
    for line in ('"smtpd_milters": f"inet:127.0.0.1:{milter_port}"', '"milter_protocol": "6"',
                 '"milter_default_action": "tempfail"'):
        assert line in test
    for line in ("smtpd_milters = inet:127.0.0.1:10033", "milter_protocol = 6", "milter_default_action = tempfail"):
        assert line in guide


def test_sendmail_guide_holds_the_tested_mc_line():
    mc = (ROOT / "testsupport" / "data" / "sendmail.mc").read_text()
    tested = next(line for line in mc.splitlines() if line.startswith("INPUT_MAIL_FILTER"))
    guide = (ROOT / "docs" / "sendmail.md").read_text()
    assert tested.replace("@MILTER@", "10033") in guide
