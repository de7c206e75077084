"""Milter commands (MTA → milter) and responses (milter → MTA) as values.

Codes and flags follow libmilter's mfdef.h/mfapi.h (reference/milter.md §2–4).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

#: protocol version this milter speaks
VERSION = 6


class Flag(enum.IntFlag):
    """SMFIF_* actions the milter may take."""

    ADDHDRS = 0x001
    CHGBODY = 0x002
    ADDRCPT = 0x004
    DELRCPT = 0x008
    CHGHDRS = 0x010
    QUARANTINE = 0x020
    CHGFROM = 0x040
    ADDRCPT_PAR = 0x080
    SETSYMLIST = 0x100


class Proto(enum.IntFlag):
    """SMFIP_* protocol steps and no-reply bits."""

    NOCONNECT = 0x000001
    NOHELO = 0x000002
    NOMAIL = 0x000004
    NORCPT = 0x000008
    NOBODY = 0x000010
    NOHDRS = 0x000020
    NOEOH = 0x000040
    NR_HDR = 0x000080
    NOUNKNOWN = 0x000100
    NODATA = 0x000200
    SKIP = 0x000400
    RCPT_REJ = 0x000800
    NR_CONN = 0x001000
    NR_HELO = 0x002000
    NR_MAIL = 0x004000
    NR_RCPT = 0x008000
    NR_DATA = 0x010000
    NR_UNKN = 0x020000
    NR_EOH = 0x040000
    NR_BODY = 0x080000
    HDR_LEADSPC = 0x100000


class Stage(enum.IntEnum):
    """SMFIM_* macro stages in the OPTNEG macro-list extension (note EOM before EOH)."""

    CONNECT = 0
    HELO = 1
    ENVFROM = 2
    ENVRCPT = 3
    DATA = 4
    EOM = 5
    EOH = 6


# -- commands -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class OptNeg:
    version: int
    actions: int
    protocol: int


@dataclass(frozen=True, slots=True)
class Macro:
    #: the command code the macros precede (b"C", b"M", ...)
    stage: bytes
    macros: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Connect:
    hostname: str
    #: "4", "6", "L" (local socket) or "U" (unknown)
    family: str
    port: int = 0
    address: str = ""


@dataclass(frozen=True, slots=True)
class Helo:
    name: str


@dataclass(frozen=True, slots=True)
class Mail:
    #: the address as the client gave it (usually with <>), then ESMTP parameters
    args: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Rcpt:
    args: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Data:
    pass


@dataclass(frozen=True, slots=True)
class HeaderField:
    """One header of the message (``L``), as the MTA passes it."""

    name: str
    value: str


@dataclass(frozen=True, slots=True)
class EndOfHeaders:
    pass


@dataclass(frozen=True, slots=True)
class Body:
    chunk: bytes


@dataclass(frozen=True, slots=True)
class EndOfMessage:
    #: libmilter treats data here as a last body chunk; MTAs send none
    chunk: bytes = b""


@dataclass(frozen=True, slots=True)
class Unknown:
    command: str


@dataclass(frozen=True, slots=True)
class Abort:
    pass


@dataclass(frozen=True, slots=True)
class Quit:
    pass


@dataclass(frozen=True, slots=True)
class QuitNoClose:
    pass


Command = (OptNeg | Macro | Connect | Helo | Mail | Rcpt | Data | HeaderField | EndOfHeaders | Body
           | EndOfMessage | Unknown | Abort | Quit | QuitNoClose)


# -- responses ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class OptNegReply:
    version: int
    actions: int
    protocol: int
    #: requested macros per stage (SMFIM_*): space-separated names
    macros: tuple[tuple[int, str], ...] = field(default=())


@dataclass(frozen=True, slots=True)
class Disposition:
    """A reply without payload, the MTA's instruction for the command: c(ontinue) a(ccept) r(eject) t(empfail) d(iscard) s(kip) p(rogress)."""

    code: bytes


@dataclass(frozen=True, slots=True)
class ReplyCode:
    """``y``: a custom 4xx/5xx reply; itself the verdict."""

    text: str


@dataclass(frozen=True, slots=True)
class InsertHeader:
    index: int
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class AddHeader:
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class Quarantine:
    reason: str


@dataclass(frozen=True, slots=True)
class ChangeHeader:
    """``m``: the index-th header of that name (1-based); an empty value deletes it."""

    index: int
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class AddRecipient:
    """``+``, or ``2`` with ESMTP arguments (one space-separated string)."""

    rcpt: str
    args: str | None = None


@dataclass(frozen=True, slots=True)
class DeleteRecipient:
    rcpt: str


@dataclass(frozen=True, slots=True)
class ChangeFrom:
    sender: str
    args: str | None = None


@dataclass(frozen=True, slots=True)
class ReplaceBody:
    chunk: bytes


Response = (OptNegReply | Disposition | ReplyCode | InsertHeader | AddHeader | Quarantine | ChangeHeader
            | AddRecipient | DeleteRecipient | ChangeFrom | ReplaceBody)

CONTINUE = Disposition(b"c")
ACCEPT = Disposition(b"a")
REJECT = Disposition(b"r")
TEMPFAIL = Disposition(b"t")
DISCARD = Disposition(b"d")
SKIP = Disposition(b"s")
PROGRESS = Disposition(b"p")
#: Postfix only: 421 and hang up (a portable form is ReplyCode("421 ..."))
SHUTDOWN = Disposition(b"4")
#: disposition codes; "f" (CONN_FAIL) is defined by libmilter but implemented by no MTA
DISPOSITION_CODES = (b"c", b"a", b"r", b"t", b"d", b"s", b"p", b"4", b"f")
