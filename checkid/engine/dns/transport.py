"""UDP queries on a few persistent sockets per nameserver, answers matched to their queries.

dnspython's async resolver opens, connects, registers and closes a socket for every query;
on this machine that is most of the 0.5 ms of CPU a cold query costs. Here each nameserver
gets a small pool of connected UDP sockets (:data:`SOCKETS_PER_SERVER`), kept for the
process and used in turn; every query takes a random 16-bit id unique on its socket and
waits on a future that the socket's reader completes. dnspython still builds and parses the
messages, and its resolver (:class:`PooledNameserver` plugs in as a nameserver) still
decides retries, back-off, failover and the TCP retry on a truncated answer.

**Matching.** An answer completes a query only when it comes from the nameserver the socket
is connected to (the kernel drops other sources; the address is checked again), carries the
query's id, and :meth:`dns.message.Message.is_response` accepts it (QR set, same opcode, same
question). Anything else (an unknown id, another question, a malformed datagram, a truncated
answer to another question) is dropped and counted as ``("dns_answers_ignored", reason)``,
and the query keeps waiting, as dnspython's ``ignore_unexpected``/``ignore_errors`` do.

**Unreachable servers.** The sockets are connected so that the kernel reports an ICMP port or
host unreachable on them: the error fails every query waiting on that socket at once (they
all went to the same server) with the ``OSError``, which makes dnspython drop that server from
the query's list and ask the next. Each query so failed counts as ``("dns_unreachable",)``.

**Source ports (RFC 5452).** One fixed socket would give an off-path spoofer a known port and
only the 16-bit id to guess. A pool of sockets, each replaced by a fresh one (a new random
ephemeral port from the kernel) after :data:`QUERIES_PER_SOCKET` queries, keeps the port
unknown and moving at the cost of one socket per that many queries, where dnspython paid one
per query. Against a blind guess this gives about 16 + log2(28,000 / 4) ≈ 29 bits instead of
30.8 for a fresh port per query; the stub talks to its recursive resolver (on the host or the
LAN), the path a spoofer reaches least, and the resolver's own port randomisation guards the
Internet side.
"""
from __future__ import annotations

import asyncio
import secrets
import socket
import weakref
from collections import Counter

import dns.asyncbackend
import dns.exception
import dns.inet
import dns.message
import dns.nameserver

#: connected sockets per nameserver, used in turn
SOCKETS_PER_SERVER = 4
#: queries one socket sends before a fresh one (a new random source port) takes its place
QUERIES_PER_SOCKET = 256
#: queries waiting on one nameserver at once; more wait for a slot within their timeout
#: (ids are unique per socket, so each socket holds far fewer than its 65,536 ids)
MAX_OUTSTANDING = 4096
#: the largest datagram read: EDNS payloads stay below it (RFC 6891 §6.2.3)
MAX_DATAGRAM = 65535


class _Query:
    """One query waiting on a socket: the request it must answer and its future."""

    __slots__ = ("request", "future", "one_rr_per_rrset", "ignore_trailing")

    def __init__(self, request: dns.message.Message, future: asyncio.Future[dns.message.Message],
                 one_rr_per_rrset: bool, ignore_trailing: bool) -> None:
        self.request = request
        self.future = future
        self.one_rr_per_rrset = one_rr_per_rrset
        self.ignore_trailing = ignore_trailing


