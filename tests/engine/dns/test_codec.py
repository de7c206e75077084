"""The shared cache's value codec: every cached value comes back equal, through msgpack."""
from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from checkid.engine.checks.spfcheck import SpfOutcome
from checkid.engine.dns.client import DnsAnswer, Outcome
from checkid.engine.dns.codec import decode_value, encode_value
from checkid.engine.result import Result

values = st.one_of(
    st.builds(lambda o, rs, t: DnsAnswer(o, tuple(rs), t), st.sampled_from(list(Outcome)),
              st.lists(st.one_of(st.text(max_size=20), st.tuples(st.integers(0, 65535), st.text(max_size=20)),
                                 st.lists(st.binary(max_size=30), min_size=1, max_size=3).map(tuple)), max_size=4),
              st.integers(0, 2**31)),
    st.builds(SpfOutcome, st.sampled_from(list(Result)), st.text(max_size=40), st.text(max_size=40)),
)


def _through_msgpack(value: object) -> object:
    return decode_value(msgpack.unpackb(msgpack.packb(encode_value(value), use_bin_type=True), raw=False))


@given(values)
def test_codec_round_trips_every_cached_value(value):
    assert _through_msgpack(value) == value


def test_codec_reads_spf_results_spelt_in_lower_case():
    # entries written before SPF shared the methods' Result enum spelt results "pass"
    assert decode_value([2, "pass", "", ""]) == SpfOutcome(Result.PASS, "", "")


def test_codec_refuses_what_it_does_not_know():
    with pytest.raises(TypeError):
        encode_value(("a", "tuple"))
    with pytest.raises(ValueError):
        decode_value([99, "x"])
