"""Value checks: every refused value names its full key; the edges of each range are accepted."""
from __future__ import annotations

import pytest

from checkid import config
from checkid.config import Config
from checkid.errors import ConfigError


def test_embedded_defaults_pass_every_check():
    assert config.from_dict({}) == Config()


@pytest.mark.parametrize("data, message", [
    ({"dns": {"timeout": 0}}, "dns.timeout: must be positive"),
    ({"dns": {"timeout": -1}}, "dns.timeout: must be positive"),
    ({"dns": {"decision_timeout": 0, "timeout": 0.5}}, "dns.decision_timeout: must be positive"),
    ({"dns": {"timeout": 3, "decision_timeout": 2}}, "dns.timeout: must not exceed dns.decision_timeout"),
    ({"dns": {"cache_size": -1}}, "dns.cache_size: must not be negative"),
    ({"dns": {"min_ttl": -1}}, "dns.min_ttl: must not be negative"),
    ({"dns": {"max_ttl": -1, "min_ttl": 0}}, "dns.max_ttl: must not be negative"),
    ({"dns": {"max_negative_ttl": -1}}, "dns.max_negative_ttl: must not be negative"),
    ({"dns": {"min_ttl": 10, "max_ttl": 9}}, "dns.min_ttl: must not exceed dns.max_ttl"),
    ({"dns": {"nameservers": ["127.0.0.1", "[::1"]}}, r"dns.nameservers\[1\]: bad address"),
    ({"listen": [{"protocol": "policy", "address": "127.0.0.1"}]}, r"listen\[0\].address: .* needs a port"),
    ({"listen": [{"protocol": "policy", "address": "127.0.0.1:1"}, {"protocol": "milter", "address": "unix:"}]},
     r"listen\[1\].address: unix: needs a path"),
    ({"listen": [{"protocol": "policy", "address": "localhost:1"}]}, r"listen\[0\].address: not an IP address"),
    ({"listen": [{"protocol": "milter", "address": "unix:/s", "mode": "rw"}]},
     r"listen\[0\].mode: want octal permissions like \"0660\", got 'rw'"),
    ({"listen": [{"protocol": "milter", "address": "unix:/s", "mode": "1000"}]}, r"listen\[0\].mode: want octal"),
    ({"listen": [{"protocol": "milter", "address": "unix:/s", "mode": "-1"}]}, r"listen\[0\].mode: want octal"),
    ({"listen": [{"protocol": "policy", "address": "127.0.0.1:1"},
                 {"protocol": "milter", "address": "127.0.0.1:2", "oneshot": True}]},
     r"listen\[1\].oneshot: only for protocol \"policy\""),
    ({"listen": [{"protocol": "policy", "address": "127.0.0.1:1"}, {"protocol": "milter", "address": "unix:/s"},
                 {"protocol": "milter", "address": "127.0.0.1:1"}]},
     r"listen\[2\].address: 127.0.0.1:1 is used twice"),
    ({"server": {"workers": -1}}, r"server.workers: must be 0 \(one per CPU\) to 256"),
    ({"server": {"workers": 257}}, "server.workers: must be 0"),
    ({"server": {"grace": 0}}, "server.grace: must be positive"),
    ({"server": {"heartbeat_timeout": -1}}, "server.heartbeat_timeout: must be positive"),
    ({"server": {"idle_timeout": 0}}, "server.idle_timeout: must be positive"),
    ({"milter": {"progress_interval": 0.4}}, "milter.progress_interval: must be 0.5 to 60 seconds"),
    ({"milter": {"progress_interval": 60.5}}, "milter.progress_interval: must be 0.5 to 60 seconds"),
    ({"cache": {"size_mb": 0}}, "cache.size_mb: must be at least 1"),
    ({"policy": {"reload_interval": 0.09}}, "policy.reload_interval: must be 0.1 to 3600 seconds"),
    ({"policy": {"reload_interval": 3601}}, "policy.reload_interval: must be 0.1 to 3600 seconds"),
    ({"metrics": {"address": "unix:/m"}}, "metrics.address: must be HOST:PORT"),
    ({"metrics": {"address": "127.0.0.1"}}, "metrics.address: .* needs a port"),
    ({"metrics": {"address": "localhost:9"}}, "metrics.address: not an IP address"),
    ({"postfix_policy": {"decide_at": "END-OF-MESSAGE"}}, "postfix_policy: PREPEND is not allowed at END-OF-MESSAGE"),
    ({"postfix_policy": {"decide_at": "END-OF-MESSAGE", "accept": "ok"}},
     "postfix_policy: PREPEND is not allowed at END-OF-MESSAGE"),
    ({"postfix_policy": {"filter": "smtp"}},
     "postfix_policy.filter: want \"prepend\", \"dunno\" or transport:nexthop, got 'smtp'"),
    ({"postfix_policy": {"filter": "smtp: [::1]"}}, "postfix_policy.filter: want"),
    ({"prescreen": {"allow": ["127.0.0.0/8", "ten"]}}, r"prescreen.allow\[1\]: not an address or network: 'ten'"),
    ({"prescreen": {"dnsbl": [{"zone": "a.example"}, {"zone": "b.example", "codes": {"127.0.0.2": "x", "x": "y"}}]}},
     r"prescreen.dnsbl\[1\].codes: not an IPv4 address: 'x'"),
    ({"blacklist": {"dnsbl": [{"zone": "b.example", "codes": {"::1": "x"}}]}},
     r"blacklist.dnsbl\[0\].codes: not an IPv4 address: '::1'"),
    ({"reputation": {"dns": [{"name": "Q1", "zone": "q.example", "grades": {"127.0.0.300": "A"}}]}},
     r"reputation.dns\[0\].grades: not an IPv4 address: '127.0.0.300'"),
])
def test_checks_refuse_and_name_the_key(data, message):
    with pytest.raises(ConfigError, match=f"^here: {message}"):
        config.from_dict(data, source="here")