class _Socket:
    """One connected, non-blocking UDP socket to a nameserver, read by the loop's reader."""

    def __init__(self, loop: asyncio.AbstractEventLoop, destination: tuple[str, int],
                 counts: Counter[tuple[str, ...]]) -> None:
        family = dns.inet.af_for_address(destination[0])
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self.sock.setblocking(False)
            self.sock.connect(destination)  # UDP: no packet sent, only the peer fixed
            self.peer = self.sock.getpeername()
            loop.add_reader(self.sock.fileno(), self._readable)
        except BaseException:
            self.sock.close()
            raise
        self.loop = loop
        self.counts = counts
        self.pending: dict[int, _Query] = {}
        #: queries sent; past QUERIES_PER_SOCKET the pool replaces this socket
        self.sent = 0
        self.retired = False

    def send(self, request: dns.message.Message, one_rr_per_rrset: bool,
             ignore_trailing: bool) -> asyncio.Future[dns.message.Message]:
        """Send ``request`` under a fresh id; the future gets the answer or the socket's error."""
        qid = secrets.randbits(16)
        while qid in self.pending:
            qid = secrets.randbits(16)
        request.id = qid
        future: asyncio.Future[dns.message.Message] = self.loop.create_future()
        self.pending[qid] = _Query(request, future, one_rr_per_rrset, ignore_trailing)
        self.sent += 1
        try:
            self.sock.send(request.to_wire())
        except BlockingIOError:
            pass  # the send buffer is full: the datagram is lost, and the try times out
        except OSError as e:  # an ICMP error from an earlier datagram, reported now
            self._unreachable(e)
        return future

    def forget(self, qid: int, future: asyncio.Future[dns.message.Message]) -> None:
        """The query with ``qid`` no longer waits (answered, timed out or cancelled)."""
        query = self.pending.get(qid)
        if query is not None and query.future is future:
            del self.pending[qid]
        if self.retired and not self.pending:
            self.close()

    def _readable(self) -> None:
        while True:
            try:
                data, source = self.sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # ICMP port or host unreachable: this socket is done
                self._unreachable(e)
                return
            self._received(data, source)

    def _received(self, data: bytes, source: tuple[str, int]) -> None:
        if source[:2] != self.peer[:2]:
            self._ignored("source")
            return
        query = self.pending.get(int.from_bytes(data[:2], "big")) if len(data) >= 12 else None
        if query is None:
            self._ignored("id")
            return
        try:
            response = dns.message.from_wire(data, one_rr_per_rrset=query.one_rr_per_rrset,
                                             ignore_trailing=query.ignore_trailing, raise_on_truncation=True)
        except dns.message.Truncated as e:
            # TC set: a real answer to this question makes the resolver retry over TCP; a
            # spoofed one must not make it give up on UDP
            if query.request.is_response(e.message()):
                self._complete(query, None, e)
            else:
                self._ignored("question")
            return
        except Exception:  # noqa: BLE001 - malformed: keep waiting, as dnspython's ignore_errors
            self._ignored("malformed")
            return
        if not query.request.is_response(response):
            self._ignored("question")
            return
        self._complete(query, response, None)

    def _complete(self, query: _Query, response: dns.message.Message | None, error: Exception | None) -> None:
        del self.pending[query.request.id]
        if not query.future.done():
            if error is not None:
                query.future.set_exception(error)
            else:
                query.future.set_result(response)  # type: ignore[arg-type]

    def _unreachable(self, error: OSError) -> None:
        # every query here went to the same server: the unreachable holds for all of them.
        # The socket is closed, and the pool opens a new one for the next query: libuv stops
        # polling a descriptor that reported an error (POLLERR), so this one would never be
        # read again and every later query on it would wait out its timeout.
        waiting, self.pending = self.pending, {}
        for query in waiting.values():
            if not query.future.done():
                self.counts[("dns_unreachable",)] += 1
                query.future.set_exception(error)
        self.close()

    def _ignored(self, reason: str) -> None:
        self.counts[("dns_answers_ignored", reason)] += 1

    def close(self) -> None:
        """Stop reading and close the socket (queries still waiting get ``ConnectionAbortedError``)."""
        if self.sock.fileno() < 0:
            return
        if not self.loop.is_closed():
            self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        waiting, self.pending = self.pending, {}
        for query in waiting.values():
            if not query.future.done():
                query.future.set_exception(ConnectionAbortedError("DNS socket closed"))


