"""Decision -> one access(5) action line."""
from __future__ import annotations

import pytest

from checkid.engine.decision import Action, Decision, Header
from checkid.protocols.postfix_policy.replies import ReplyOptions, render

AUTHENT = Header("Authent:", "192.0.2.1 example.com SPF1 PASS ratings=S1:A")


def d(action, code=250, xcode="", text="Sender OK", headers=(AUTHENT,)):
    return Decision(action, code, xcode, text, headers)


@pytest.mark.parametrize("decision, options, expected", [
    (d(Action.REJECT, 550, "5.7.1", "Not authorized", ()), ReplyOptions(), "550 5.7.1 Not authorized"),
    (d(Action.REJECT, 550, "", "No", ()), ReplyOptions(), "550 No"),
    (d(Action.TEMPFAIL, 451, "4.4.3", "Try later", ()), ReplyOptions(), "451 4.4.3 Try later"),
    (d(Action.TEMPFAIL, 451, "4.4.3", "Try later", ()), ReplyOptions(tempfail="defer_if_permit"),
     "DEFER_IF_PERMIT Try later"),
    (d(Action.DISCARD, 250, "", "Dropped", ()), ReplyOptions(), "DISCARD Dropped"),
    (d(Action.ACCEPT), ReplyOptions(), "PREPEND Authent: 192.0.2.1 example.com SPF1 PASS ratings=S1:A"),
    (d(Action.ACCEPT), ReplyOptions(accept="ok"), "OK"),
    (d(Action.ACCEPT), ReplyOptions(accept="dunno"), "DUNNO"),
    (d(Action.ACCEPT, headers=()), ReplyOptions(), "DUNNO"),
    (d(Action.FILTER), ReplyOptions(), "PREPEND Authent: 192.0.2.1 example.com SPF1 PASS ratings=S1:A"),
    (d(Action.FILTER), ReplyOptions(filter="dunno"), "DUNNO"),
    (d(Action.FILTER), ReplyOptions(filter="smtp:[127.0.0.1]:10025"), "FILTER smtp:[127.0.0.1]:10025"),
    (d(Action.CONTINUE), ReplyOptions(), "DUNNO"),
])
def test_render(decision, options, expected):
    assert render(decision, options) == expected


def test_reply_stays_within_the_smtp_reply_line():
    long = d(Action.REJECT, 550, "5.7.1", "é" * 600, ())
    out = render(long)
    assert out.startswith("550 5.7.1 ") and len(out.encode()) <= 510 and "\n" not in out
