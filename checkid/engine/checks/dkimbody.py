"""DKIM body hashes computed while the body streams in (RFC 6376 §3.4.3-3.4.5, §3.7).

:class:`BodyHashes` takes the raw body in arrival order, in chunks cut anywhere, and keeps one
hash per distinct :data:`BodyKey` (body canonicalization, hash, ``l=``): several signatures
with the same key share one, and each canonicalization runs once per message however many
keys use it. The result equals dkimpy's ``canonicalize_body`` over the whole body, cut at
``l=``, then hashed (the tests check it for any chunking), with its two quirks kept: a last
line without CRLF keeps its trailing white space in "relaxed", and an empty body is one CRLF
in "simple" and nothing in "relaxed".

What is held between chunks is bounded: the run of trailing CRLFs (a count: they are
dropped if nothing but more of them follows), and at most two bytes of the current line (a
white-space run seen at its end, compressed to one space, and a CR that may start a CRLF).
Work is bounded too: a key stops being hashed once it has its ``l=`` bytes or needs more
than ``max_body`` (its digest is then None), and a canonicalization stops once none of its
keys needs more.

This module does no I/O.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from typing import Literal

#: (body canonicalization "simple" | "relaxed", hash "sha256" | "sha1", l= or None)
BodyKey = tuple[str, str, int | None]

#: bytes canonicalized per step: one step holds the GIL for at most about 2 ms (the regex
#: path costs ~25 ms per MB), so a loop sharing the process with a hashing thread stays lively
SLICE = 64 * 1024

_HASHES: dict[str, Callable[[], hashlib._Hash]] = {"sha256": hashlib.sha256, "sha1": hashlib.sha1}
_CRLF = b"\r\n"
# Runs of white space that compression changes: any run holding a tab, or two or more
# characters. A lone space is left alone, which keeps ordinary text off the slow path.
_WSP_RUN = re.compile(rb"\t[\t ]*| [\t ]+")


def _crlf_suffix(data: bytes) -> int:
    """How many CRLF pairs ``data`` ends with (``b"a\\n\\r\\n"`` ends with one)."""
    tail = data[len(data.rstrip(b"\r\n")):]
    if not tail.endswith(b"\n"):
        return 0
    # (CRLF)* alternates, so it starts after the last doubled character of the tail
    start = max(tail.rfind(b"\r\r"), tail.rfind(b"\n\n")) + 1
    return (len(tail) - start) // 2


def relaxed_piece(data: bytes) -> bytes:
    """RFC 6376 §3.4.4 over a piece whose every white-space run and CRLF lies wholly inside
    it: runs of WSP become one space, WSP before a CRLF goes. Compressing first leaves at
    most one space before each CRLF, which a plain replace then drops."""
    if b"\t" in data or b"  " in data:
        data = _WSP_RUN.sub(b" ", data)
    if b" \r\n" in data:
        data = data.replace(b" \r\n", _CRLF)
    return data


class _Hasher:
    """One key's hash: takes canonical bytes until it has ``l=`` of them or would pass the
    body limit."""

    __slots__ = ("hash", "remaining", "room", "over")

    def __init__(self, name: str, length: int | None, max_body: int) -> None:
        self.hash = _HASHES[name]()
        #: canonical bytes still wanted (l= minus what was hashed), None without l=
        self.remaining = length
        #: canonical bytes that may still be hashed before max_body is passed
        self.room = max_body
        #: it needed more than max_body
        self.over = False

    @property
    def done(self) -> bool:
        return self.over or self.remaining == 0

    def take(self, data: bytes | memoryview) -> None:
        if self.done:
            return
        if self.remaining is not None and len(data) > self.remaining:
            data = data[:self.remaining]
        if len(data) > self.room:
            self.over = True
            return
        self.hash.update(data)
        self.room -= len(data)
        if self.remaining is not None:
            self.remaining -= len(data)


class _Canon:
    """One canonicalization's stream, feeding every hasher that uses it."""

    __slots__ = ("relaxed", "hashers", "held", "crlfs", "emitted", "active")

    def __init__(self, relaxed: bool, hashers: list[_Hasher]) -> None:
        self.relaxed = relaxed
        self.hashers = hashers
        #: the end of the input not canonical yet: b"", b" ", b"\r" or b" \r" (relaxed), b"\r" (simple)
        self.held = b""
        #: CRLFs that ended the canonical output so far, not emitted: trailing empty lines go
        self.crlfs = 0
        #: some canonical byte other than those trailing CRLFs came out
        self.emitted = False
        #: some hasher still wants bytes
        self.active = not self.done

    def feed(self, chunk: bytes) -> None:
        data = self.held + chunk if self.held else chunk
        if self.relaxed:
            # hold the white space at the end and a CR after it (it may start a CRLF); a
            # white-space run is either dropped (a CRLF follows) or one space, so one is kept
            cr = data.endswith(b"\r")
            line = data[:-1] if cr else data
            cut = len(line.rstrip(b" \t"))
            self.held = (b" " if cut < len(line) else b"") + (b"\r" if cr else b"")
            self._out(relaxed_piece(line[:cut] if cut < len(line) else line))
        else:
            if data.endswith(b"\r"):
                self.held, data = b"\r", data[:-1]
            else:
                self.held = b""
            self._out(data)

    def finish(self) -> None:
        """The end of the body: a last line without CRLF, and the one CRLF that ends it all."""
        if self.held:
            self._out(self.held)  # " " or "\r" or " \r": a line without CRLF keeps them
            self.held = b""
        if self.emitted or not self.relaxed:
            # dkimpy: all trailing CRLFs go, one comes back; "simple" turns no body into one CRLF
            self._emit(_CRLF)

    def _out(self, canonical: bytes) -> None:
        if not canonical:
            return
        n = _crlf_suffix(canonical)
        if len(canonical) == 2 * n:
            self.crlfs += n
            return
        if self.crlfs:
            self._emit_crlfs(self.crlfs)
        self.crlfs = n
        self._emit(canonical[:len(canonical) - 2 * n] if n else canonical)
        self.emitted = True

    def _emit_crlfs(self, count: int) -> None:
        # blank lines inside the body, perhaps very many: only as many as decide every
        # hasher (its l= reached, or max_body passed), in bounded pieces
        need = 0
        for h in self.hashers:
            if not h.done:
                need = max(need, h.room + 1 if h.remaining is None else min(h.remaining, h.room + 1))
        count = min(count, need // 2 + 1)
        while count > 0 and self.active:
            step = min(count, SLICE // 2)
            self._emit(_CRLF * step)
            count -= step

    def _emit(self, data: bytes) -> None:
        for hasher in self.hashers:
            hasher.take(data)
        if self.done:
            self.active = False

    @property
    def done(self) -> bool:
        return all(h.done for h in self.hashers)


class BodyHashes:
    """The body hashes of one message, for the given keys; a :class:`BodySink`.

    Feed the raw body (CRLF line ends, dot-unstuffed) with :meth:`update`, in any chunks,
    then read :meth:`digest` per key. The first :meth:`digest` ends the body.
    """

    def __init__(self, keys: Iterable[BodyKey], max_body: int) -> None:
        """:param keys: the (canonicalization, hash, l=) keys wanted; repeats are one
        :param max_body: canonical bytes one key may hash at most
        :raises ValueError: an unknown canonicalization or hash, or a negative l="""
        self._hashers: dict[BodyKey, _Hasher] = {}
        by_canon: dict[str, list[_Hasher]] = {"simple": [], "relaxed": []}
        for key in keys:
            canon, name, length = key
            if key in self._hashers:
                continue
            if canon not in by_canon or name not in _HASHES or (length is not None and length < 0):
                raise ValueError(f"unusable body hash key {key!r}")
            hasher = _Hasher(name, length, max_body)
            self._hashers[key] = hasher
            by_canon[canon].append(hasher)
        self._canons = [_Canon(canon == "relaxed", hashers) for canon, hashers in by_canon.items() if hashers]
        self._finished = False
        #: raw body bytes seen
        self.total = 0

    @property
    def keys(self) -> frozenset[BodyKey]:
        return frozenset(self._hashers)

    def update(self, chunk: bytes) -> None:
        """The next raw body bytes.

        :raises ValueError: after the body ended (a :meth:`digest` was read)"""
        if self._finished:
            raise ValueError("the body has ended: a digest was read")
        self.total += len(chunk)
        for start in range(0, len(chunk), SLICE):
            piece = chunk[start:start + SLICE] if len(chunk) > SLICE else chunk
            live = False
            for canon in self._canons:
                if canon.active:
                    canon.feed(piece)
                    live = live or canon.active
            if not live:
                return  # every key has what it needs, or needs too much: nothing to do

    def digest(self, key: BodyKey) -> bytes | None:
        """The hash of ``key``'s canonical body, cut at its ``l=``; None when that needs
        more than ``max_body`` bytes (the signature is then not verified).

        :raises KeyError: a key not given to the constructor"""
        hasher = self._hashers[key]
        if not self._finished:
            self._finished = True
            for canon in self._canons:
                if canon.active:
                    canon.finish()
        return None if hasher.over else hasher.hash.digest()


def body_key(canonicalization: Literal["simple", "relaxed"] | str, algorithm: str,
             length: int | None) -> BodyKey:
    """The key for a signature's body: ``algorithm`` is its ``a=`` (``rsa-sha256``)."""
    return (canonicalization, algorithm.rpartition("-")[2], length)
