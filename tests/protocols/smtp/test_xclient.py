"""XCLIENT: xtext, the attributes a backend offers, and the command lines sent to it
(Postfix XCLIENT_README; reference/front-door.md §1.2)."""
from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from checkid.protocols.smtp import xclient
from checkid.protocols.smtp.xclient import offered_attributes, xclient_commands, xtext

#: what current Postfix offers (smtpd.c, reference §1.2)
POSTFIX = {"NAME", "ADDR", "PROTO", "HELO", "REVERSE_NAME", "PORT", "LOGIN", "DESTADDR", "DESTPORT"}


def xtext_decode(text: str) -> str:
    """RFC 1891 §5 xtext back to text, written from the RFC's grammar alone."""
    out = bytearray()
    i = 0
    while i < len(text):
        char = text[i]
        assert 33 <= ord(char) <= 126 and char != "=", f"not an xchar: {char!r}"
        if char == "+":
            hexchar = text[i + 1:i + 3]
            assert re.fullmatch(r"[0-9A-F]{2}", hexchar), f"bad hexchar {hexchar!r}"
            out.append(int(hexchar, 16))
            i += 3
        else:
            out.append(ord(char))
            i += 1
    return out.decode("utf-8")


def attributes(lines: list[bytes]) -> list[list[tuple[str, str]]]:
    """Each command's (name, decoded value) pairs; checks the XCLIENT syntax on the way."""
    out = []
    for line in lines:
        assert line.endswith(b"\r\n") and b"\r" not in line[:-2] and b"\n" not in line[:-2]
        verb, *items = line[:-2].decode("ascii").split(" ")
        assert verb == "XCLIENT" and items
        pairs = []
        for item in items:
            name, sep, value = item.partition("=")
            assert sep and name and value
            pairs.append((name, xtext_decode(value)))
        out.append(pairs)
    return out


# --- xtext ------------------------------------------------------------------------------------

def test_xtext_keeps_xchars_and_escapes_the_rest_in_upper_hex():
    assert xtext("mail.example.com") == "mail.example.com"
    assert xtext("a+b=c d") == "a+2Bb+3Dc+20d"
    assert xtext("\x7f\t") == "+7F+09"
    assert xtext("é") == "+C3+A9"
    assert xtext("[UNAVAILABLE]") == "[UNAVAILABLE]"


@given(st.text())
def test_xtext_round_trip(value):
    encoded = xtext(value)
    assert xtext_decode(encoded) == value


# --- what the backend offers ------------------------------------------------------------------

def test_offered_attributes_from_ehlo_reply_lines():
    lines = ["250-mx.example.net", "250-PIPELINING", "250-XCLIENT NAME ADDR PROTO HELO REVERSE_NAME PORT",
             "250 8BITMIME"]
    assert offered_attributes(lines) == {"NAME", "ADDR", "PROTO", "HELO", "REVERSE_NAME", "PORT"}


def test_offered_attributes_from_lines_without_codes_and_from_a_keyword_dict():
    assert offered_attributes(["mx.example.net", "xclient addr name"]) == {"ADDR", "NAME"}
    assert offered_attributes({"PIPELINING": "", "XCLIENT": "ADDR NAME HELO"}) == {"ADDR", "NAME", "HELO"}


def test_offered_attributes_empty_without_xclient():
    assert offered_attributes(["250-mx.example.net", "250-XFORWARD NAME ADDR", "250 SIZE 10240000"]) == set()
    assert offered_attributes({"XFORWARD": "NAME ADDR"}) == set()


# --- the commands -----------------------------------------------------------------------------

def test_commands_send_only_offered_attributes():
    lines = xclient_commands({"ADDR": "192.0.2.1", "HELO": "client.example", "LOGIN": "u"}, {"ADDR", "HELO"})
    assert attributes(lines) == [[("HELO", "client.example"), ("ADDR", "192.0.2.1")]]


def test_commands_none_when_nothing_offered():
    assert xclient_commands({"ADDR": "192.0.2.1", "NAME": "x.example"}, set()) == []


def test_attribute_names_compare_case_insensitively_and_go_upper_case():
    assert xclient_commands({"addr": "192.0.2.1"}, {"Addr"}) == [b"XCLIENT ADDR=192.0.2.1\r\n"]


@pytest.mark.parametrize("given_addr, sent", [
    ("192.0.2.1", "192.0.2.1"),
    ("2001:db8::1", "IPV6:2001:db8::1"),
    ("[2001:db8::1]", "IPV6:2001:db8::1"),
    ("IPv6:2001:DB8:0::1", "IPV6:2001:db8::1"),
    ("::ffff:192.0.2.1", "192.0.2.1"),
    ("[UNAVAILABLE]", "[UNAVAILABLE]"),
    ("[TEMPUNAVAIL]", "[UNAVAILABLE]"),
    ("", "[UNAVAILABLE]"),
])
def test_addr_is_bare_ipv4_or_ipv6_prefixed_without_brackets(given_addr, sent):
    ((pair,),) = attributes(xclient_commands({"ADDR": given_addr}, POSTFIX))
    assert pair == ("ADDR", sent)


def test_destaddr_formatted_like_addr():
    ((pair,),) = attributes(xclient_commands({"DESTADDR": "2001:db8::25"}, POSTFIX))
    assert pair == ("DESTADDR", "IPV6:2001:db8::25")


def test_addr_that_is_no_address_is_refused():
    with pytest.raises(ValueError, match="address invalid"):
        xclient_commands({"ADDR": "mx.example"}, POSTFIX)


