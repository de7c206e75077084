"""The front door's header filter: forged fields out, everything else byte for byte, the
header fields and the body start, however the content is split; bounded memory."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from checkid.protocols.smtp.headerfilter import HeaderFilter
from tests.conftest import split
from tests.protocols.fakes import forged_authent


def run_filter(chunks, forged=forged_authent, **kw):
    """(head bytes, body bytes, the filter, the largest hold after a feed) for ``chunks``."""
    f = HeaderFilter(forged, **kw)
    head, body, held = bytearray(), bytearray(), 0
    for chunk in chunks:
        h, b = f.feed(chunk)
        assert not (b and not f.in_body)
        head += h
        body += b
        held = max(held, f.held)
    h, b = f.end()
    assert not (h and body)
    return bytes(head + h), bytes(body + b), f, held


# -- messages built from their parts: the expected output is known from how they were built ---
_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30)
_NAMES = st.sampled_from(["Subject", "From", "Authent", "AUTHENT", "Authentication-Results",
                          "authentication-results", "X-Long-Name", "DKIM-Signature"])


@st.composite
def fields(draw):
    name = draw(_NAMES)
    gap = draw(st.sampled_from(["", "", " ", "\t"]))  # RFC 5322 §4.5.3 obsolete WSP before the colon
    if name.lower() == "authentication-results":
        first = " " + draw(st.sampled_from(["mx.checkid.test", "MX.checkid.test", "other.example"])) + "; " + \
            draw(_TEXT)
    else:
        first = draw(st.sampled_from(["", " ", "\t"])) + draw(_TEXT)
    folds = draw(st.lists(st.tuples(st.sampled_from([" ", "\t"]), _TEXT), max_size=3))
    value = first + "".join(f"\r\n{ws}{text}" for ws, text in folds)
    raw = f"{name}{gap}:{value}\r\n".encode()
    return name, value, raw


@st.composite
def messages(draw):
    """(content, the fields, the relayed bytes expected, the body expected)"""
    fs = draw(st.lists(fields(), max_size=8))
    body_lines = draw(st.lists(st.binary(max_size=20).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
                               max_size=5))
    body = b"".join(line + b"\r\n" for line in body_lines)
    ending = draw(st.sampled_from(["blank", "not a field", "none"]))
    head = b"".join(raw for _, _, raw in fs)
    kept = b"".join(raw for name, value, raw in fs if not forged_authent(name, value))
    if ending == "blank":
        return head + b"\r\n" + body, fs, kept + b"\r\n" + body, body
    if ending == "not a field":
        line = b"this line is no header field\r\n"
        return head + line + body, fs, kept + line + body, line + body
    return head, fs, kept, b""


@given(messages(), st.lists(st.integers(min_value=0), max_size=8))
def test_split_anywhere_forged_fields_out_everything_else_byte_for_byte(msg, cuts):
    content, fs, expected, expected_body = msg
    head, body, f, _ = run_filter(split(content, cuts))
    assert head + body == expected
    assert body == expected_body
    assert f.headers == [(name, value) for name, value, _ in fs]
    assert f.removed == sum(forged_authent(n, v) for n, v, _ in fs)


@given(messages(), st.lists(st.integers(min_value=0), max_size=8))
def test_no_forged_field_survives(msg, cuts):
    content, _, _, _ = msg
    head, body, _, _ = run_filter(split(content, cuts))
    survivors = HeaderFilter(lambda n, v: False)
    survivors.feed(head + body)
    survivors.end()
    assert not any(forged_authent(n, v) for n, v in survivors.headers)


@given(messages(), st.lists(st.integers(min_value=0), max_size=8))
def test_whole_lines_in_give_whole_lines_out(msg, cuts):
    content, _, _, _ = msg
    lines = content.splitlines(keepends=True)
    chunks = [b"".join(lines[i:j]) for i, j in zip([0] + sorted(c % (len(lines) + 1) for c in cuts),
                                                   sorted(c % (len(lines) + 1) for c in cuts) + [len(lines)])]
    f = HeaderFilter(forged_authent)
    for chunk in chunks:
        head, body = f.feed(chunk)
        assert all(not part or part.endswith(b"\n") for part in (head, body))


# -- overlong fields --------------------------------------------------------------------------
@given(st.lists(st.tuples(st.sampled_from(["Subject", "Authent", "X-Y"]), st.integers(0, 200)), max_size=6),
       st.lists(st.integers(min_value=0), max_size=10))
def test_a_field_of_any_length_is_decided_by_what_is_known_and_memory_stays_bounded(spec, cuts):
    by_name = lambda name, value: name == "Authent"  # noqa: E731 - decided on the name alone
    raws = [f"{name}: {'w' * (n % 50)}".encode() + b"".join(b"\r\n\tmore" for _ in range(n // 50)) + b"\r\n"
            for name, n in spec]
    content = b"".join(raws) + b"\r\nbody\r\n"
    head, body, f, held = run_filter(split(content, cuts), forged=by_name, max_field=64)
    assert head + body == b"".join(r for r in raws if not r.startswith(b"Authent")) + b"\r\nbody\r\n"
    assert held <= 64
    assert [n for n, _ in f.headers] == [name for name, _ in spec]
    assert all(len(v) <= 64 for _, v in f.headers)


def test_an_overlong_authentication_results_is_judged_on_its_first_line():
    ours = b"Authentication-Results: mx.checkid.test;\r\n" + b"".join(b"\tdkim=pass header.d=x\r\n" for _ in range(99))
    theirs = ours.replace(b"mx.checkid.test", b"other.example")
    head, body, f, held = run_filter(split(ours + theirs + b"\r\nbody\r\n", list(range(0, 5000, 7))),
                                     max_field=200)
    assert head == theirs + b"\r\n" and body == b"body\r\n" and f.removed == 1 and held <= 200


# -- examples -----------------------------------------------------------------------------------
def test_a_folded_forged_field_goes_whole_and_its_neighbours_stay():
    content = (b"Received: from a by b;\r\n\tTue, 1 Dec 2026 20:00:00 +0000\r\n"
               b"Authentication-Results: mx.checkid.test;\r\n\tspf=pass smtp.mailfrom=example.com\r\n"
               b" dkim=pass\r\n"
               b"Authent: 192.0.2.1 example.com SPF1 PASS\r\n"
               b"Subject: hi\r\n\r\n"
               b"Authent: in the body, untouched\r\n")
    head, body, f, _ = run_filter([content])
    assert head == (b"Received: from a by b;\r\n\tTue, 1 Dec 2026 20:00:00 +0000\r\n"
                    b"Subject: hi\r\n\r\n")
    assert body == b"Authent: in the body, untouched\r\n"
    assert f.removed == 2
    assert f.headers[1] == ("Authentication-Results",
                            " mx.checkid.test;\r\n\tspf=pass smtp.mailfrom=example.com\r\n dkim=pass")


def test_a_line_that_is_no_field_ends_the_header_section():
    head, body, f, _ = run_filter([b"Subject: x\r\nno colon here\r\nAuthent: late\r\n"])
    assert head == b"Subject: x\r\n" and body == b"no colon here\r\nAuthent: late\r\n" and f.removed == 0


def test_bare_lf_lines_and_a_last_field_without_a_line_break():
    head, body, f, _ = run_filter([b"Authent: x\nSubject: y\n\nbody"])
    assert head + body == b"Subject: y\n\nbody" and body == b"body"
    head, body, f, _ = run_filter([b"Subject: y\r\nAuthent: last"])
    assert head == b"Subject: y\r\n" and body == b"" and f.headers == [("Subject", " y"), ("Authent", " last")]


def test_fields_collected_are_bounded_but_all_are_filtered():
    content = b"".join(b"Authent: %d\r\n" % i for i in range(50)) + b"\r\n"
    head, _, f, _ = run_filter([content], max_headers=10)
    assert head == b"\r\n" and f.removed == 50 and len(f.headers) == 10
    assert not f.complete  # DKIM must know it does not see every field
    assert run_filter([content], max_headers=50)[2].complete
