"""Logging of the daemon's processes: the set-up (a file, standard error or the syslog
daemon; text or JSON lines), the reopen on SIGUSR1 (after logrotate), and the fault handler
that writes a hung or crashing worker's traceback into the same log.

A record may carry its fields as data: ``log.info(msg, *args, extra={"fields": {...}})``.
The text format shows only the message (which should say the same as ``key=value``); the
JSON format makes each field a key of the line's object. A ``checkid.decision`` line
without them has its ``key=value`` words taken as fields.

Any record may carry what a client sent (a HELO name, an address, invalid UTF-8 as
surrogate escapes), so both formats write any record, and write it as one bounded line:
the text format escapes control characters, line separators and surrogates in the message
(``\\n``, ``\\x1b``, ``\\xff`` for an undecodable byte) and indents a traceback's lines, so
only a record's first line starts at the margin; the JSON format escapes them inside its
strings. A message longer than :data:`MAX_LINE` is cut, and the cut is marked.

A file or standard error is flushed once per turn of the running event loop rather than
once per line (a decision line per request: under load many lines share one ``write``):
a line written on the loop reaches the file when the loop turn that wrote it ends, one
written with no loop running at once; :func:`logging.shutdown` (at exit, and in
``exit_now`` before ``os._exit``) and a reopen flush what is left. Only a process killed
during a loop turn (a fatal signal, SIGKILL) can lose lines: those of that turn.
"""
from __future__ import annotations

import asyncio
import faulthandler
import json
import logging
import logging.handlers
import re
import socket
import sys
import time
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any, TextIO

from checkid.config import Config
from checkid.config.runtime import SYSLOG
from checkid.errors import ConfigError

log = logging.getLogger(__name__)

FORMAT = "%(asctime)s checkid[%(process)d]: %(levelname)s %(name)s: %(message)s"
#: the syslog daemon stamps the time and host itself; "checkid[PID]:" is the RFC 3164 tag
SYSLOG_FORMAT = "checkid[%(process)d]: %(levelname)s %(name)s: %(message)s"
#: the logger of the one line per decision (checkid.protocols.decider)
DECISION_LOGGER = "checkid.decision"
#: the keys every JSON line has; a field of the same name does not replace them
BASE_KEYS = ("time", "pid", "level", "logger", "msg")

#: bound on a message, in characters: a record quoting what a client sent (a 1.9 MB "IP
#: address") must not write megabytes per line; 8 KiB holds any honest line many times over
MAX_LINE = 8192
#: bound on a JSON line's field value: fields are short by nature (names, addresses, codes)
MAX_FIELD = 1024
#: bound on a traceback or stack: a deep recursion's is hundreds of kilobytes of repeats
MAX_TRACEBACK = 65536
#: what marks a cut message (or field, or traceback): how much was left out
CUT = "…[cut {} chars]"

#: key=value, the value <bracketed> (an address), "quoted" (backslash escapes) or one word
_FIELD = re.compile(r'(?:^|(?<=\s))([A-Za-z_][A-Za-z0-9_.-]*)=(<[^>]*>|"(?:[^"\\]|\\.)*"|\S*)')
#: what may not stand raw in a line: C0 and C1 controls and DEL (a newline would start a
#: forged line, an escape sequence would drive a terminal), the Unicode line and paragraph
#: separators (``str.splitlines`` breaks on them) and surrogates (undecodable bytes, which
#: no encoder writes)
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
#: inside a JSON string: the same, less the C0 controls ``json.dumps`` escapes itself
_JSON_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if char in _ESCAPES:
        return _ESCAPES[char]
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: the byte that did not decode
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape(text: str) -> str:
    """``text`` with every control character, line separator and surrogate written as a
    backslash escape: printable, encodable and on one line."""
    return _UNSAFE.sub(_escape_char, text)


def bound(text: str, limit: int = MAX_LINE) -> str:
    """``text`` cut to ``limit`` characters, the cut marked with how much was left out."""
    if len(text) <= limit:
        return text
    return text[:limit] + CUT.format(len(text) - limit)


def safe_message(text: str, limit: int = MAX_LINE) -> str:
    """``text`` escaped (:func:`escape`) and bounded, for a text line: at most ``limit``
    characters, escapes included and never cut inside one, then the mark of a cut."""
    head = text[:limit]
    escaped = escape(head)
    if len(escaped) > limit:  # the escapes lengthened it: keep the characters that fit
        size = kept = 0
        for kept, char in enumerate(head):  # at most ``limit`` rounds
            size += len(escape(char))
            if size > limit:
                break
        head = head[:kept]
        escaped = escape(head)
    return escaped if len(head) == len(text) else escaped + CUT.format(len(text) - len(head))


