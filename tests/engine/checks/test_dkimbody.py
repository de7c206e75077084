"""Streamed DKIM body hashes must equal dkimpy's canonicalization of the whole body, hashed."""
from __future__ import annotations

import hashlib

import pytest
from dkim.canonicalization import Relaxed, Simple
from hypothesis import given, settings
from hypothesis import strategies as st

from checkid.engine.checks.dkimbody import SLICE, BodyHashes, relaxed_piece
from tests.conftest import split

CANONS = {"simple": Simple, "relaxed": Relaxed}


def expected(body: bytes, key: tuple[str, str, int | None]) -> bytes:
    """dkimpy's body canonicalization over the whole body, cut at l=, hashed by hashlib."""
    canon, name, length = key
    data = CANONS[canon].canonicalize_body(body)
    if length is not None:
        data = data[:length]
    return hashlib.new(name, data).digest()


def canonical_length(body: bytes, key: tuple[str, str, int | None]) -> int:
    data = CANONS[key[0]].canonicalize_body(body)
    return len(data if key[2] is None else data[:key[2]])


def feed(keys, body: bytes, cuts: list[int], max_body: int = 1 << 30) -> BodyHashes:
    hashes = BodyHashes(keys, max_body)
    for piece in split(body, cuts):
        hashes.update(piece)
    return hashes


# the bytes that canonicalization cares about, so random bodies hit its corners often
PIECES = [b" ", b"\t", b"\r", b"\n", b"\r\n", b"a", b"xyz", b"  ", b" \t ", b"\r\n\r\n", b" \r\n", b"\t\r\n",
          b"\r\r\n", b"\n\r\n", b"\r\n\n"]
bodies = st.one_of(st.lists(st.sampled_from(PIECES), max_size=40).map(b"".join), st.binary(max_size=200))
keys = st.tuples(st.sampled_from(["simple", "relaxed"]), st.sampled_from(["sha256", "sha1"]),
                 st.none() | st.integers(0, 60))


@settings(max_examples=600, deadline=None)
@given(body=bodies, cuts=st.lists(st.integers(0, 1000), max_size=12),
       wanted=st.lists(keys, min_size=1, max_size=5))
def test_body_hashes_equal_dkimpy_for_any_chunking(body, cuts, wanted):
    hashes = feed(wanted, body, cuts)
    assert hashes.total == len(body)
    for key in wanted:
        assert hashes.digest(key) == expected(body, key)


@settings(max_examples=300, deadline=None)
@given(body=bodies, cuts=st.lists(st.integers(0, 1000), max_size=8), wanted=st.lists(keys, min_size=1, max_size=4),
       max_body=st.integers(0, 80))
def test_body_hashes_none_exactly_when_over_max_body(body, cuts, wanted, max_body):
    hashes = feed(wanted, body, cuts, max_body)
    for key in wanted:
        if canonical_length(body, key) > max_body:
            assert hashes.digest(key) is None
        else:
            assert hashes.digest(key) == expected(body, key)


@settings(max_examples=200, deadline=None)
@given(piece=st.lists(st.sampled_from(PIECES), max_size=40).map(b"".join))
def test_relaxed_piece_equals_dkimpy_inside_a_body(piece):
    # complete lines ending in text: no trailing blank line for dkimpy to drop
    whole = piece + b"x\r\n"
    assert relaxed_piece(whole) == Relaxed.canonicalize_body(whole)


