"""``checkid-spp``, the qmail-spp plugin, run as qmail-spp runs it (exec'd with stdin closed
and only its name as argument, environment in, command lines out) against a real
``checkid serve`` and against a fake engine that answers whatever a test wants."""
from __future__ import annotations

import itertools
import os
import re
import socket
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testsupport.processes import Checkid, free_port, world_readable_tmpdir

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "spp" / "checkid-spp.c"
#: qmail-spp's "can't execute" exit status (spp.c)
CANNOT_EXECUTE = 120
#: bound on one plugin run; the plugin's own timeouts in these tests are far shorter
RUN_SECONDS = 30

# the two results of the original specification (DESIGN.md), as qmail-spp commands
REJECT_LINE = "E550 5.7.1 Sending MTA '192.0.2.1' not authorized by 'example.net'"
AUTHENT_LINE = "HAuthent: 192.0.2.1 example.com SPF1 PASS ratings=S1:A,M2:A,H1:B"


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plugin built as the install script builds it, with the two names qmail runs it by."""
    folder = tmp_path_factory.mktemp("spp")
    binary = folder / "checkid-spp"
    # CHECKID_SPP_CFLAGS="-fsanitize=address,undefined -fno-sanitize-recover" runs the suite under sanitizers
    extra = os.environ.get("CHECKID_SPP_CFLAGS", "").split()
    subprocess.run(["cc", "-O2", "-Wall", "-Wextra", "-Werror", *extra, "-o", str(binary), str(SOURCE)],
                   check=True, timeout=120)
    for stage in ("mail", "rcpt"):
        (folder / f"checkid-spp-{stage}").symlink_to(binary)
    return binary


class Engine:
    """Addresses of a running ``checkid serve`` with a unix-socket and a TCP RPC listener."""

    def __init__(self, unix: str, tcp: str) -> None:
        self.unix, self.tcp = unix, tcp


@pytest.fixture(scope="module")
def engine(dns_server) -> Iterator[Engine]:
    workdir = world_readable_tmpdir("checkid-spp-")
    sock, port = workdir / "rpc.sock", free_port()
    toml = (f'[[listen]]\nprotocol = "msgpack-rpc"\naddress = "unix:{sock}"\n'
            f'[[listen]]\nprotocol = "msgpack-rpc"\naddress = "127.0.0.1:{port}"\n'
            f'[dns]\nnameservers = ["{dns_server.address}"]\n[registry]\nzone = "registry.test"\n')
    with Checkid(toml, workdir, [port]):
        yield Engine(f"unix:{sock}", f"127.0.0.1:{port}")


def spp_env(server: str, helo: str = "example.com", mail: str | None = None, rcpt: str | None = None,
            **extra: str) -> dict[str, str]:
    """The environment qmail-smtpd under tcpserver gives a plugin after HELO and MAIL (and RCPT)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PROTO": "TCP", "TCPREMOTEIP": "192.0.2.1",
           "TCPREMOTEPORT": "40000", "TCPLOCALIP": "127.0.0.1", "TCPLOCALPORT": "25",
           "SMTPHELOHOST": helo, "SMTPMAILFROM": mail if mail is not None else f"someone@{helo}",
           "CHECKID_SPP_SERVER": server, "CHECKID_SPP_TIMEOUT_MS": "20000"}
    if rcpt is not None:
        env.update(SMTPRCPTTO=rcpt, SMTPRCPTCOUNT="0", SMTPRCPTCOUNTALL="1", SMTPRCPTHOSTSOK="1")
    env.update(extra)
    return env