def _json_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


class TextFormatter(logging.Formatter):
    """The text line: the message escaped and bounded (:func:`safe_message`), a traceback
    or stack after it with each of its lines indented, escaped and bounded, so a line that
    starts at the margin is always a record's first."""

    def __init__(self, fmt: str | None = None, datefmt: str | None = None) -> None:
        super().__init__(fmt, datefmt)
        self._uses_time = self.usesTime()
        #: the last second formatted by :meth:`formatTime` and its text (one line per
        #: decision: most lines share their second with the one before)
        self._second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """:meth:`logging.Formatter.formatTime`, the text of the second reused while it lasts."""
        if datefmt:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second[0]:
            self._second = (second, time.strftime(self.default_time_format, self.converter(record.created)))
        return "%s,%03d" % (self._second[1], record.msecs)  # logging.Formatter's default_msec_format

    def format(self, record: logging.LogRecord) -> str:
        record.message = safe_message(record.getMessage())
        if self._uses_time:
            record.asctime = self.formatTime(record, self.datefmt)
        line = self.formatMessage(record)
        if not (record.exc_info or record.exc_text or record.stack_info):
            return line
        # not cached in record.exc_text: that is raw text another handler would write as is
        after = [self.formatException(record.exc_info) if record.exc_info else record.exc_text or "",
                 self.formatStack(record.stack_info) if record.stack_info else ""]
        more = bound("\n".join(a for a in after if a), MAX_TRACEBACK)
        if more:
            line += "".join("\n  " + safe_message(part) for part in more.split("\n"))
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (local, ISO 8601), pid, level, logger, msg, then the
    record's fields; ``exc`` holds a traceback. Control characters are escaped, so no field
    can start a line of its own."""

    def __init__(self, prefix: str = "") -> None:
        super().__init__()
        #: put before the object (the syslog tag)
        self.prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        message = bound(record.getMessage())
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="milliseconds"),
            "pid": record.process, "level": record.levelname, "logger": record.name, "msg": message,
        }
        for key, value in record_fields(record, message):
            key = bound(key, MAX_FIELD)
            if key not in BASE_KEYS:
                line[key] = value if value is None or isinstance(value, (int, float, bool)) \
                    else bound(str(value), MAX_FIELD)
        if record.exc_info:
            line["exc"] = bound(self.formatException(record.exc_info), MAX_TRACEBACK)
        if record.stack_info:
            line["stack"] = bound(self.formatStack(record.stack_info), MAX_TRACEBACK)
        # json.dumps escapes the C0 controls; the rest of what may not stand raw (surrogates
        # above all, which no encoder writes) becomes a \\uXXXX escape, which reads back the same
        text = _JSON_UNSAFE.sub(_json_escape, json.dumps(line, ensure_ascii=False))
        return (self.prefix % {"process": record.process}) + text


def record_fields(record: logging.LogRecord, message: str) -> Iterator[tuple[str, Any]]:
    """The fields of ``record``: its ``fields`` extra, else, for a decision line, the
    ``key=value`` words of its message (values as text, ``<…>`` and quotes taken off)."""
    fields = getattr(record, "fields", None)
    if isinstance(fields, Mapping):
        yield from ((str(k), v) for k, v in fields.items())
    elif record.name == DECISION_LOGGER:
        yield from parse_fields(message)


def parse_fields(message: str) -> Iterator[tuple[str, str]]:
    """The ``key=value`` words of a log message, in order."""
    for match in _FIELD.finditer(message):
        key, value = match.group(1), match.group(2)
        if value.startswith("<") and value.endswith(">"):
            value = value[1:-1]
        elif len(value) >= 2 and value.startswith('"') and value.endswith('"'):
            try:
                value = json.loads(value)
            except ValueError:
                value = value[1:-1]
        yield key, value


class _TurnFlush(logging.StreamHandler):
    """A stream handler that flushes once per loop turn (see the module's docstring)."""

    #: the loop a flush is scheduled on (None: none pending)
    _flush_loop: asyncio.AbstractEventLoop | None = None

    def emit(self, record: logging.LogRecord) -> None:
        # StreamHandler.emit without its flush per record; called with the handler's lock held
        try:
            self.stream.write(self.format(record) + self.terminator)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)
            return
        if record.levelno >= logging.WARNING:  # the lines before a hang or crash must reach the file
            self.flush()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop in this thread: nothing would flush later
            self.flush()
            return
        if self._flush_loop is not loop:  # a flush pending on a loop that stopped does not count
            self._flush_loop = loop
            loop.call_soon(self._flush_turn)

    def _flush_turn(self) -> None:
        self.acquire()
        try:
            self._flush_loop = None
            self.flush()
        finally:
            self.release()