BIG_BODIES = {
    "base64": (b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0123456789abcdefghijklmnopqrstuvwxyz01\r\n" * 3000),
    "text with runs of white space": (b"Some  text\t with \t  runs   of space  \r\n" * 5000),
    "white space across slices": (b"a" * (SLICE - 3) + b" \t  \t b \r\n" + b"c" * (SLICE - 12) + b" \t \r\n"
                                  + b"d" * (SLICE - 7) + b" \t\r"),
    "blank lines across slices": b"x\r\n" + b"\r\n" * (SLICE // 2 + 7) + b"y\r\n" + b"\r\n" * SLICE,
    "CR at a slice edge": b"a" * (SLICE - 1) + b"\r\n" + b"b" * (SLICE - 1) + b" \r\n",
    "one line, no CRLF": b"abc " * (SLICE // 2),
}


@pytest.mark.parametrize("name", sorted(BIG_BODIES))
@pytest.mark.parametrize("cuts", [[], [1, 2, 3, 65535, 65537, 200000], list(range(7, 400000, 4099))])
def test_body_hashes_big_bodies(name, cuts):
    body = BIG_BODIES[name]
    wanted = [("simple", "sha256", None), ("relaxed", "sha256", None), ("relaxed", "sha1", 70000),
              ("simple", "sha1", 1)]
    hashes = feed(wanted, body, cuts)
    for key in wanted:
        assert hashes.digest(key) == expected(body, key)


def test_body_hashes_long_white_space_runs():
    # dkimpy's regexes are quadratic on such runs; compression makes them one space anyway
    # (RFC 6376 §3.4.4), so the expectation comes from the short body
    body = b"a" + b" " * (3 * SLICE) + b"\t" * 5 + b"b" + b" \t" * SLICE + b"\r\n" + b" " * SLICE
    short = b"a b\r\n "
    wanted = [("relaxed", "sha256", None), ("relaxed", "sha1", 3)]
    hashes = feed(wanted, body, [5, SLICE, SLICE + 1, 3 * SLICE + 3])
    for key in wanted:
        assert hashes.digest(key) == expected(short, key)


def test_body_hashes_hold_little_of_a_line_without_crlf():
    hashes = BodyHashes([("relaxed", "sha256", None), ("simple", "sha256", None)], 1 << 30)
    for _ in range(200):
        hashes.update(b"word " * 1000 + b" \t \r")
        # a partial line is emitted as it comes; only its end (white space, CR) is held
        assert all(len(canon.held) <= 2 for canon in hashes._canons)
    assert hashes.digest(("relaxed", "sha256", None)) == expected((b"word " * 1000 + b" \t \r") * 200,
                                                                 ("relaxed", "sha256", None))


def test_body_hashes_stop_once_every_key_is_decided():
    hashes = BodyHashes([("relaxed", "sha256", 10), ("simple", "sha256", None)], 100)
    hashes.update(b"0123456789" * 20)  # simple needs more than 100 bytes: over; relaxed has its 10
    assert not any(canon.active for canon in hashes._canons)
    hashes.update(b"more")  # nothing left to do, only counted
    assert hashes.total == 204
    assert hashes.digest(("simple", "sha256", None)) is None
    assert hashes.digest(("relaxed", "sha256", 10)) == hashlib.sha256(b"0123456789").digest()


def test_body_hashes_many_blank_lines_cost_nothing_past_the_limit():
    hashes = BodyHashes([("simple", "sha256", None)], 1000)
    hashes.update(b"x\r\n" + b"\r\n" * 5_000_000 + b"y")  # 10 MB of blank lines, then text
    assert hashes.digest(("simple", "sha256", None)) is None


def test_body_hashes_share_one_hasher_per_key():
    key = ("relaxed", "sha256", None)
    hashes = BodyHashes([key, key, ("relaxed", "sha256", 5)], 1000)
    assert hashes.keys == {key, ("relaxed", "sha256", 5)}
    hashes.update(b"hello  world\r\n")
    assert hashes.digest(key) == expected(b"hello  world\r\n", key)


def test_body_hashes_refuse_bytes_after_a_digest_and_unknown_keys():
    hashes = BodyHashes([("simple", "sha256", None)], 1000)
    hashes.digest(("simple", "sha256", None))
    with pytest.raises(ValueError):
        hashes.update(b"late")
    with pytest.raises(KeyError):
        hashes.digest(("relaxed", "sha256", None))
    with pytest.raises(ValueError):
        BodyHashes([("strict", "sha256", None)], 1000)
