"""Hostile input for the fuzz phases of the reliability suite (issue 14), one generator per
protocol: policy, MessagePack-RPC, milter and the SMTP front door.

Every input is built from the protocol's own valid messages (the codecs' encoders) and then,
by its ``kind``, left valid or spoilt: random bytes, a valid prefix then garbage, huge length
fields, deep nesting, commands out of order, oversize fields, NUL bytes and invalid UTF-8,
hostile IP strings. Each input is a pure function of ``(seed, protocol, index)``
(:func:`make`), so one that fails is reproduced from those three numbers alone. Nothing here
does I/O.
"""
from __future__ import annotations

import os
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass

import msgpack

from checkid.protocols.milter import codec as milter_codec
from checkid.protocols.milter.events import (Abort, Body, Command, Connect, Data, EndOfHeaders, EndOfMessage,
                                             HeaderField, Helo, Macro, Mail, OptNeg, Quit, QuitNoClose, Rcpt,
                                             Unknown)
from checkid.protocols.msgpack_rpc import codec as rpc_codec
from checkid.protocols.postfix_policy import codec as policy_codec
from checkid.protocols.smtp import codec as smtp_codec
from checkid.protocols.smtp import proxyproto

PROTOCOLS = ("policy", "msgpack-rpc", "milter", "smtp")
#: the run's seed (``CHECKID_FUZZ_SEED`` fixes it), printed with every failure
SEED = int(os.environ.get("CHECKID_FUZZ_SEED", random.randrange(2**32)))

#: client address strings no front-end may choke on (the scope ID ones are issue 14's defect)
HOSTILE_IPS = (
    "fe80::1%eth0", "::1%lo", "::1%" + "x" * 300, "fe80::1%25eth0", "1.2.3.4%eth0", "192.0.2.1\n",
    "192.0.2.1\r\nX: y", "192.0.2.1\0", "999.1.1.1", "01.02.03.04", "0x7f.0.0.1", "::ffff:192.0.2.1",
    "::ffff:999.0.0.1", "192.0.2.1/32", "", " ", "[::1]", "[192.0.2.1]", "1" * 2000, "::", "0.0.0.0",
    "255.255.255.255", "192.0.2.1 198.51.100.1", "ipv6:::1", "IPv6:2001:db8::1", "\u0661.\u0662.\u0663.\u0664",
    "2001:db8::1::2", "2001:db8:" + ":".join(["ffff"] * 10), "localhost", "unknown", "\udcff\udcfe",
    "127.0.0.1", "::1", "2001:db8::1", "1.2.3", "1.2.3.4.5", "-1.2.3.4", "1.2.3.4 ", "\t1.2.3.4",
)
#: byte sequences that are not UTF-8 (lone continuation, overlong, surrogate, past U+10FFFF)
INVALID_UTF8 = (b"\xff", b"\xfe\xff", b"\x80", b"\xc3\x28", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
                b"\xe2\x82", b"\xf0\x9f\x98")
#: pieces that break line-based and NUL-terminated framing
BREAKERS = (b"\0", b"\r", b"\n", b"\r\n", b"\n\n", b"\r\n.\r\n", b"\n.\n", b"=", b"%", b"<>", b"\x1b[2J")


@dataclass(frozen=True, slots=True)
class Input:
    """One generated input: its kind (what was done to it) and its bytes."""

    kind: str
    data: bytes


def rng_for(seed: int, protocol: str, index: int) -> random.Random:
    """The generator of input ``index`` of ``protocol`` under ``seed``."""
    return random.Random(f"{seed}:{protocol}:{index}")


def make(seed: int, protocol: str, index: int) -> Input:
    """Input ``index`` of ``protocol`` under ``seed`` (reproducible)."""
    return GENERATORS[protocol](rng_for(seed, protocol, index))


def chunks(rng: random.Random, data: bytes) -> list[bytes]:
    """``data`` cut at random places: whole, byte by byte (short ones), or a few random cuts."""
    roll = rng.random()
    if roll < 0.3 or len(data) < 2:
        return [data]
    if roll < 0.4 and len(data) <= 256:
        return [data[i:i + 1] for i in range(len(data))]
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 8))))
    return [data[i:j] for i, j in zip([0, *cuts], [*cuts, len(data)])]