def test_attribute_name_that_is_not_a_word_is_refused():
    with pytest.raises(ValueError, match="name invalid"):
        xclient_commands({"AD DR": "192.0.2.1"}, POSTFIX)


def test_empty_values_unavailable_for_name_and_helo_left_out_otherwise():
    lines = xclient_commands({"NAME": "", "HELO": "", "LOGIN": "", "PORT": ""}, POSTFIX)
    assert attributes(lines) == [[("HELO", "[UNAVAILABLE]"), ("NAME", "[UNAVAILABLE]")]]


def test_values_are_xtext_encoded():
    (line,) = xclient_commands({"HELO": "a b+c=d"}, POSTFIX)
    assert line == b"XCLIENT HELO=a+20b+2Bc+3Dd\r\n"


def test_name_and_addr_come_last():
    attrs = {"NAME": "mail.example.org", "ADDR": "192.0.2.1", "PROTO": "ESMTP", "HELO": "mail.example.org",
             "PORT": "40000"}
    (names,) = [[name for name, _ in pairs] for pairs in attributes(xclient_commands(attrs, POSTFIX))]
    assert names[-2:] == ["NAME", "ADDR"] and set(names) == set(attrs)


def long_label_name(length: int) -> str:
    """A host name of ``length`` characters (63-character labels)."""
    labels, left = [], length
    while left > 0:
        size = min(63, left)
        labels.append("a" * size)
        left -= size + 1
    return ".".join(labels)[:length]


def test_long_values_split_into_several_commands_with_name_and_addr_in_the_last():
    attrs = {"HELO": long_label_name(255), "LOGIN": "l" * 250, "PROTO": "ESMTP", "PORT": "40000",
             "NAME": long_label_name(255), "ADDR": "2001:db8::1", "DESTADDR": "2001:db8::25", "DESTPORT": "25"}
    lines = xclient_commands(attrs, POSTFIX)
    assert len(lines) > 1
    assert all(len(line) <= 512 for line in lines)
    commands = attributes(lines)
    assert [name for name, _ in commands[-1]][-2:] == ["NAME", "ADDR"]
    assert all(name not in ("NAME", "ADDR") for pairs in commands[:-1] for name, _ in pairs)
    sent = {name: value for pairs in commands for name, value in pairs}
    assert sent == {**attrs, "ADDR": "IPV6:2001:db8::1", "DESTADDR": "IPV6:2001:db8::25"}


def test_name_and_helo_over_255_characters_go_as_unavailable():
    sent = dict(pair for pairs in attributes(xclient_commands({"NAME": "n" * 256, "HELO": "h" * 256}, POSTFIX))
                for pair in pairs)
    assert sent == {"NAME": "[UNAVAILABLE]", "HELO": "[UNAVAILABLE]"}


def test_helo_too_long_once_encoded_goes_as_unavailable():
    (line,) = xclient_commands({"HELO": " " * 200}, POSTFIX)  # 600 octets as xtext
    assert line == b"XCLIENT HELO=[UNAVAILABLE]\r\n"


def test_name_that_cannot_share_the_last_line_with_addr_goes_as_unavailable():
    name = "\u00e9" * 82  # 164 octets, 492 as xtext: fits alone, not beside ADDR
    lines = xclient_commands({"NAME": name, "ADDR": "192.0.2.1"}, POSTFIX)
    assert attributes(lines) == [[("NAME", "[UNAVAILABLE]"), ("ADDR", "192.0.2.1")]]


def test_other_attribute_too_long_for_a_line_is_refused():
    with pytest.raises(ValueError, match="too long"):
        xclient_commands({"LOGIN": "l" * 600}, POSTFIX)


def test_lines_are_as_few_as_the_limit_allows():
    attrs = {f"X{i}": "v" * 100 for i in range(10)}  # 105 octets each with the name
    lines = xclient_commands(attrs, set(attrs))
    # "XCLIENT" + 4 * (1 + 105) + CRLF = 433 octets; a fifth item would make 539
    assert [len(pairs) for pairs in attributes(lines)] == [2, 4, 4]
    assert [name for pairs in attributes(lines) for name, _ in pairs] == list(attrs)


#: NAME and HELO may be anything (they degrade to UNAVAILABLE); the others are short values
#: the front door itself produces (PROTO, PORT, DESTPORT) or a SASL login name
values = st.fixed_dictionaries({}, optional={
    "NAME": st.text(max_size=300), "HELO": st.text(max_size=300), "PROTO": st.sampled_from(["SMTP", "ESMTP"]),
    "PORT": st.integers(0, 65535).map(str), "DESTPORT": st.integers(0, 65535).map(str),
    "LOGIN": st.text(max_size=40), "REVERSE_NAME": st.text(max_size=40)})


@given(values, st.ip_addresses().map(str))
def test_every_line_fits_and_name_addr_are_last_for_any_values(attrs, addr):
    attrs = {**attrs, "ADDR": addr}
    lines = xclient_commands(attrs, POSTFIX)
    assert lines and all(len(line) <= xclient.MAX_COMMAND_LINE for line in lines)
    commands = attributes(lines)
    last = [name for name, _ in commands[-1]]
    assert last[-1] == "ADDR" and ("NAME" not in attrs or last[-2] == "NAME")
    assert all(name not in ("NAME", "ADDR") for pairs in commands[:-1] for name, _ in pairs)
    sent = {name: value for pairs in commands for name, value in pairs}
    for name, value in attrs.items():
        if name in ("NAME", "HELO") and sent[name] == "[UNAVAILABLE]":
            assert not value or len(value) > 255 or len(xtext(value)) > 200
        elif name != "ADDR" and value:
            assert sent[name] == value
