"""Hostile text in log records: every destination (text or JSON; a file, standard error or
syslog) writes any record, as one bounded line that nothing in it can break or forge."""
from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from checkid.config import from_dict
from checkid.runtime import logs
from tests.runtime.test_logs_format import Syslogd

#: a HELO name that would write a forged decision line after its own
FORGED = "evil.example\n2026-01-01 00:00:00,000 checkid[1]: INFO checkid.decision: policy action=ACCEPT"
#: invalid UTF-8 as the codecs hand it on (surrogateescape), an ANSI escape, a line separator
UNDECODABLE = b"caf\xe9 \xff\xfe".decode("utf-8", "surrogateescape") + "\x1b[2J\u2028\x85end"


pytestmark = pytest.mark.usefixtures("root_logger")


#: a destination set up, and a reader of the lines it has (for syslog: one line per datagram)
Reader = Callable[[], list[str]]


def _setup(tmp_path: Path, **server: object) -> None:
    logs.setup_logging(from_dict({"server": {"state_dir": str(tmp_path), **server}}))


@pytest.fixture(params=["file-text", "file-json", "stderr-text", "stderr-json", "syslog-text", "syslog-json"])
def destination(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Reader, bool]]:
    where, fmt = request.param.split("-")
    if where == "file":
        path = tmp_path / "checkid.log"
        _setup(tmp_path, log_file=str(path), log_format=fmt)

        def read_file() -> list[str]:
            logging.getLogger().handlers[0].flush()
            return path.read_bytes().decode("utf-8").split("\n")[:-1]
        yield read_file, fmt == "json"
    elif where == "stderr":
        _setup(tmp_path, log_file="", log_format=fmt)
        # the worst standard error: strict UTF-8, as a redirected one without PYTHONIOENCODING
        raw = io.BytesIO()
        stream = io.TextIOWrapper(raw, encoding="utf-8", errors="strict", newline="\n")
        handler = logging.getLogger().handlers[0]
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(stream)

        def read_stream() -> list[str]:
            stream.flush()
            return raw.getvalue().decode("utf-8").split("\n")[:-1]
        yield read_stream, fmt == "json"
    else:
        daemon = Syslogd(tmp_path / "log")
        _setup(tmp_path, log_file="syslog", syslog_socket=str(daemon.path), log_format=fmt)
        received: list[str] = []

        def read_syslog() -> list[str]:
            daemon.sock.setblocking(False)
            try:
                while True:  # bounded: the test sent a few datagrams
                    received.append(daemon.sock.recv(1 << 20).decode("utf-8").rstrip("\0"))
            except BlockingIOError:
                pass
            return received
        yield read_syslog, fmt == "json"
        daemon.close()


def _message(line: str, is_json: bool) -> str:
    """What a line says of its record's message."""
    if is_json:
        return str(json.loads(line[line.index("{"):])["msg"])
    return line.split("checkid.test: ", 1)[1]


def test_a_newline_in_a_message_cannot_start_a_line(destination: tuple[Reader, bool]) -> None:
    read, is_json = destination
    logging.getLogger("checkid.test").info("helo=%s", FORGED)
    [line] = read()
    if is_json:
        assert _message(line, is_json) == "helo=" + FORGED  # escaped by JSON, read back the same
    else:
        assert _message(line, is_json) == "helo=" + FORGED.replace("\n", "\\n")


def test_invalid_utf8_is_written_escaped_not_lost(destination: tuple[Reader, bool]) -> None:
    read, is_json = destination
    log = logging.getLogger("checkid.test")
    log.info("helo=%s", UNDECODABLE)
    log.info("after")  # the handler still works
    first, after = read()
    if is_json:
        assert _message(first, is_json) == "helo=" + UNDECODABLE  # \\uXXXX escapes read back the same
        assert "\u2028" not in first and "\x85" not in first
    else:
        assert _message(first, is_json) == "helo=caf\\xe9 \\xff\\xfe\\x1b[2J\\u2028\\x85end"
    assert _message(after, is_json) == "after"


def test_a_two_megabyte_argument_gives_one_bounded_line(destination: tuple[Reader, bool]) -> None:
    read, is_json = destination
    logging.getLogger("checkid.test").info("bad input (ip=%r)", "1" * 2_000_000)
    [line] = read()
    assert len(line) < logs.MAX_LINE + 512  # the message's bound and the line's prefix
    assert _message(line, is_json).endswith(logs.CUT.format(2_000_000 + len("bad input (ip='')") - logs.MAX_LINE))


def test_json_fields_are_bounded_and_escaped(tmp_path: Path) -> None:
    path = tmp_path / "checkid.log"
    _setup(tmp_path, log_file=str(path), log_format="json")
    logging.getLogger("checkid.test").info("x", extra={"fields": {"ip": "1" * 100_000, "helo": UNDECODABLE}})
    logging.shutdown()
    [line] = path.read_text(encoding="utf-8").splitlines()  # splitlines: no U+2028 nor \x85 raw
    fields = json.loads(line)
    assert fields["ip"].endswith(logs.CUT.format(100_000 - logs.MAX_FIELD)) and fields["helo"] == UNDECODABLE


def test_a_traceback_in_a_text_line_is_indented_so_it_cannot_forge_a_record(tmp_path: Path) -> None:
    path = tmp_path / "checkid.log"
    _setup(tmp_path, log_file=str(path))
    try:
        raise ValueError(FORGED)
    except ValueError:
        logging.getLogger("checkid.test").exception("failed for %s", UNDECODABLE)
    logging.shutdown()
    first, *rest = path.read_text(encoding="utf-8").split("\n")[:-1]
    assert first.endswith("checkid.test: failed for caf\\xe9 \\xff\\xfe\\x1b[2J\\u2028\\x85end")
    assert rest[0] == "  Traceback (most recent call last):" and all(r.startswith("  ") for r in rest)
    assert any("ValueError: evil.example" in r for r in rest)


def test_escape_leaves_printable_text_alone() -> None:
    text = "policy ip=192.0.2.1 helo=<mx.example> text=\"Sender OK\" café ✓ \\n"
    assert logs.escape(text) == text and logs.safe_message(text) == text


def test_safe_message_never_cuts_inside_an_escape() -> None:
    message = logs.safe_message("\n" * (logs.MAX_LINE + 1))
    kept = logs.MAX_LINE // 2  # two characters per escaped newline
    assert message == "\\n" * kept + logs.CUT.format(logs.MAX_LINE + 1 - kept)
