"""The log's formats and destinations, in-process: JSON lines, syslog (a datagram socket the
test binds stands in for /dev/log) and the settings that choose them."""
from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from checkid.config import from_dict
from checkid.errors import ConfigError
from checkid.runtime import logs

#: bound on waiting for a datagram the process sent itself
RECV_SECONDS = 10.0


pytestmark = pytest.mark.usefixtures("root_logger")


class Syslogd:
    """A unix datagram socket where a syslog daemon's /dev/log would be."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = self._bind()

    def _bind(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(self.path))
        sock.settimeout(RECV_SECONDS)
        return sock

    def restart(self) -> None:
        self.sock.close()
        os.unlink(self.path)
        self.sock = self._bind()

    def receive(self) -> str:
        return self.sock.recv(65536).decode()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def syslogd(tmp_path: Path) -> Iterator[Syslogd]:
    daemon = Syslogd(tmp_path / "log")
    yield daemon
    daemon.close()


def setup(tmp_path: Path, **server: object) -> None:
    logs.setup_logging(from_dict({"server": {"state_dir": str(tmp_path), **server}}))


def test_json_lines_carry_the_fields_as_keys(tmp_path: Path) -> None:
    path = tmp_path / "checkid.log"
    setup(tmp_path, log_file=str(path), log_format="json")
    logging.getLogger("checkid.somewhere").warning("peer %s said %s", "192.0.2.1", "hi",
                                                   extra={"fields": {"ip": "192.0.2.1", "latency_ms": 0.25,
                                                                     "helo": "evil\nINFO forged line"}})
    logging.shutdown()
    lines = path.read_text().splitlines()
    assert len(lines) == 1  # the newline in a field did not start a line
    line = json.loads(lines[0])
    assert line["msg"] == "peer 192.0.2.1 said hi" and line["level"] == "WARNING"
    assert line["logger"] == "checkid.somewhere" and line["pid"] == os.getpid()
    assert line["ip"] == "192.0.2.1" and line["latency_ms"] == 0.25 and line["helo"] == "evil\nINFO forged line"
    assert "T" in line["time"]  # ISO 8601


def test_a_decision_line_without_fields_has_its_key_value_words_as_keys(tmp_path: Path) -> None:
    path = tmp_path / "checkid.log"
    setup(tmp_path, log_file=str(path), log_format="json")
    logging.getLogger(logs.DECISION_LOGGER).info(
        'policy queue_id=4XyZ1 ip=192.0.2.1 from=<a@example.com> text="Sender OK" action=ACCEPT code=250')
    logging.shutdown()
    line = json.loads(path.read_text())
    assert line["queue_id"] == "4XyZ1" and line["ip"] == "192.0.2.1" and line["from"] == "a@example.com"
    assert line["text"] == "Sender OK" and line["action"] == "ACCEPT" and line["code"] == "250"


def test_a_field_cannot_replace_the_keys_every_line_has(tmp_path: Path) -> None:
    path = tmp_path / "checkid.log"
    setup(tmp_path, log_file=str(path), log_format="json")
    logging.getLogger("checkid.x").info("real", extra={"fields": {"msg": "fake", "level": "ERROR"}})
    logging.shutdown()
    line = json.loads(path.read_text())
    assert line["msg"] == "real" and line["level"] == "INFO"


def test_a_traceback_stays_inside_its_json_line(tmp_path: Path) -> None:
    path = tmp_path / "checkid.log"
    setup(tmp_path, log_file=str(path), log_format="json")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("checkid.x").exception("failed")
    logging.shutdown()
    [line] = [json.loads(text) for text in path.read_text().splitlines()]
    assert "ValueError: boom" in line["exc"] and line["level"] == "ERROR"


def test_syslog_sends_to_the_mail_facility_with_the_checkid_tag(tmp_path: Path, syslogd: Syslogd) -> None:
    setup(tmp_path, log_file="syslog", syslog_socket=str(syslogd.path))
    logging.getLogger("checkid.decision").info("policy ip=192.0.2.1 action=REJECT")
    message = syslogd.receive()
    # <PRI>: facility mail (2) * 8 + severity info (6), RFC 3164 tag "checkid[PID]:"
    assert message.startswith(f"<22>checkid[{os.getpid()}]: INFO checkid.decision: policy ip=192.0.2.1")
    logging.getLogger("checkid.x").error("bad")
    assert syslogd.receive().startswith("<19>")  # mail.err


def test_syslog_facility_and_json_format(tmp_path: Path, syslogd: Syslogd) -> None:
    setup(tmp_path, log_file="syslog", syslog_socket=str(syslogd.path), syslog_facility="local3",
          log_format="json")
    logging.getLogger("checkid.decision").info("policy ip=192.0.2.1 action=REJECT")
    message = syslogd.receive()
    prefix = f"<158>checkid[{os.getpid()}]: "  # local3 (19) * 8 + info
    assert message.startswith(prefix)
    line = json.loads(message[len(prefix):].rstrip("\0"))
    assert line["ip"] == "192.0.2.1" and line["action"] == "REJECT"


def test_reopen_reconnects_to_a_restarted_syslog_daemon(tmp_path: Path, syslogd: Syslogd) -> None:
    setup(tmp_path, log_file="syslog", syslog_socket=str(syslogd.path))
    logging.getLogger("checkid.x").info("before")
    assert "before" in syslogd.receive()
    syslogd.restart()
    logs.reopen_logs()
    assert "log reopened" in syslogd.receive()
    logging.getLogger("checkid.x").info("after")
    assert "after" in syslogd.receive()


def test_reopen_keeps_the_syslog_socket_when_the_daemon_is_gone(tmp_path: Path, syslogd: Syslogd) -> None:
    setup(tmp_path, log_file="syslog", syslog_socket=str(syslogd.path))
    os.unlink(syslogd.path)  # syslogd stopped: nothing to reconnect to
    logs.reopen_logs()  # does not raise
    assert "cannot reopen the log file" in syslogd.receive()  # the old socket still delivers


def test_syslog_without_a_daemon_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="server.syslog_socket"):
        setup(tmp_path, log_file="syslog", syslog_socket=str(tmp_path / "nothing"))


@pytest.mark.parametrize("server, key", [
    ({"log_format": "xml"}, "server.log_format"),
    ({"log_file": "syslog", "syslog_socket": ""}, "server.syslog_socket"),
    ({"syslog_facility": "kern"}, "server.syslog_facility"),
])
def test_log_settings_are_checked(server: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        from_dict({"server": server})
