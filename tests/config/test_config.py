"""Configuration: embedded defaults, TOML files, and errors that name the key."""
from __future__ import annotations

import pytest

from checkid import config
from checkid.config import Config, DnsList
from checkid.errors import ConfigError


def test_defaults_need_no_file():
    c = Config()
    assert c.dns.nameservers == () and c.dns.timeout > 0
    assert c.prescreen.dnsbl[0].zone == "zen.spamhaus.org"
    assert c.prescreen.dnsbl[0].codes["127.0.0.2"] == "SBL"
    assert c.policy.on_temperror == "tempfail"


def test_load_full_file(tmp_path):
    f = tmp_path / "checkid.toml"
    f.write_text("""
[dns]
nameservers = ["127.0.0.1:5353", "[::1]:53", "192.0.2.53"]
timeout = 1
[registry]
zone = "reg.example"
[identity]
fallback = ["mail_from"]
[prescreen]
allow = ["10.0.0.0/8"]
[[prescreen.dnsbl]]
zone = "bl.example"
codes = { "127.0.0.2" = "spam" }
[blacklist]
action = "reject"
[[reputation.dns]]
name = "Q1"
zone = "q.example"
key = "id"
grades = { "127.0.0.2" = "A" }
[policy]
on_temperror = "filter"
[headers]
received_spf = true
""")
    c = config.load(f)
    assert c.dns.nameservers == ("127.0.0.1:5353", "[::1]:53", "192.0.2.53") and c.dns.timeout == 1.0
    assert c.registry.zone == "reg.example" and c.identity.fallback == ("mail_from",)
    assert c.prescreen.dnsbl == (DnsList("bl.example", "", {"127.0.0.2": "spam"}),)
    assert c.reputation.dns[0].key == "id" and c.blacklist.action == "reject"
    assert c.policy.on_temperror == "filter" and c.headers.received_spf


@pytest.mark.parametrize("text, message", [
    ("[dns]\ntimout = 2\n", "dns.timout: unknown key"),
    ("[dnss]\n", "dnss: unknown key"),
    ('[dns]\ntimeout = "2"\n', "dns.timeout: expected a number, got '2'"),
    ("[dns]\ncache_size = 1.5\n", "dns.cache_size: expected an integer"),
    ("[dns]\nnameservers = \"127.0.0.1\"\n", "dns.nameservers: expected an array"),
    ('[dns]\nnameservers = ["localhost"]\n', r"dns.nameservers\[0\]: not an IP address"),
    ('[dns]\nnameservers = ["127.0.0.1:99999"]\n', r"dns.nameservers\[0\]: bad port"),
    ("[dns]\ntimeout = 0\n", "dns.timeout: must be positive"),
    ("[dns]\ntimeout = 20\n", "must not exceed dns.decision_timeout"),
    ('[policy]\non_temperror = "accept"\n', "policy.on_temperror: expected one of 'tempfail', 'filter'"),
    ('[identity]\nfallback = ["ptr"]\n', r"identity.fallback\[0\]: expected one of"),
    ('[[prescreen.dnsbl]]\nname = "x"\n', r"prescreen.dnsbl\[0\].zone: required key missing"),
    ('[[prescreen.dnsbl]]\nzone = "x"\ncodes = { "2" = "x" }\n', r"prescreen.dnsbl\[0\].codes: not an IPv4"),
    ('[prescreen]\nallow = ["10.0.0.0/33"]\n', r"prescreen.allow\[0\]"),
    ("[headers]\nreceived_spf = 1\n", "headers.received_spf: expected true or false"),
    ("dns = 3\n", "dns: expected a table"),
    ("[dns\n", "checkid.toml"),
])
def test_errors_name_the_key(tmp_path, text, message):
    f = tmp_path / "checkid.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message):
        config.load(f)


def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigError, match="No such file"):
        config.load(tmp_path / "none.toml")


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1", ("127.0.0.1", 53)), ("127.0.0.1:5353", ("127.0.0.1", 5353)),
    ("::1", ("::1", 53)), ("[::1]:5353", ("::1", 5353)), ("[2001:db8::1]", ("2001:db8::1", 53)),
])
def test_parse_hostport(text, expected):
    assert config.parse_hostport(text, 53) == expected


@pytest.mark.parametrize("text, message", [
    ("[server]\nrequest_timeout = 0\n", "server.request_timeout: must be positive"),
    ("[server]\nmax_connections = -1\n", "server.max_connections: must be 0"),
    ("[server]\nmax_unfinished_bytes = -1\n", "server.max_unfinished_bytes: must be 0"),
])
def test_server_bounds_are_checked(tmp_path, text, message):
    f = tmp_path / "checkid.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message):
        config.load(f)


def test_server_bounds_load(tmp_path):
    f = tmp_path / "checkid.toml"
    f.write_text("[server]\nrequest_timeout = 5.5\nmax_connections = 0\nmax_unfinished_bytes = 1048576\n")
    server = config.load(f).server
    assert (server.request_timeout, server.max_connections, server.max_unfinished_bytes) == (5.5, 0, 1048576)
