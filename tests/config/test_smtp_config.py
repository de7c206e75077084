"""The front door's keys: an smtp listener's backend and PROXY settings, and the [smtp]
section's limits (SmtpConfig checks itself; until Config holds it, it is checked directly)."""
from __future__ import annotations

import pytest

from checkid import config
from checkid.config.frontends import ListenConfig, SmtpConfig
from checkid.errors import ConfigError


def test_an_smtp_listener_with_its_backend_loads():
    loaded = config.from_dict({"listen": [{"protocol": "smtp", "address": "0.0.0.0:25", "backend": "127.0.0.1:10025",
                                           "backend_client": "proxy", "proxy_protocol": True,
                                           "proxy_hosts": ["10.0.0.0/8", "::1"]}]})
    (listen,) = loaded.listen
    assert (listen.backend, listen.backend_client, listen.proxy_hosts) == ("127.0.0.1:10025", "proxy",
                                                                           ("10.0.0.0/8", "::1"))
    assert ListenConfig("smtp", "127.0.0.1:25", backend="unix:/run/mta.sock").backend_client == "xclient"


@pytest.mark.parametrize("listen, message", [
    ({"protocol": "smtp", "address": "127.0.0.1:25"}, r"listen\[0\].backend: required"),
    ({"protocol": "smtp", "address": "127.0.0.1:25", "backend": "mta.example:25"}, r"backend: not an IP address"),
    ({"protocol": "smtp", "address": "127.0.0.1:25", "backend": "127.0.0.1:25"}, r"backend: .* itself"),
    ({"protocol": "smtp", "address": "127.0.0.1:25", "backend": "127.0.0.1:26", "backend_client": "xforward"},
     r"backend_client: expected one of"),
    ({"protocol": "smtp", "address": "127.0.0.1:25", "backend": "127.0.0.1:26", "proxy_protocol": True},
     r"proxy_hosts: required"),
    ({"protocol": "smtp", "address": "127.0.0.1:25", "backend": "127.0.0.1:26", "proxy_hosts": ["nope"]},
     r"proxy_hosts\[0\]: not a network"),
    ({"protocol": "policy", "address": "127.0.0.1:25", "backend": "127.0.0.1:26"}, r"backend: only for protocol"),
    ({"protocol": "milter", "address": "127.0.0.1:25", "proxy_protocol": True}, r"proxy_protocol: only for"),
])
def test_bad_smtp_listeners_name_the_key(listen, message):
    with pytest.raises(ConfigError, match=message):
        config.from_dict({"listen": [listen]})


def test_smtp_section_defaults_pass_and_edges_are_accepted():
    SmtpConfig().check("smtp")
    SmtpConfig(max_rcpts=100, max_message=64 * 1024, idle_timeout=300, data_timeout=540, hold=0).check("smtp")


@pytest.mark.parametrize("values, message", [
    ({"max_rcpts": 99}, r"smtp.max_rcpts: RFC 5321"), ({"max_message": 1000}, r"smtp.max_message"),
    ({"idle_timeout": 299}, r"smtp.idle_timeout"), ({"data_timeout": 600}, r"smtp.data_timeout"),
    ({"backend_timeout": 0}, r"smtp.backend_timeout"), ({"hostname": "a b"}, r"smtp.hostname"),
    ({"max_errors": 0}, r"smtp: max_errors"), ({"hold": -1}, r"smtp.hold"),
])
def test_smtp_section_refuses_values_outside_the_rfc_bounds(values, message):
    with pytest.raises(ConfigError, match=message):
        SmtpConfig(**values).check("smtp")


def test_smtp_tls_caps_and_session_timeout_load_from_toml_keys():
    loaded = config.from_dict({"smtp": {"tls_cert": "/etc/checkid/cert.pem", "tls_key": "/etc/checkid/key.pem",
                                        "backend_tls": "required", "max_connections": 50, "max_per_ip": 0,
                                        "session_timeout": 1800}})
    smtp = loaded.smtp
    assert (smtp.tls_cert, smtp.tls_key, smtp.backend_tls) == ("/etc/checkid/cert.pem", "/etc/checkid/key.pem",
                                                               "required")
    assert (smtp.max_connections, smtp.max_per_ip, smtp.session_timeout) == (50, 0, 1800)
    assert SmtpConfig().backend_tls == "no" and not SmtpConfig().tls_cert  # loopback backends, no STARTTLS


@pytest.mark.parametrize("values, message", [
    ({"tls_cert": "/c.pem"}, r"smtp.tls_key: STARTTLS needs both"),
    ({"tls_key": "/k.pem"}, r"smtp.tls_cert: STARTTLS needs both"),
    ({"session_timeout": 1799}, r"smtp.session_timeout"),
    ({"max_connections": 0}, r"smtp: max_connections"), ({"max_per_ip": -1}, r"smtp: max_connections"),
])
def test_smtp_tls_and_caps_refuse_what_cannot_work(values, message):
    with pytest.raises(ConfigError, match=message):
        SmtpConfig(**values).check("smtp")


def test_smtp_backend_tls_is_one_of_three():
    with pytest.raises(ConfigError, match=r"backend_tls: expected one of"):
        config.from_dict({"smtp": {"backend_tls": "yes"}})