class TurnFlushStreamHandler(_TurnFlush):
    """Standard error (or another stream), flushed once per loop turn."""


class TurnFlushFileHandler(_TurnFlush, logging.FileHandler):
    """A log file, flushed once per loop turn."""

    def emit(self, record: logging.LogRecord) -> None:
        if self.stream is None:  # delayed or closed: FileHandler opens it (and flushes this once)
            logging.FileHandler.emit(self, record)
        else:
            super().emit(record)


def lean_records() -> None:
    """Make records without what no format of this module shows: the thread's and the
    process's names (the pid stays). Process-wide (these are :mod:`logging`'s switches)."""
    logging.logThreads = False
    logging.logMultiprocessing = False


def setup_logging(config: Config) -> None:
    """Log to ``[server] log_file`` (a file, or ``"syslog"``), or to stderr when it is
    empty, in ``[server] log_format``.

    :raises ConfigError: the syslog socket cannot be reached
    """
    server = config.server
    path = server.log_file
    handler: logging.Handler
    if path == SYSLOG:
        # SysLogHandler swallows a failed connect (and retries per record): refuse to start
        # without a syslog daemon instead of logging into the void
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
                probe.connect(server.syslog_socket)
        except OSError as e:
            raise ConfigError(f"server.syslog_socket: cannot send to {server.syslog_socket}: "
                              f"{e.strerror or e}") from None
        handler = logging.handlers.SysLogHandler(
            server.syslog_socket, logging.handlers.SysLogHandler.facility_names[server.syslog_facility],
            socktype=socket.SOCK_DGRAM)
        formatter = JsonFormatter("checkid[%(process)d]: ") if server.log_format == "json" \
            else TextFormatter(SYSLOG_FORMAT)
    else:
        # a logged name may hold any byte the peer sent; never fail the write over one
        handler = TurnFlushFileHandler(path, encoding="utf-8", errors="backslashreplace") if path \
            else TurnFlushStreamHandler()
        formatter = JsonFormatter() if server.log_format == "json" else TextFormatter(FORMAT)
    handler.setFormatter(formatter)
    lean_records()
    logging.basicConfig(level=server.log_level.upper(), handlers=[handler], force=True)


def reopen_logs() -> None:
    """SIGUSR1: reopen the log file (after logrotate moved it), or reconnect to the syslog
    daemon (after it restarted).

    The new file (socket) is opened before the old one is closed: when it cannot be (after
    a privilege drop the log directory may not be writable), the error is logged and the
    process keeps writing to the file it has.
    """
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            error = _reopen_file(handler)
            where = handler.baseFilename
        elif isinstance(handler, logging.handlers.SysLogHandler) and isinstance(handler.address, str):
            error = _reconnect_syslog(handler)
            where = handler.address
        else:
            continue
        if error is not None:
            log.error("cannot reopen the log file %s, logging on to the one open: %s", where,
                      error.strerror or error)
        else:
            log.info("log reopened")


def _reopen_file(handler: logging.FileHandler) -> OSError | None:
    handler.acquire()
    try:
        try:
            stream = handler._open()
        except OSError as e:
            return e
        old, handler.stream = handler.stream, stream
        if faulthandler.is_enabled():
            enable_faulthandler()  # onto the new file, before the old fd can be reused
        if old is not None:
            old.close()
        return None
    finally:
        handler.release()


def _reconnect_syslog(handler: logging.handlers.SysLogHandler) -> OSError | None:
    assert isinstance(handler.address, str)
    sock = socket.socket(socket.AF_UNIX, handler.socktype)
    try:
        sock.connect(handler.address)
    except OSError as e:
        sock.close()
        return e
    handler.acquire()
    try:
        # typeshed does not declare SysLogHandler.socket
        old: socket.socket | None = getattr(handler, "socket", None)
        setattr(handler, "socket", sock)
    finally:
        handler.release()
    if old is not None:
        old.close()
    return None


def enable_faulthandler() -> None:
    """Dump every thread's traceback into the log on SIGABRT (what the master sends a hung
    worker) and on a fatal signal (SIGSEGV, SIGBUS, ...). It writes plain text, also into a
    JSON log; with syslog it goes to standard error (the journal under systemd)."""
    faulthandler.enable(file=_log_stream(), all_threads=True)


def _log_stream() -> TextIO:
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is not None:
            return handler.stream
    return sys.stderr