class _ServerPool:
    """The sockets to one nameserver, and the bound on queries outstanding to it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, destination: tuple[str, int],
                 counts: Counter[tuple[str, ...]]) -> None:
        self.loop = loop
        self.destination = destination
        self.counts = counts
        self.sockets: list[_Socket | None] = [None] * SOCKETS_PER_SERVER
        #: replaced sockets still waiting for answers; closed once none is left
        self.draining: set[_Socket] = set()
        self.turn = 0
        self.slots = asyncio.Semaphore(MAX_OUTSTANDING)

    def socket(self) -> _Socket:
        """The next socket in turn, opened (or replaced, once it has sent its share) first."""
        self.turn = (self.turn + 1) % SOCKETS_PER_SERVER
        sock = self.sockets[self.turn]
        if sock is None or sock.sent >= QUERIES_PER_SOCKET or sock.sock.fileno() < 0:
            if sock is not None:
                sock.retired = True
                if sock.pending:
                    self.draining = {s for s in self.draining if s.sock.fileno() >= 0}
                    self.draining.add(sock)
                else:
                    sock.close()
            sock = self.sockets[self.turn] = _Socket(self.loop, self.destination, self.counts)
        return sock

    def close(self) -> None:
        for sock in [*self.sockets, *self.draining]:
            if sock is not None:
                sock.close()
        self.sockets = [None] * SOCKETS_PER_SERVER
        self.draining.clear()


class UdpTransport:
    """Every nameserver's socket pool for one process and its running loop.

    Made with the DNS client; the sockets open on the first query and follow the running
    loop (a new loop, as each test's, gets new ones). :meth:`close` ends them; so does the
    transport's collection, so an unclosed client leaks no descriptor.
    """

    def __init__(self, counts: Counter[tuple[str, ...]]) -> None:
        self.counts = counts
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pools: dict[tuple[str, int], _ServerPool] = {}
        self._finalizer = weakref.finalize(self, _close_pools, self._pools)

    async def query(self, request: dns.message.Message, address: str, port: int, timeout: float,
                    one_rr_per_rrset: bool = False, ignore_trailing: bool = False) -> dns.message.Message:
        """Send ``request`` over UDP to ``address``:``port`` and return the matching answer.

        :raises dns.exception.Timeout: no matching answer within ``timeout`` seconds
        :raises dns.message.Truncated: the answer has TC set (the caller retries over TCP)
        :raises OSError: the kernel reported the server unreachable
        """
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self.close()
            self._loop = loop
        pool = self._pools.get((address, port))
        if pool is None:
            pool = self._pools[(address, port)] = _ServerPool(loop, (address, port), self.counts)
        expires = loop.time() + timeout
        if pool.slots.locked():
            try:
                await asyncio.wait_for(pool.slots.acquire(), expires - loop.time())
            except TimeoutError:
                raise dns.exception.Timeout(timeout=timeout) from None
        else:
            await pool.slots.acquire()  # a free slot: returns without suspending
        try:
            sock = pool.socket()
            future = sock.send(request, one_rr_per_rrset, ignore_trailing)
            qid = request.id
            timer = loop.call_at(expires, _expire, future, timeout)
            try:
                return await future
            finally:
                timer.cancel()
                sock.forget(qid, future)
        finally:
            pool.slots.release()

    def close(self) -> None:
        """Close every socket (on a new loop, or at the client's end)."""
        _close_pools(self._pools)


def _close_pools(pools: dict[tuple[str, int], _ServerPool]) -> None:
    for pool in pools.values():
        pool.close()
    pools.clear()


def _expire(future: asyncio.Future[dns.message.Message], timeout: float) -> None:
    if not future.done():
        future.set_exception(dns.exception.Timeout(timeout=timeout))


class PooledNameserver(dns.nameserver.Do53Nameserver):
    """A Do53 nameserver whose UDP queries go through a :class:`UdpTransport` (TCP as dnspython's)."""

    def __init__(self, address: str, port: int, transport: UdpTransport) -> None:
        super().__init__(address, port)
        self.transport = transport

    async def async_query(self, request: dns.message.QueryMessage, timeout: float, source: str | None,
                          source_port: int, max_size: bool, backend: dns.asyncbackend.Backend,
                          one_rr_per_rrset: bool = False, ignore_trailing: bool = False) -> dns.message.Message:
        if max_size:  # TCP: the retry after a truncated answer
            return await super().async_query(request, timeout, source, source_port, max_size, backend,
                                             one_rr_per_rrset, ignore_trailing)
        return await self.transport.query(request, self.address, self.port, timeout, one_rr_per_rrset,
                                          ignore_trailing)