def run_spp(program: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run the plugin as spp.c does: stdin closed, argv[0] the configured path, no other
    argument unless the ``:`` shell form gives some."""
    command = " ".join([f'"{program}"', *args])
    return subprocess.run(["/bin/sh", "-c", f"exec 0<&- {command}"], env=env, capture_output=True, text=True,
                          timeout=RUN_SECONDS)


def commands(out: str) -> list[str]:
    """qmail-spp's reading of the plugin's stdout: one command per LF-terminated line."""
    assert out == "" or out.endswith("\n"), "qmail-spp drops the last byte of an unterminated line"
    return out.splitlines()


def unfold(lines: list[str]) -> list[str]:
    """The header fields that ``H`` lines add, unfolded (RFC 5322 section 2.2.3)."""
    fields: list[str] = []
    for line in lines:
        assert line.startswith("H")
        if line[1:2] in (" ", "\t"):
            fields[-1] += line[1:]
        else:
            fields.append(line[1:])
    return fields


# --------------------------------------------------------------- against checkid serve

@pytest.mark.parametrize("listener", ["unix", "tcp"])
def test_spp_rejects_mail_from_an_mta_the_helo_name_does_not_authorize(plugin, engine, listener):
    out = run_spp(plugin.with_name("checkid-spp-mail"), spp_env(getattr(engine, listener), helo="example.net"))
    assert (out.returncode, commands(out.stdout)) == (0, [REJECT_LINE])


@pytest.mark.parametrize("listener", ["unix", "tcp"])
def test_spp_adds_the_authent_header_to_accepted_mail(plugin, engine, listener):
    out = run_spp(plugin.with_name("checkid-spp-mail"), spp_env(getattr(engine, listener), helo="example.com"))
    assert (out.returncode, commands(out.stdout)) == (0, [AUTHENT_LINE])


def test_spp_at_rcpt_rejects_but_adds_no_header_twice(plugin, engine):
    rcpt = plugin.with_name("checkid-spp-rcpt")
    rejected = run_spp(rcpt, spp_env(engine.unix, helo="example.net", rcpt="bob@example.org"))
    accepted = run_spp(rcpt, spp_env(engine.unix, helo="example.com", rcpt="bob@example.org"))
    assert commands(rejected.stdout) == [REJECT_LINE]
    assert (accepted.returncode, accepted.stdout) == (0, "")  # qmail keeps H lines until DATA: once, at MAIL


def test_spp_gets_a_final_decision_for_an_identity_only_dkim_can_authenticate(plugin, engine):
    # at MAIL a DKIM-only identity would be CONTINUE (no opinion for qmail-spp); told that no
    # message follows, the engine skips DKIM and decides: unauthenticated, to the spam filter
    out = run_spp(plugin.with_name("checkid-spp-mail"), spp_env(engine.unix, helo="dkim.example"))
    assert unfold(commands(out.stdout)) == ["Authent: 192.0.2.1 dkim.example NONE NONE ratings="]


def test_spp_takes_the_stage_from_its_argument_in_the_shell_form(plugin, engine):
    env = spp_env(engine.unix, helo="example.com", rcpt="bob@example.org")
    assert commands(run_spp(plugin, env, "mail").stdout) == [AUTHENT_LINE]
    assert run_spp(plugin, env, "rcpt").stdout == ""


@pytest.mark.parametrize("args", [(), ("data",), ("mail", "extra")])
def test_spp_that_cannot_tell_its_stage_cannot_execute(plugin, engine, args):
    out = run_spp(plugin, spp_env(engine.unix), *args)
    assert out.returncode == CANNOT_EXECUTE and out.stdout == ""
    assert "stage" in out.stderr


@pytest.mark.parametrize("setting", [{"CHECKID_SPP_SERVER": "localhost:10031"},
                                     {"CHECKID_SPP_SERVER": "127.0.0.1:99999"},
                                     {"CHECKID_SPP_SERVER": "unix:"},
                                     {"CHECKID_SPP_TIMEOUT_MS": "soon"},
                                     {"CHECKID_SPP_TIMEOUT_MS": "0"}])
def test_spp_misconfigured_cannot_execute_naming_the_variable(plugin, setting):
    out = run_spp(plugin.with_name("checkid-spp-mail"), {**spp_env("127.0.0.1:1"), **setting})
    assert out.returncode == CANNOT_EXECUTE and out.stdout == ""
    assert next(iter(setting)) in out.stderr


@pytest.mark.parametrize("server", ["unix:/nonexistent/checkid/rpc.sock", "127.0.0.1:{closed}", "[::1]:{closed}"])
def test_spp_without_an_engine_gives_no_opinion_or_defers(plugin, server):
    server = server.format(closed=free_port())
    program = plugin.with_name("checkid-spp-mail")
    quiet = run_spp(program, spp_env(server))
    deferred = run_spp(program, spp_env(server, CHECKID_SPP_ON_ERROR="defer"))
    assert (quiet.returncode, quiet.stdout) == (0, "")
    assert "unreachable" in quiet.stderr
    assert deferred.returncode == 0 and commands(deferred.stdout)[0].startswith("E451 4.3.0 ")
    assert len(commands(deferred.stdout)) == 1


def test_spp_gives_up_on_a_slow_engine_within_its_timeout(plugin, engine, dns):
    # the engine waits for a registry answer that comes long after the plugin's deadline
    dns.set_fault("slow.example.registry.test", delay=RUN_SECONDS * 4)
    program = plugin.with_name("checkid-spp-mail")
    quiet = run_spp(program, spp_env(engine.unix, helo="slow.example", CHECKID_SPP_TIMEOUT_MS="300"))
    deferred = run_spp(program, spp_env(engine.tcp, helo="slow.example", CHECKID_SPP_TIMEOUT_MS="300",
                                        CHECKID_SPP_ON_ERROR="defer"))
    assert (quiet.returncode, quiet.stdout) == (0, "")
    assert "timed out" in quiet.stderr
    assert commands(deferred.stdout)[0].startswith("E451 4.3.0 ")


def test_spp_under_tcpserver_decides_on_the_address_tcpserver_gives(plugin, engine):
    # tcpserver (ucspi-tcp) sets TCPREMOTEIP as it does for qmail-smtpd; 127.0.0.1 is an own network
    env = {k: v for k, v in spp_env(engine.unix, helo="example.net").items() if not k.startswith("TCP")}
    server = subprocess.Popen(["tcpserver", "-1", "-q", "-R", "-H", "127.0.0.1", "0",
                               str(plugin.with_name("checkid-spp-mail"))],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        with socket.create_connection(("127.0.0.1", port), timeout=RUN_SECONDS) as conn:
            out = b""
            while chunk := conn.recv(4096):
                out += chunk
    finally:
        server.terminate()
        server.communicate(timeout=RUN_SECONDS)
    (line,) = commands(out.decode())
    assert line.startswith("HAuthent: 127.0.0.1 example.net ")


# --------------------------------------------------------------- against a fake engine

Reply = Callable[[int], list[bytes] | None]


class FakeEngine:
    """A unix-socket server that records each request and answers it with the chunks
    ``reply(msgid)`` gives (None: keep the connection open and say nothing)."""

    made = itertools.count()

    def __init__(self, folder: Path, reply: Reply) -> None:
        self.path = folder / f"fake{next(self.made)}.sock"
        self.reply = reply
        self.requests: list[object] = []
        self.listener = socket.socket(socket.AF_UNIX)
        try:
            self.listener.bind(str(self.path))
            self.listener.listen(8)
        except OSError:
            self.listener.close()
            raise
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def server(self) -> str:
        return f"unix:{self.path}"

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                unpacker = msgpack.Unpacker(raw=False)
                while True:
                    data = conn.recv(65536)
                    if not data:
                        break
                    unpacker.feed(data)
                    request = next(unpacker, None)
                    if request is not None:
                        break
                if request is None:
                    continue
                self.requests.append(request)
                chunks = self.reply(request[1])
                try:
                    if chunks is None:
                        conn.recv(1)  # until the plugin hangs up
                        continue
                    for chunk in chunks:
                        conn.sendall(chunk)
                except OSError:
                    pass

    def close(self) -> None:
        self.stopping.set()
        with socket.socket(socket.AF_UNIX) as waker:  # unblocks accept(); the loop then sees stopping
            waker.connect(str(self.path))
        self.thread.join(RUN_SECONDS)
        self.listener.close()

    def __enter__(self) -> FakeEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[Callable[[Reply], FakeEngine]]:
    made: list[FakeEngine] = []

    def make(reply: Reply) -> FakeEngine:
        made.append(FakeEngine(tmp_path, reply))
        return made[-1]

    yield make
    for server in made:
        server.close()


def answer(action: str, code: int = 250, xcode: str = "", text: str = "", headers=(), error=None) -> Reply:
    result = None if error is not None else [action, [code, xcode, text], list(headers)]
    return lambda msgid: [msgpack.packb([1, msgid, error, result])]


def run_mail(plugin: Path, server: FakeEngine, **extra: str) -> subprocess.CompletedProcess[str]:
    return run_spp(plugin.with_name("checkid-spp-mail"), spp_env(server.server, **extra))


def test_spp_sends_the_contract_params_for_the_stage(plugin, fake):
    server = fake(answer("CONTINUE"))
    run_spp(plugin.with_name("checkid-spp-mail"), spp_env(server.server, helo="helo.example", mail=""))
    run_spp(plugin.with_name("checkid-spp-rcpt"),
            spp_env(server.server, helo="helo.example", mail="a@b.example", rcpt="r@c.example"))
    env = spp_env(server.server)
    del env["SMTPHELOHOST"], env["TCPREMOTEIP"]
    long_sender = "x" * 300 + "@long.example"  # a str16 on the wire
    env["SMTPMAILFROM"] = long_sender
    run_spp(plugin.with_name("checkid-spp-mail"), env)
    params = [(r[0], r[2], r[3]) for r in server.requests]
    # the contract's params, then MessageFollows false: qmail-spp cannot ask again at end of data
    assert params == [(0, "checkID", ["192.0.2.1", None, "helo.example", "", [], [], None, False]),
                      (0, "checkID", ["192.0.2.1", None, "helo.example", "a@b.example", ["r@c.example"], [], None,
                                      False]),
                      (0, "checkID", [None, None, None, long_sender, [], [], None, False])]


@pytest.mark.parametrize("action", ["CONTINUE", "DISCARD", "SOMETHING-NEW"])
def test_spp_has_no_opinion_on_what_qmail_spp_cannot_do(plugin, fake, action):
    out = run_mail(plugin, fake(answer(action, 250, "", "ok", [{"label": "Authent:", "text": "x"}])))
    assert (out.returncode, out.stdout) == (0, "")


def test_spp_filter_adds_the_headers_in_order(plugin, fake):
    headers = [{"label": "Authent:", "text": "192.0.2.1 - NONE NONE ratings="},
               {"label": "X-Checkid-Verdict:", "text": "filter"}]
    out = run_mail(plugin, fake(answer("FILTER", 250, "", "ok", headers)))
    assert unfold(commands(out.stdout)) == ["Authent: 192.0.2.1 - NONE NONE ratings=", "X-Checkid-Verdict: filter"]


def test_spp_tempfail_defers_with_the_engines_reply(plugin, fake):
    out = run_mail(plugin, fake(answer("TEMPFAIL", 451, "4.4.3", "registry timeout")))
    assert commands(out.stdout) == ["E451 4.4.3 registry timeout"]


@pytest.mark.parametrize(("action", "code", "xcode", "line"), [
    ("REJECT", 250, "2.0.0", "E550 no"),            # a reject is a 5xx whatever the code says
    ("TEMPFAIL", 550, "5.7.1", "E451 no"),          # a deferral a 4xx, and the class must match
    ("REJECT", 554, "5.7", "E554 no"),              # not an RFC 3463 code: left out
    ("REJECT", 550, "5.7.1\r\n250 ok", "E550 no"),  # nor one that would end the reply
])
def test_spp_reply_codes_are_consistent_with_the_action(plugin, fake, action, code, xcode, line):
    out = run_mail(plugin, fake(answer(action, code, xcode, "no")))
    assert commands(out.stdout) == [line]


def test_spp_reply_text_cannot_end_the_reply_line(plugin, fake):
    out = run_mail(plugin, fake(answer("REJECT", 550, "5.7.1", "bad\r\n250 2.0.0 but fine\x00 caf\u00e9")))
    assert commands(out.stdout) == ["E550 5.7.1 bad  250 2.0.0 but fine  caf??"]


def test_spp_long_reply_text_fits_one_smtp_reply_line(plugin, fake):
    out = run_mail(plugin, fake(answer("REJECT", 550, "5.7.1", "why " * 2000)))
    (line,) = commands(out.stdout)
    assert line.startswith("E550 5.7.1 why why")
    assert len(line) - 1 + len("\r\n") <= 512  # RFC 5321 section 4.5.3.1.5, without spp's E


def test_spp_header_text_cannot_inject_another_header(plugin, fake):
    headers = [{"label": "Authent:", "text": "ok\r\nBcc: victim@example.org\nX: y"}]
    out = run_mail(plugin, fake(answer("ACCEPT", headers=headers)))
    assert unfold(commands(out.stdout)) == ["Authent: ok  Bcc: victim@example.org X: y"]


def test_spp_drops_a_header_with_an_invalid_name(plugin, fake):
    headers = [{"label": "Bad Name:", "text": "x"}, {"label": "Bcc:\r\nX:", "text": "y"},
               {"label": "Authent:", "text": "z", "extra": [1, {"deep": None}]}]
    out = run_mail(plugin, fake(answer("ACCEPT", headers=headers)))
    assert commands(out.stdout) == ["HAuthent: z"]


def test_spp_folds_long_headers_and_bounds_them(plugin, fake):
    words = [f"word{i}" for i in range(1000)]
    headers = [{"label": "Authent:", "text": " ".join(words)}, {"label": "X-Long:", "text": "y" * 5000}]
    out = run_mail(plugin, fake(answer("ACCEPT", headers=headers)))
    lines = commands(out.stdout)
    assert all(len(line) - 1 <= 998 for line in lines)  # RFC 5322 section 2.1.1
    authent, long = unfold(lines)
    folded = [line for line in lines if not line.startswith("HX-Long") and not line.startswith("H y")]
    assert all(len(line) - 1 <= 78 for line in folded)
    assert "Authent: " + " ".join(words) != authent and ("Authent: " + " ".join(words)).startswith(authent)
    assert long.startswith("X-Long: yyy") and len(long) < 5000


def test_spp_reports_an_engine_error_and_gives_no_opinion(plugin, fake):
    out = run_mail(plugin, fake(answer("", error="checkID: R must be an array of strings")))
    assert (out.returncode, out.stdout) == (0, "")
    assert "R must be an array of strings" in out.stderr


def _str32(length: int) -> bytes:
    return b"\xdb" + struct.pack(">I", length)


@pytest.mark.parametrize("reply", [
    lambda msgid: [msgpack.packb([1, msgid + 1, None, ["REJECT", [550, "5.7.1", "not yours"], []]])],  # wrong msgid
    lambda msgid: [msgpack.packb([0, msgid, "checkID", []])],                       # a request, not a response
    lambda msgid: [msgpack.packb([1, msgid, None])],                                # too short
    lambda msgid: [msgpack.packb([1, msgid, None, ["REJECT", [550, "5.7.1"], []]])],  # reply too short
    lambda msgid: [b"\x94\x01" + msgpack.packb(msgid) + b"\xc0\x93" + _str32(2**32 - 1)],  # a 4 GiB string
    lambda msgid: [b"\x94\x01" + msgpack.packb(msgid) + b"\xc0\x93\xa6REJECT\x93\xcd\x02\x26\xa0\xa0"
                   + b"\xdd\xff\xff\xff\xff"],                                      # 4 billion headers
    lambda msgid: [b"\x94\x01" + msgpack.packb(msgid) + b"\xc0\x93\xa6ACCEPT\x93\xcd\x00\xfa\xa0\xa0\x91\x81\xa1x"
                   + b"\x91" * 1000 + b"\xc0"],                                     # nested past any reason
    lambda msgid: [msgpack.packb([1, msgid, None, ["REJECT", [550, "5.7.1", "x" * 70000], []]])],  # too large
    lambda msgid: [b"\xc1" * 64],                                                   # not MessagePack
    lambda msgid: [],                                                               # closed with no answer
    lambda msgid: None,                                                             # never answers
])
def test_spp_distrusts_a_malformed_reply(plugin, fake, reply):
    server = fake(reply)
    quiet = run_mail(plugin, server, CHECKID_SPP_TIMEOUT_MS="300")
    deferred = run_mail(plugin, server, CHECKID_SPP_TIMEOUT_MS="300", CHECKID_SPP_ON_ERROR="defer")
    assert (quiet.returncode, quiet.stdout) == (0, "")
    assert quiet.stderr.startswith("checkid-spp: ")
    assert deferred.returncode == 0 and commands(deferred.stdout)[0].startswith("E451 4.3.0 ")


# --------------------------------------------------------------- properties of the codec

ascii_text = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e), min_size=1, max_size=12)
words = st.lists(ascii_text, min_size=1, max_size=30).map(" ".join)
label = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e, blacklist_characters=":"),
                min_size=1, max_size=20).map(lambda s: s + ":")
decision = st.tuples(st.sampled_from(["ACCEPT", "FILTER", "REJECT", "TEMPFAIL"]), words,
                     st.lists(st.tuples(label, words), max_size=4))
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@PROPERTY
@given(decision=decision, cuts=st.lists(st.integers(min_value=0, max_value=4096), max_size=6))
def test_spp_renders_any_clean_decision_exactly_however_it_arrives(plugin, tmp_path, decision, cuts):
    action, text, headers = decision
    code, xcode = {"ACCEPT": (250, ""), "FILTER": (250, ""), "REJECT": (550, "5.7.1"), "TEMPFAIL": (451, "4.7.1")}[action]
    wire = [{"label": lb, "text": tx} for lb, tx in headers]

    def reply(msgid: int) -> list[bytes]:
        data = msgpack.packb([1, msgid, None, [action, [code, xcode, text], wire]])
        points = sorted({c % (len(data) + 1) for c in cuts})
        return [data[i:j] for i, j in zip([0] + points, points + [len(data)])]

    with FakeEngine(tmp_path, reply) as server:
        out = run_mail(plugin, server)
    lines = commands(out.stdout)
    if action in ("REJECT", "TEMPFAIL"):
        assert lines == [f"E{code} {xcode} {text}"[:511]]
    else:
        assert unfold(lines) == [f"{lb} {tx}" for lb, tx in headers]
        assert all(len(line) - 1 <= 78 or " " not in line[2:].strip() for line in lines)


@PROPERTY
@given(cut=st.integers(min_value=0, max_value=10**6))
def test_spp_gives_no_opinion_on_any_reply_cut_short(plugin, tmp_path, cut):
    def reply(msgid: int) -> list[bytes]:
        data = msgpack.packb([1, msgid, None, ["REJECT", [550, "5.7.1", "no"], [{"label": "A:", "text": "b"}]]])
        return [data[:cut % len(data)]]

    with FakeEngine(tmp_path, reply) as server:
        out = run_mail(plugin, server)
    assert (out.returncode, out.stdout) == (0, "")
    assert "cut short" in out.stderr or "closed" in out.stderr


def test_qmail_guide_names_what_the_plugin_reads_and_the_tested_entries():
    guide = (ROOT / "docs" / "qmail.md").read_text()
    read = set(re.findall(r'getenv\("([A-Z_]+)"\)', SOURCE.read_text()))
    assert read >= {"TCPREMOTEIP", "SMTPHELOHOST", "SMTPMAILFROM", "SMTPRCPTTO", "CHECKID_SPP_SERVER"}
    assert all(f"`{name}`" in guide for name in read)
    assert "[mail]\nplugins/checkid-spp-mail\n[rcpt]\nplugins/checkid-spp-rcpt\n" in guide
    assert "cc -O2 -Wall -Wextra -o build/checkid-spp spp/checkid-spp.c" in guide