@pytest.mark.parametrize("data", [
    {"dns": {"timeout": 2, "decision_timeout": 2, "min_ttl": 0, "max_ttl": 0, "cache_size": 0,
             "max_negative_ttl": 0, "nameservers": ["::1", "[::1]:5353", "192.0.2.1:53"]}},
    {"listen": [{"protocol": "policy", "address": "[::1]:10030", "oneshot": True},
                {"protocol": "milter", "address": "unix:/run/checkid/milter", "mode": "0777"},
                {"protocol": "msgpack-rpc", "address": "unix:/run/checkid/rpc", "mode": "0"}]},
    {"server": {"workers": 256}},
    {"server": {"workers": 0, "grace": 0.01, "heartbeat_timeout": 0.01, "idle_timeout": 0.01}},
    {"milter": {"progress_interval": 0.5}},
    {"milter": {"progress_interval": 60}},
    {"cache": {"size_mb": 1}},
    {"policy": {"reload_interval": 0.1}},
    {"policy": {"reload_interval": 3600}},
    {"metrics": {"address": ""}},
    {"metrics": {"address": "[::1]:9100"}},
    {"postfix_policy": {"decide_at": "END-OF-MESSAGE", "accept": "ok", "filter": "dunno"}},
    {"postfix_policy": {"filter": "smtp:[127.0.0.1]:10025"}},
    {"prescreen": {"allow": ["192.0.2.1", "2001:db8::/32", "10.1.2.3/8"]}},
])
def test_checks_accept_values_at_the_edges(data):
    config.from_dict(data)


@pytest.mark.parametrize("section, message", [
    (config.DnsConfig(min_ttl=-1), "resolver.min_ttl: must not be negative"),
    (config.ListenConfig("milter", "unix:/s", mode="9"), "resolver.mode: want octal"),
    (config.ServerConfig(grace=0), "resolver.grace: must be positive"),
    (config.DnsList("x.example", codes={"x": "y"}), "resolver.codes: not an IPv4 address"),
])
def test_section_check_names_keys_under_the_path_it_is_given(section, message):
    with pytest.raises(ConfigError, match=f"^{message}"):
        section.check("resolver")


# -- what a reload may not change by omission (checkid.config.reload) ---------------------

SITE = {"dns": {"nameservers": ["192.0.2.53"]}, "registry": {"zone": "registry.site.example"},
        "prescreen": {"allow": ["127.0.0.0/8", "192.0.2.0/24"]}}


def reload_to(data):
    from checkid.config.reload import check_reload
    check_reload(config.from_dict(SITE), config.from_dict(data), data, "site.toml")


@pytest.mark.parametrize("data", [{}, {"dns": {}, "registry": {}}])
def test_reload_refuses_a_file_that_states_nothing(data):
    with pytest.raises(ConfigError, match="site.toml: states no setting .* DNS to the system resolver"):
        reload_to(data)


def test_reload_refuses_a_file_that_drops_the_site_nameservers_zone_and_allow_list():
    with pytest.raises(ConfigError) as refused:
        reload_to({"dns": {"timeout": 1.5}})
    message = str(refused.value)
    for key in ("dns.nameservers (set to [192.0.2.53]; the default is the system resolver",
                "registry.zone (set to 'registry.site.example'", "prescreen.allow (set to [127.0.0.0/8, 192.0.2.0/24]"):
        assert key in message, message
    assert "nameservers = [] for the system resolver" in message


def test_reload_accepts_the_defaults_when_the_file_states_them():
    reload_to({"dns": {"nameservers": []}, "registry": {"zone": "registry.open-mail.org"},
               "prescreen": {"allow": ["127.0.0.0/8", "::1/128"]}})


def test_reload_accepts_new_values_and_omissions_of_keys_left_at_their_default():
    reload_to({**SITE, "policy": {"on_temperror": "filter"}})
    reload_to({**SITE, "dns": {"nameservers": ["192.0.2.54"]}})
    from checkid.config.reload import check_reload
    check_reload(config.from_dict({}), config.from_dict({"dns": {"timeout": 1.0}}), {"dns": {"timeout": 1.0}}, "x")