# -- generic spoilers -------------------------------------------------------------------------
def random_bytes(rng: random.Random, most: int = 512) -> bytes:
    return rng.randbytes(rng.randint(0, most))


def text(rng: random.Random) -> str:
    """A short field value: a plausible one, a hostile IP, or one with breakers in it."""
    roll = rng.random()
    if roll < 0.4:
        return rng.choice(("example.com", "mail.example.com", "u@example.org", "", "x", "192.0.2.1"))
    if roll < 0.6:
        return rng.choice(HOSTILE_IPS)
    if roll < 0.8:
        raw = bytearray(rng.choice((b"example.com", b"a@b.c", b"x")))
        raw[rng.randint(0, len(raw)):0] = rng.choice(INVALID_UTF8 + BREAKERS)
        return raw.decode("utf-8", "surrogateescape")
    return "".join(chr(rng.choice((rng.randint(1, 0x7f), rng.randint(0x80, 0xd7ff), rng.randint(0xe000, 0x10ffff))))
                   for _ in range(rng.randint(0, 40)))


def spoil(rng: random.Random, valid: bytes) -> Input:
    """``valid`` spoilt in one of the generic ways."""
    kind = rng.choice(("random", "prefix-garbage", "truncated", "flipped", "inserted", "repeated", "spliced"))
    data = bytearray(valid)
    if kind == "random":
        return Input(kind, random_bytes(rng))
    if kind == "prefix-garbage":
        return Input(kind, valid[:rng.randint(0, len(valid))] + random_bytes(rng, 256))
    if kind == "truncated":
        return Input(kind, valid[:rng.randint(0, max(0, len(valid) - 1))])
    if kind == "flipped":
        for _ in range(rng.randint(1, 4)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
        return Input(kind, bytes(data))
    if kind == "inserted":
        for _ in range(rng.randint(1, 3)):
            data[rng.randint(0, len(data)):0] = rng.choice(INVALID_UTF8 + BREAKERS)
        return Input(kind, bytes(data))
    if kind == "repeated":
        start = rng.randint(0, len(valid))
        piece = valid[start:start + rng.randint(1, 64)] or b"A"
        return Input(kind, valid[:start] + piece * rng.choice((2, 50, 2000, 70_000 // len(piece) + 1)) + valid[start:])
    other = valid[rng.randint(0, len(valid)):]
    return Input(kind, valid[:rng.randint(0, len(valid))] + other + valid)


def mix(rng: random.Random, valid: Callable[[random.Random], bytes],
        special: tuple[tuple[str, Callable[[random.Random], bytes]], ...]) -> Input:
    """A tenth valid, about half the protocol's own special kinds, the rest generic spoilers."""
    roll = rng.random()
    if roll < 0.1:
        return Input("valid", valid(rng))
    if roll < 0.55:
        kind, build = rng.choice(special)
        return Input(kind, build(rng))
    return spoil(rng, valid(rng))


# -- policy -----------------------------------------------------------------------------------
POLICY_STATES = ("RCPT", "MAIL", "CONNECT", "EHLO", "DATA", "END-OF-MESSAGE", "VRFY", "rcpt", "", "X" * 100)


def policy_attrs(rng: random.Random) -> dict[str, str]:
    return {"request": "smtpd_access_policy", "protocol_state": rng.choice(POLICY_STATES[:3]),
            "protocol_name": "ESMTP", "client_address": rng.choice(("192.0.2.1", "198.51.100.7", "2001:db8::1")),
            "client_name": "mail.example.com", "helo_name": "example.com", "sender": "u@example.com",
            "recipient": "r@example.org", "instance": f"{rng.randrange(1 << 20):x}.{rng.randrange(1 << 20):x}",
            "queue_id": "4XyZ12", "client_port": str(rng.randint(1, 65535))}


def policy_valid(rng: random.Random) -> bytes:
    return b"".join(policy_codec.encode_request(policy_attrs(rng)) for _ in range(rng.randint(1, 3)))


def _policy_raw(attrs: dict[str, str]) -> bytes:
    """A request without the encoder's checks (breakers survive)."""
    return b"".join(f"{n}={v}\n".encode("utf-8", "surrogateescape") for n, v in attrs.items()) + b"\n"


def _policy_hostile_fields(rng: random.Random) -> bytes:
    attrs = policy_attrs(rng)
    for name in rng.sample(sorted(attrs), rng.randint(1, 4)):
        attrs[name] = text(rng)
    attrs["protocol_state"] = rng.choice(POLICY_STATES)
    return _policy_raw(attrs)


def _policy_hostile_ip(rng: random.Random) -> bytes:
    attrs = policy_attrs(rng)
    attrs["client_address"] = rng.choice(HOSTILE_IPS)
    attrs["protocol_state"] = "RCPT"
    return _policy_raw(attrs)


def _policy_oversize(rng: random.Random) -> bytes:
    attrs = policy_attrs(rng)
    roll = rng.random()
    if roll < 0.4:
        attrs[rng.choice(sorted(attrs))] = "x" * rng.choice((policy_codec.MAX_LINE - 20, policy_codec.MAX_LINE + 1,
                                                              70_000))
    elif roll < 0.7:
        attrs.update({f"a{i}": "v" for i in range(rng.choice((policy_codec.MAX_ATTRIBUTES, 200, 3000)))})
    else:
        return b"x" * rng.choice((1000, policy_codec.MAX_REQUEST + 10, 200_000))
    return _policy_raw(attrs)


def _policy_bad_lines(rng: random.Random) -> bytes:
    lines = [rng.choice((b"noequals", b"=value", b"=", b"\0=\0", b"request", b"a==b", b"\xff=\xfe", b" = "))
             for _ in range(rng.randint(1, 5))]
    return _policy_raw(policy_attrs(rng))[:-1] + b"\n".join(lines) + b"\n\n"


def _policy_not_policy(rng: random.Random) -> bytes:
    attrs = policy_attrs(rng)
    attrs["request"] = rng.choice(("", "junk", "smtpd_access_policyX", "SMTPD_ACCESS_POLICY"))
    if rng.random() < 0.3:
        del attrs["request"]
    return _policy_raw(attrs)


def _policy_crlf(rng: random.Random) -> bytes:
    return policy_valid(rng).replace(b"\n", rng.choice((b"\r\n", b"\r", b"\r\r\n", b"\n\r")))


def policy(rng: random.Random) -> Input:
    return mix(rng, policy_valid, (("hostile-fields", _policy_hostile_fields), ("hostile-ip", _policy_hostile_ip),
                                   ("oversize", _policy_oversize), ("bad-lines", _policy_bad_lines),
                                   ("not-policy", _policy_not_policy), ("line-ends", _policy_crlf)))


# -- MessagePack-RPC --------------------------------------------------------------------------
def _packable(value: str) -> str:
    """``value`` with lone surrogates replaced (a MessagePack str is UTF-8; invalid bytes in
    one are :func:`_rpc_bad_bytes`' business)."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _msgpack_value(rng: random.Random, depth: int = 0) -> object:
    roll = rng.random()
    if depth < 3 and roll < 0.15:
        return [_msgpack_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if depth < 3 and roll < 0.25:
        return {rng.choice(("IP", "ID", "H", "S", "R", "Hdrs", "Body", "MessageFollows", "x", 1)):
                _msgpack_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}
    return rng.choice((None, True, False, 0, -1, 2**63 - 1, -2**63, 2**64 - 1, 1.5, float("nan"), float("inf"),
                       b"\xff\0", "", _packable(text(rng)), "x" * rng.choice((10, 300, 70_000)),
                       msgpack.ExtType(rng.randint(0, 127), rng.randbytes(rng.randint(0, 8)))))


def rpc_call(rng: random.Random) -> list[object]:
    """Valid checkID params, positional or named."""
    ip, ident = rng.choice((("192.0.2.1", "example.com"), ("198.51.100.7", None), ("2001:db8::1", "example.net")))
    if rng.random() < 0.5:
        return [ip, ident, "mail.example.com", "u@example.com", ["r@example.org"], [], None]
    return [{"IP": ip, "ID": ident, "H": "mail.example.com", "S": "u@example.com", "R": ["r@example.org"],
             "MessageFollows": rng.random() < 0.5}]


def rpc_valid(rng: random.Random) -> bytes:
    out = b""
    for _ in range(rng.randint(1, 3)):
        method = rng.choice(("checkID", "checkID", "ping", "trace"))
        params = [] if method == "ping" else rpc_call(rng)
        out += rpc_codec.encode_request(rng.randrange(2**32), method, params)
    return out


def _rpc_hostile_params(rng: random.Random) -> bytes:
    params = rpc_call(rng)
    if isinstance(params[0], dict):
        params[0][rng.choice(("IP", "ID", "H", "S", "R", "Hdrs", "Body", "MessageFollows", "Bogus"))] = \
            _msgpack_value(rng)
    else:
        for _ in range(rng.randint(1, 3)):
            params[rng.randrange(len(params))] = _msgpack_value(rng)
        params += [_msgpack_value(rng) for _ in range(rng.choice((0, 0, 1, 5)))]
    return msgpack.packb([0, rng.randrange(2**32), rng.choice(("checkID", "trace")), params], use_bin_type=True)


def _rpc_hostile_ip(rng: random.Random) -> bytes:
    params = rpc_call(rng)
    if isinstance(params[0], dict):
        params[0]["IP"] = _packable(rng.choice(HOSTILE_IPS))
    else:
        params[0] = _packable(rng.choice(HOSTILE_IPS))
    return rpc_codec.encode_request(rng.randrange(2**32), "checkID", params)


def _rpc_shapes(rng: random.Random) -> bytes:
    """Valid MessagePack, not (quite) an RPC message."""
    shape = rng.choice((
        [0, rng.randrange(2**32), _msgpack_value(rng), []], [0, -1, "ping", []], [0, 2**32, "ping", []],
        [0, True, "ping", []], [0, 1, "ping", _msgpack_value(rng)], [0, 1, "nosuch", []], [0, 1, "stats", [1]],
        [2, "ping", []], [2, "checkID", rpc_call(rng)], [2, 1, []], [1, 1, None, "x"], [1, "x", None, None],
        [3, 1, 2, 3], [], [0], {"a": 1}, "string", 42, None, [0, 1, "ping"], [0, 1, "ping", [], 5]))
    return msgpack.packb(shape, use_bin_type=True)


def _rpc_deep(rng: random.Random) -> bytes:
    """Arrays or maps nested deeper than any valid call (up to msgpack's own stack), written
    by hand: the packer itself refuses to nest that deep."""
    depth = rng.choice((rpc_codec.MAX_DEPTH, rpc_codec.MAX_DEPTH + 1, 100, 1000, 1023, 1024, 5000))
    opener = rng.choice((b"\x91", b"\x81\xa1k"))  # fixarray of 1, or fixmap {"k": ...}
    inner = opener * depth + b"\xc0"
    if rng.random() < 0.5:  # inside a real request's params
        return b"\x94\x00\x01\xa7checkID\x91" + inner
    return inner


def _rpc_huge_length(rng: random.Random) -> bytes:
    """Headers announcing far more than follows (or than is allowed)."""
    n = rng.choice((2**32 - 1, 2**31, rpc_codec.MAX_MESSAGE + 1, 65536, 70_000))
    header = rng.choice((b"\xdd" + struct.pack("!I", n), b"\xdf" + struct.pack("!I", n),
                         b"\xdb" + struct.pack("!I", n), b"\xc6" + struct.pack("!I", n),
                         b"\xc9" + struct.pack("!I", n) + b"\x01", b"\xdc\xff\xff", b"\xde\xff\xff",
                         b"\xda\xff\xff"))
    prefix = b"\x94\x00\x01\xa7checkID" if rng.random() < 0.5 else b""
    return prefix + header + rng.randbytes(rng.randint(0, 64))


def _rpc_bad_bytes(rng: random.Random) -> bytes:
    """Strings that are not UTF-8, reserved type bytes, and unhashable map keys."""
    return rng.choice((
        b"\x94\x00\x01\xa7checkID\x91\xa4\xff\xfe\xfd\xfc",  # str with invalid UTF-8
        b"\x94\x00\x01\xa3\xed\xa0\x80\x90",  # method name a lone surrogate
        b"\xc1", b"\x94\x00\x01\xc1\x90",  # the never-used type byte
        b"\x94\x00\x01\xa4ping\x81\x90\x01",  # a map keyed by an array
        b"\x94\x00\x01\xa4ping\x81\x80\x01",  # a map keyed by a map
        b"\x94\x00\xcf" + b"\xff" * 8 + b"\xa4ping\x90",  # msgid 2**64-1
    ))


def rpc(rng: random.Random) -> Input:
    return mix(rng, rpc_valid, (("hostile-params", _rpc_hostile_params), ("hostile-ip", _rpc_hostile_ip),
                                ("shapes", _rpc_shapes), ("deep-nesting", _rpc_deep),
                                ("huge-length", _rpc_huge_length), ("bad-bytes", _rpc_bad_bytes)))


# -- milter -----------------------------------------------------------------------------------
def milter_commands(rng: random.Random, ip: str = "192.0.2.1") -> list[Command]:
    """One connection's commands as Postfix sends them, one or two messages."""
    out: list[Command] = [OptNeg(6, 0x1FF, 0x1FFFFF), Macro(b"C", (("j", "mx.example.org"), ("{client_addr}", ip))),
                          Connect("mail.example.com", "4" if ":" not in ip else "6", 40000, ip),
                          Helo("example.com")]
    for _ in range(rng.randint(1, 2)):
        out += [Macro(b"M", (("i", "4XyZ12"),)), Mail(("<u@example.com>", "SIZE=100")), Rcpt(("<r@example.org>",)),
                Data(), HeaderField("Subject", " hello"), HeaderField("From", " u@example.com"), EndOfHeaders(),
                Body(b"body\r\n"), EndOfMessage(b"")]
    out.append(rng.choice((Quit(), QuitNoClose(), Abort())))
    return out


def milter_wire(commands: list[Command]) -> bytes:
    return b"".join(milter_codec.encode_command(c) for c in commands)


def milter_valid(rng: random.Random) -> bytes:
    return milter_wire(milter_commands(rng))


def _milter_out_of_order(rng: random.Random) -> bytes:
    commands = milter_commands(rng)
    head = [commands[0]] if rng.random() < 0.7 else []  # usually negotiated, so the rest is reached
    rest = commands[1:] + [commands[0]] * rng.randint(0, 1)
    rng.shuffle(rest)
    return milter_wire(head + rest[:rng.randint(1, len(rest))])


def _milter_hostile_fields(rng: random.Random) -> bytes:
    ip = rng.choice(HOSTILE_IPS)
    commands = milter_commands(rng, "192.0.2.1")
    commands[2] = Connect(text(rng), rng.choice(("4", "6", "U", "L", "4")), rng.randint(0, 65535), ip)
    commands[3] = Helo(text(rng))
    commands[5] = Mail((text(rng),) + tuple(text(rng) for _ in range(rng.randint(0, 2))))
    commands[6] = Rcpt((text(rng),))
    if rng.random() < 0.5:
        commands[8] = HeaderField(text(rng), text(rng))
    if rng.random() < 0.3:
        commands.insert(4, Unknown(rng.choice(("ID ", "id  ", "ID x")) + text(rng)))
    return milter_wire(commands)


def _milter_huge_length(rng: random.Random) -> bytes:
    prefix = milter_wire(milter_commands(rng)[:rng.randint(0, 5)])
    length = rng.choice((0, 2**32 - 1, milter_codec.MAX_PACKET + 1, milter_codec.MAX_PACKET, 70_000))
    return prefix + struct.pack("!I", length) + rng.choice((b"B", b"L", b"D", b"O", b"\0")) + rng.randbytes(64)


def _milter_bad_payloads(rng: random.Random) -> bytes:
    """Known command codes with payloads their decoder must refuse (or take)."""
    code = rng.choice(b"OCDHUMRLBETNAQKX\0\xff")
    payload = rng.choice((b"", b"\0", b"abc", b"x\0y", b"\0\0\0", rng.randbytes(rng.randint(0, 40)),
                          b"host\0", b"host\x004", b"host\x004\x00", b"host\x006\x01\x02ip", b"host\x00U",
                          b"\x00\x00\x00\x01", b"C" + b"n\0" * 101))
    prefix = milter_wire(milter_commands(rng)[:rng.randint(0, 4)])
    return prefix + milter_codec.frame(bytes([code]), payload)


def _milter_oversize(rng: random.Random) -> bytes:
    """Macros and recipients past the session's bounds, big headers and bodies."""
    base = milter_commands(rng)[:4]
    roll = rng.random()
    if roll < 0.3:
        extra: list[Command] = [Macro(rng.choice((b"C", b"M", b"R")), tuple(
            (f"{{m{i}}}", "v" * rng.choice((1, 100, 9000))) for i in range(rng.choice((10, 65, 300)))))
            for _ in range(rng.randint(1, 6))]
    elif roll < 0.5:
        extra = [Macro(b"C", (("n" * rng.choice((129, 5000)), "v"),))]
    elif roll < 0.8:
        extra = [Mail(("<u@example.com>",)), *[Rcpt((f"<r{i}" + "x" * rng.choice((1, 300, 5000)) + "@example.org>",))
                                                for i in range(rng.choice((10, 200, 900)))]]
    else:
        extra = [Mail(("<u@example.com>",)), Rcpt(("<r@example.org>",)), Data()]
        extra += [HeaderField(f"X-H{i}", " " + "v" * rng.choice((10, 2000, 60_000))) for i in range(rng.choice((5, 50)))]
        extra += [EndOfHeaders(), Body(b"b" * 65535), EndOfMessage(b"")]
    return milter_wire(base + extra)


def milter(rng: random.Random) -> Input:
    return mix(rng, milter_valid, (("out-of-order", _milter_out_of_order), ("hostile-fields", _milter_hostile_fields),
                                   ("huge-length", _milter_huge_length), ("bad-payloads", _milter_bad_payloads),
                                   ("oversize", _milter_oversize)))


# -- the SMTP front door ----------------------------------------------------------------------
MESSAGE = b"Subject: hello\r\nFrom: u@example.com\r\n\r\n.dot line\r\nbody\r\n"


def smtp_lines(rng: random.Random) -> list[bytes]:
    """One session's command lines and content, as a client pipelines them."""
    out = [b"EHLO mail.example.com\r\n", b"ID example.com\r\n"]
    for _ in range(rng.randint(1, 2)):
        out += [b"MAIL FROM:<u@example.com> SIZE=100\r\n", b"RCPT TO:<r@example.org>\r\n", b"DATA\r\n",
                smtp_codec.encode_data(MESSAGE)]
    out.append(rng.choice((b"QUIT\r\n", b"RSET\r\n", b"NOOP\r\n")))
    return out


def smtp_valid(rng: random.Random) -> bytes:
    return b"".join(smtp_lines(rng))


def _smtp_out_of_order(rng: random.Random) -> bytes:
    lines = smtp_lines(rng) + [rng.choice((b"STARTTLS\r\n", b"HELO x.example\r\n", b"VRFY u\r\n", b"HELP\r\n",
                                           b"BDAT 10 LAST\r\n", b"AUTH PLAIN\r\n", b".\r\n"))]
    rng.shuffle(lines)
    return b"".join(lines[:rng.randint(1, len(lines))])


def _smtp_hostile_fields(rng: random.Random) -> bytes:
    def line(verb: str, arg: str) -> bytes:
        return f"{verb} {arg}".encode("utf-8", "surrogateescape") + b"\r\n"
    lines = smtp_lines(rng)
    lines[0] = line(rng.choice(("EHLO", "HELO", "ehlo")), rng.choice((text(rng), "", " ", "a b", "[" + text(rng) + "]")))
    lines[1] = line("ID", rng.choice((text(rng), "", "a b", "x" * 300)))
    lines[2] = line("MAIL", rng.choice((f"FROM:<{text(rng)}>", "FROM:<>", "FROM:", "FROM:<a@b> SIZE=99999999999999999999",
                                        "FROM:<a@b> SIZE=" + "9" * 30, "TO:<a@b>", text(rng), "FROM:<<>>")))
    lines[3] = line("RCPT", rng.choice((f"TO:<{text(rng)}>", "TO:<>", "TO:", "FROM:<a@b>", text(rng))))
    return b"".join(lines)


def _smtp_oversize(rng: random.Random) -> bytes:
    lines = smtp_lines(rng)
    roll = rng.random()
    if roll < 0.3:
        lines.insert(rng.randint(0, len(lines) - 1), b"NOOP " + b"x" * rng.choice((505, 506, 511, 600, 70_000)) + b"\r\n")
    elif roll < 0.6:
        body = b"Subject: x\r\n\r\n" + b"y" * rng.choice((997, 998, 999, 5000, 200_000)) + b"\r\n"
        lines[5] = smtp_codec.encode_data(body)
    elif roll < 0.8:
        lines[3:4] = [f"RCPT TO:<r{i}@example.org>\r\n".encode() for i in range(rng.choice((99, 101, 300)))]
    else:
        lines = [b"NOOP\r\n"] * rng.choice((50, 1001, 1100))
    return b"".join(lines)


def _smtp_content(rng: random.Random) -> bytes:
    """Message content that plays with line ends and dots (smuggling attempts among them)."""
    lines = smtp_lines(rng)
    content = rng.choice((b"a\n.\nMAIL FROM:<evil@x>\r\n", b"a\r.\rRCPT TO:<x>\r\n", b"a\r\n.\n", b"\r\n..\r\n",
                          b".\r\n", b"..\r\n", b"\0\0\0\r\n", b"\xff\xfe\r\n", b"Authent: forged\r\n\r\nbody\r\n",
                          b"Subject: x\r\n\tcontinued\r\n\r\n", b"\r\r\n\n", b"no final newline"))
    lines[5] = content + rng.choice((b"\r\n.\r\n", b"\n.\n", b".\r\n", b""))
    return b"".join(lines)


def _smtp_bare_ends(rng: random.Random) -> bytes:
    return smtp_valid(rng).replace(b"\r\n", rng.choice((b"\n", b"\r", b"\r\r\n", b"\n\r")), rng.randint(1, 6))


def smtp_body(rng: random.Random) -> Input:
    """The SMTP stream after the PROXY header."""
    return mix(rng, smtp_valid, (("out-of-order", _smtp_out_of_order), ("hostile-fields", _smtp_hostile_fields),
                                 ("oversize", _smtp_oversize), ("content", _smtp_content),
                                 ("bare-line-ends", _smtp_bare_ends)))


def proxy_header(rng: random.Random) -> tuple[str, bytes]:
    """A PROXY header for the front door's listener: mostly valid v2 from 192.0.2.1, else
    valid v1, LOCAL, or a spoilt or hostile one."""
    roll = rng.random()
    valid = proxyproto.encode_v2("192.0.2.1", 40000, "127.0.0.1", 25)
    if roll < 0.75:
        return "", valid
    if roll < 0.85:
        return "", rng.choice((proxyproto.encode_v1("192.0.2.1", 40000, "127.0.0.1", 25),
                               proxyproto.encode_v2("2001:db8::1", 40000, "2001:db8::2", 25),
                               proxyproto.encode_v2_local()))
    hostile = rng.choice((
        f"PROXY TCP4 {rng.choice(HOSTILE_IPS)} 127.0.0.1 40000 25\r\n".encode("utf-8", "surrogateescape"),
        f"PROXY TCP6 {rng.choice(HOSTILE_IPS)} ::1 40000 25\r\n".encode("utf-8", "surrogateescape"),
        b"PROXY TCP4 192.0.2.1 127.0.0.1 99999 25\r\n", b"PROXY UNKNOWN\r\n", b"PROXY " + b"x" * 200 + b"\r\n",
        valid[:12] + rng.randbytes(4) + rng.randbytes(rng.randint(0, 40)),
        valid[:14] + b"\xff\xff" + rng.randbytes(64),
    ))
    return "proxy-", spoil(rng, valid).data if rng.random() < 0.3 else hostile


def smtp(rng: random.Random) -> Input:
    """What a client of a PROXY-protocol front door sends: the header, then SMTP."""
    prefix, header = proxy_header(rng)
    body = smtp_body(rng)
    return Input(prefix + body.kind, header + body.data)


GENERATORS: dict[str, Callable[[random.Random], Input]] = {
    "policy": policy, "msgpack-rpc": rpc, "milter": milter, "smtp": smtp,
}
#: the valid stream of each protocol (for the property that valid input decodes)
VALID: dict[str, Callable[[random.Random], bytes]] = {
    "policy": policy_valid, "msgpack-rpc": rpc_valid, "milter": milter_valid, "smtp": smtp_valid,
}
