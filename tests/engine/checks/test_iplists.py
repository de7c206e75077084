"""IP lists and the rbldnsd formats, with a brute-force oracle for longest-prefix match."""
from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from checkid.engine.checks import iplists
from checkid.errors import ConfigError
from checkid.engine.checks.iplists import Listing


def ip(text):
    return ipaddress.ip_address(text)


def test_cidr_file_with_comments_and_v6():
    lst = iplists.parse("# comment\n192.0.2.0/24\n\n2001:db8::/32\n198.51.100.7\n", "cidr")
    assert ip("192.0.2.99") in lst and ip("2001:db8::1") in lst and ip("198.51.100.7") in lst
    assert ip("198.51.100.8") not in lst and ip("2001:db9::1") not in lst


def test_ip4set_entry_forms_values_and_exclusions():
    data = """$SOA 3600 ns hostmaster 1 3600 600 86400 300
; a comment, then the default value
:127.0.0.2:Listed: see http://bl.example/$
127.0.0
10.16-31
192.0.2.10-192.0.2.20 :127.0.0.3:range
203.0.113.0/24
!203.0.113.7
198.51.100.1 custom text
"""
    lst = iplists.parse(data, "ip4set")
    assert lst.lookup(ip("127.0.0.99")) == Listing("127.0.0.2", "Listed: see http://bl.example/$")
    assert ip("10.16.0.0") in lst and ip("10.31.255.255") in lst and ip("10.32.0.0") not in lst
    assert lst.lookup(ip("192.0.2.15")) == Listing("127.0.0.3", "range")
    assert ip("192.0.2.21") not in lst
    assert ip("203.0.113.6") in lst and ip("203.0.113.7") not in lst
    assert lst.lookup(ip("198.51.100.1")).txt == "custom text"


def test_ip4trie_longest_prefix_wins():
    lst = iplists.parse("10.0.0.0/8 :127.0.0.2:wide\n10.1.0.0/16 :127.0.0.4:narrow\n!10.1.2.0/24\n", "ip4trie")
    assert lst.lookup(ip("10.2.0.1")).txt == "wide"
    assert lst.lookup(ip("10.1.0.1")).txt == "narrow"
    assert lst.lookup(ip("10.1.2.3")) is None


def test_ip6trie():
    lst = iplists.parse("2001:db8::/32 :127.0.0.2:v6\n!2001:db8:1::/48\n", "ip6trie")
    assert lst.lookup(ip("2001:db8:2::1")).txt == "v6"
    assert lst.lookup(ip("2001:db8:1::1")) is None


@pytest.mark.parametrize("fmt, line", [("cidr", "300.1.1.1"), ("ip4set", "10.20-5"), ("ip4trie", "10.0.0.0/33"),
                                       ("ip4set", "1.2.3.4.5")])
def test_bad_lines_name_file_and_line(fmt, line):
    with pytest.raises(ConfigError, match=r"list.txt:2: "):
        iplists.parse(f"192.0.2.1\n{line}\n", fmt, source="list.txt")


def test_load_file_by_format_prefix(tmp_path):
    f = tmp_path / "bl"
    f.write_text("192.0.2.0/24\n")
    assert ip("192.0.2.1") in iplists.load_file(f"ip4trie:{f}")
    assert ip("192.0.2.1") in iplists.load_file(str(f))
    with pytest.raises(ConfigError, match="nope"):
        iplists.load_file(str(tmp_path / "nope"))


networks = st.builds(
    lambda addr, plen: ipaddress.IPv4Network((addr, plen), strict=False),
    st.integers(0, 2**32 - 1), st.integers(0, 32),
)


@given(st.lists(st.tuples(networks, st.booleans()), max_size=30), st.lists(st.integers(0, 2**32 - 1), max_size=30))
def test_lookup_equals_brute_force_longest_prefix_match(entries, probes):
    lst = iplists.IPList()
    for i, (net, excluded) in enumerate(entries):
        lst.add(net, iplists.EXCLUDED if excluded else Listing(txt=str(i)))
    for number in probes:
        addr = ipaddress.IPv4Address(number)
        covering = [(net.prefixlen, excl, i) for i, (net, excl) in enumerate(entries) if addr in net]
        got = lst.lookup(addr)
        if not covering:
            assert got is None
            continue
        # all covering entries of the longest length are the same network: an exclusion of it
        # wins whenever it was added, otherwise the last listing added for it
        longest = max(p for p, _, _ in covering)
        same = [(excl, i) for p, excl, i in covering if p == longest]
        if any(excl for excl, _ in same):
            assert got is None
        else:
            assert got == Listing(txt=str(same[-1][1]))
