"""Decision -> REPLYCODE: class-checked, % doubled, one line."""
from __future__ import annotations

import pytest

from checkid.engine.decision import Action, Decision
from checkid.protocols.milter.replies import MAX_REPLY, reply_code


@pytest.mark.parametrize("action, code, xcode, text, expected", [
    (Action.REJECT, 550, "5.7.1", "Not authorized", "550 5.7.1 Not authorized"),
    (Action.REJECT, 550, "", "No", "550 No"),
    (Action.TEMPFAIL, 451, "4.4.3", "Try later", "451 4.4.3 Try later"),
    (Action.REJECT, 550, "5.7.1", "100% spam", "550 5.7.1 100%% spam"),
    (Action.REJECT, 550, "5.7.1", "two\r\nlines", "550 5.7.1 two lines"),
    (Action.REJECT, 250, "2.0.0", "odd", "550 odd"),          # a 2xx would kill Postfix's milter session
    (Action.TEMPFAIL, 550, "5.7.1", "odd", "451 odd"),        # the verdict's class wins
    (Action.REJECT, 554, "4.7.1", "mismatch", "554 mismatch"),  # enhanced class must match the code
])
def test_reply_code(action, code, xcode, text, expected):
    assert reply_code(Decision(action, code, xcode, text)).text == expected


def test_reply_code_is_bounded():
    for n in (2000, 2001):
        out = reply_code(Decision(Action.REJECT, 550, "5.7.1", "x" + "%" * n)).text
        assert len(out) <= MAX_REPLY and out.count("%") % 2 == 0
