"""Fleet state on Redis (``[fleet]``): heavy senders learned from every host's rejections, and
cache flushes that reach every host.

No decision waits on Redis. The learned blocks are a local dict (subject → expiry), read by
the pre-screen in a dict probe; Redis keeps it in step through pub/sub (a block is SET with an
expiry and PUBLISHed; at start and after every reconnection the worker loads the current
blocks with a bounded SCAN). Rejections are counted after the decision: queued (bounded: past
``queue_size`` they are dropped and counted), sent once per loop turn in one pipeline, each
Redis call bounded by ``budget_ms``. A call that fails or runs out of budget is counted
(``fleet_fallbacks{op}``) and the worker carries on with what it knows; a lost connection is
re-made in the background with backoff, and :attr:`Fleet.up` says whether the fleet is live.

Keys (``P`` is ``key_prefix``; a *subject* is ``ip:<address>`` or ``net:<network>``, the
client's /24 or /64):

- ``P rej:<subject>:<bucket>``: rejections of the subject in one step of the window (an
  integer, INCRBY; it expires one window and one step after its step began). The count over
  the window is the sum of the window's ``buckets`` steps (one MGET).
- ``P block:<subject>``: a learned block (SET with EX ``block_seconds``; its value is the
  count that set it).
- channel ``P events``: ``block <subject> <seconds> <count>`` and ``flush [NAME]``.

Bucketed counters rather than a sorted set of rejections: a sender rejected 100,000 times in
the window costs ``buckets`` small integers, not 100,000 members to insert and trim, and one
INCRBY carries any number of rejections of a loop turn. The price is a window that moves in
steps of ``window / buckets`` seconds, which a threshold does not notice.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cachetools

from checkid.config.fleet import FleetConfig
from checkid.engine.checks.iplists import IPAddress
from checkid.throttle import LogThrottle, left_out

log = logging.getLogger(__name__)

#: the list name a fleet block reports (the pre-screen's ``ListResult.list_name``)
FLEET_LIST = "fleet block"
#: keys one SCAN call may return, and calls one load may make (a bound on its time)
SCAN_COUNT = 1000
SCAN_CALLS = 1000
#: the longest :meth:`Fleet.close` waits for its tasks
CLOSE_SECONDS = 2.0
#: reconnection backoff, seconds: first wait, cap
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 2.0
#: subjects whose last learned counts a worker remembers (what ``ctx.fleet_rejections`` reads)
LEARNED_SIZE = 65536


@dataclass(frozen=True, slots=True)
class FleetCounts:
    """The rejections the fleet counted for a client within the window, as this worker last
    learned them (0: none learned; a worker learns a subject's count when it sends one)."""

    #: of the client address
    address: int = 0
    #: of its /24 (IPv4) or /64 (IPv6)
    prefix: int = 0


NO_COUNTS = FleetCounts()


def subjects(ip: IPAddress) -> tuple[str, str]:
    """The address subject and the prefix subject of ``ip``."""
    if ip.version == 4:
        text = str(ip)
        return "ip:" + text, "net:" + text.rpartition(".")[0] + ".0/24"
    net = ipaddress.IPv6Address(int(ip) >> 64 << 64)
    return f"ip:{ip}", f"net:{net}/64"


# -- the channel's messages ------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Block:
    subject: str
    seconds: int
    count: int


@dataclass(frozen=True, slots=True)
class Flush:
    #: the DNS name to drop, None for everything
    name: str | None


def encode_event(event: Block | Flush) -> bytes:
    if isinstance(event, Block):
        return f"block {event.subject} {event.seconds} {event.count}".encode()
    return b"flush" if event.name is None else f"flush {event.name}".encode()


def decode_event(data: bytes) -> Block | Flush | None:
    """The event in a channel message, None for one this version does not know."""
    try:
        parts = data.decode("ascii").split(" ")
    except UnicodeDecodeError:
        return None
    if parts[0] == "block" and len(parts) == 4 and parts[1].startswith(("ip:", "net:")):
        try:
            seconds, count = int(parts[2]), int(parts[3])
        except ValueError:
            return None
        return Block(parts[1], seconds, count) if seconds > 0 and count >= 0 else None
    if parts[0] == "flush" and len(parts) <= 2:
        return Flush(parts[1] if len(parts) == 2 and parts[1] else None)
    return None


def connect(config: FleetConfig) -> Any:
    """A ``redis.asyncio`` client for ``config`` (imported here: a site without ``[fleet]``
    never loads redis)."""
    import redis.asyncio
    import redis.asyncio.sentinel

    options: dict[str, Any] = {"socket_connect_timeout": 1.0, "retry_on_timeout": False}
    if config.sentinels:
        from checkid.config.addresses import parse_hostport

        sentinel = redis.asyncio.sentinel.Sentinel([parse_hostport(s, 26379) for s in config.sentinels], **options)
        return sentinel.master_for(config.service, db=config.db)
    return redis.asyncio.from_url(config.redis, **options)


class Fleet:
    """One worker's share of the fleet state.

    :param on_block: called when a block is learned (the engine forgets its memoized decisions)
    :param on_flush: called with a flush event's name (None: everything) from any host
    :param wall: the wall clock, shared by every host: it numbers the window's steps
    """

    def __init__(self, config: FleetConfig, counts: Counter[tuple[str, ...]],
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.config = config
        self.counts = counts
        self.clock = clock
        self.wall = wall
        self.on_block: Callable[[], None] | None = None
        self.on_flush: Callable[[str | None], None] | None = None
        #: subject -> expiry on ``clock``: what the pre-screen reads
        self.blocks: dict[str, tuple[float, int]] = {}
        self.learned: cachetools.LRUCache[str, int] = cachetools.LRUCache(LEARNED_SIZE)
        #: True while subscribed and loaded: rejections are counted, blocks arrive
        self.up = False
        p = config.key_prefix
        self.channel = f"{p}events"
        self._block_key = f"{p}block:"
        self._rej_key = f"{p}rej:"
        self._step = max(1, config.window // config.buckets)
        self._budget = config.budget_ms / 1000
        self._queue: deque[IPAddress] = deque()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        #: set by :meth:`close`: the tasks' loops end even when a cancellation is lost
        self._closed = False
        self._client: Any = None
        self._throttle = LogThrottle()

    # -- the decision's side: no I/O -------------------------------------------------
    def blocked(self, ip: IPAddress) -> tuple[str, int] | None:
        """The subject (``ip:…`` or ``net:…``) that blocks ``ip`` and the count that blocked
        it, or None. A dict probe or two; expired blocks are dropped as they are found."""
        found = self._blocking(ip)
        return None if found is None else (found[0], found[2])

    def expiry(self, ip: IPAddress) -> float | None:
        """When (on ``clock``) the block that :meth:`blocked` finds for ``ip`` ends, None when
        none holds: how long a decision refused by it stays valid."""
        found = self._blocking(ip)
        return None if found is None else found[1]

    def _blocking(self, ip: IPAddress) -> tuple[str, float, int] | None:
        if not self.blocks:
            return None
        now = self.clock()
        for subject in subjects(ip):
            entry = self.blocks.get(subject)
            if entry is not None:
                if entry[0] > now:
                    return subject, entry[0], entry[1]
                del self.blocks[subject]
        return None

    def rejections(self, ip: IPAddress) -> FleetCounts:
        """What this worker last learned of the fleet's counts for ``ip``."""
        if not self.learned:
            return NO_COUNTS
        address, prefix = subjects(ip)
        return FleetCounts(self.learned.get(address, 0), self.learned.get(prefix, 0))

    def rejected(self, ip: IPAddress) -> None:
        """Count one rejection of ``ip``: queued, sent with the others of this loop turn.

        Not while a block holds ``ip`` (whichever stage refused it): a held subject is never
        blocked anew, so such counts could only block it again the moment its block lapses,
        and a block is meant to lapse after ``block_seconds`` even while the sender insists.
        This also lets a memoized fleet-block refusal be served without telling it apart."""
        if self.blocks and self._blocking(ip) is not None:
            return
        if not self.up:
            self.counts[("fleet_fallbacks", "count")] += 1
            return
        if len(self._queue) >= self.config.queue_size:
            self.counts[("fleet_rejections_dropped",)] += 1
            return
        self._queue.append(ip)
        self._wake.set()

    def learn(self, subject: str, seconds: float, count: int) -> None:
        """Block ``subject`` for ``seconds`` from now (locally)."""
        if subject not in self.blocks and len(self.blocks) >= self.config.max_blocks:
            self._fallback("max_blocks", "fleet: %d blocks held, %s not learned", len(self.blocks), subject)
            return
        self.blocks[subject] = (self.clock() + seconds, count)
        self.counts[("fleet_blocks_learned", subject.partition(":")[0])] += 1
        if self.on_block is not None:
            self.on_block()

    # -- background --------------------------------------------------------------------
    async def start(self) -> None:
        """Start following the fleet (in the worker's loop). Returns at once: connecting,
        loading and subscribing happen in the background, retried until they work."""
        self._client = connect(self.config)
        self._closed = False
        self._tasks = [asyncio.create_task(self._follow(), name="fleet-follow"),
                       asyncio.create_task(self._sender(), name="fleet-send")]

    async def close(self) -> None:
        """Stop following and sending, within :data:`CLOSE_SECONDS`. redis-py can swallow a
        cancellation that arrives while it reads a reply (the task then goes on with its
        loop), so the loops also end on :attr:`_closed`, and a task that still does not end
        is left behind rather than waited for."""
        self._closed = True
        self._wake.set()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=CLOSE_SECONDS)
            if pending:
                log.warning("fleet: %d task(s) did not stop within %g s; left behind", len(pending),
                            CLOSE_SECONDS)
        self._tasks = []
        self.up = False
        if self._client is not None:
            try:
                await asyncio.wait_for(self._client.aclose(), 1.0)
            except Exception:  # closing a dead connection
                pass

    async def publish(self, event: Block | Flush) -> bool:
        """Publish ``event`` on the channel, within the budget; False when it could not be."""
        try:
            async with asyncio.timeout(self._budget):
                await self._client.publish(self.channel, encode_event(event))
            return True
        except Exception as e:
            self._fallback("publish", "fleet: publish failed: %s", _why(e))
            return False

    def _fallback(self, op: str, message: str, *args: object) -> None:
        self.counts[("fleet_fallbacks", op)] += 1
        suppressed = self._throttle.ready(time.monotonic())
        if suppressed is not None:
            log.warning(message + "%s", *args, left_out(suppressed))

    async def _follow(self) -> None:
        """Subscribe, load the blocks, apply the channel's events; on any failure, local-only
        until the next attempt (backoff doubling to :data:`BACKOFF_MAX`)."""
        backoff = BACKOFF_FIRST
        while not self._closed:
            pubsub = self._client.pubsub()
            try:
                async with asyncio.timeout(max(self._budget, 1.0)):  # a connection, not a decision's call
                    await pubsub.subscribe(self.channel)
                if await self._load():
                    self.up = True
                    backoff = BACKOFF_FIRST
                    log.info("fleet: following %s (%d blocks)", self.channel, len(self.blocks))
                    while not self._closed:
                        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                        if message is not None and message.get("type") == "message":
                            self._apply(message["data"])
            except asyncio.CancelledError:
                await _quietly(pubsub.aclose())
                raise
            except Exception as e:
                self._fallback("subscribe", "fleet: lost Redis (%s): local-only until it is back", _why(e))
            if self.up:
                self.up = False
                self._queue.clear()
            await _quietly(pubsub.aclose())
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _load(self) -> bool:
        """Every block Redis holds now, by a bounded SCAN, each SCAN and TTL call within budget."""
        cursor, calls, found = 0, 0, 0
        try:
            while True:
                async with asyncio.timeout(self._budget):
                    cursor, keys = await self._client.scan(cursor, match=self._block_key + "*", count=SCAN_COUNT)
                if keys:
                    async with asyncio.timeout(self._budget):
                        pipe = self._client.pipeline(transaction=False)
                        for key in keys:
                            pipe.pttl(key)
                            pipe.get(key)
                        replies = await pipe.execute()
                    for i, key in enumerate(keys):
                        ttl, value = replies[2 * i], replies[2 * i + 1]
                        if ttl > 0:
                            subject = _text(key)[len(self._block_key):]
                            self.learn(subject, ttl / 1000, _int(value))
                            found += 1
                calls += 1
                if cursor == 0 or calls >= SCAN_CALLS:
                    return True
        except Exception as e:
            self._fallback("load", "fleet: loading the blocks failed: %s", _why(e))
            return False

    def _apply(self, data: bytes) -> None:
        event = decode_event(data)
        if isinstance(event, Block):
            current = self.blocks.get(event.subject)
            if current is None or current[0] < self.clock() + event.seconds:
                self.learn(event.subject, event.seconds, event.count)
        elif isinstance(event, Flush) and self.on_flush is not None:
            self.on_flush(event.name)

    async def _sender(self) -> None:
        """Send what each loop turn queued, in one pipeline."""
        while not self._closed:
            await self._wake.wait()
            self._wake.clear()
            batch, self._queue = self._queue, deque()
            if batch and self.up:
                await self._send(batch)

    async def _send(self, batch: deque[IPAddress]) -> None:
        config = self.config
        by_subject: Counter[str] = Counter()
        for ip in batch:
            address, prefix = subjects(ip)
            if config.block_after:
                by_subject[address] += 1
            if config.block_after_prefix:
                by_subject[prefix] += 1
        if not by_subject:
            return
        step = self._step
        bucket = int(self.wall()) // step
        window = range(bucket - config.buckets + 1, bucket + 1)
        pipe = self._client.pipeline(transaction=False)
        for subject, n in by_subject.items():
            key = f"{self._rej_key}{subject}:"
            pipe.incrby(key + str(bucket), n)
            pipe.expire(key + str(bucket), config.window + step)
            pipe.mget([key + str(b) for b in window])
        try:
            async with asyncio.timeout(self._budget):
                replies = await pipe.execute()
        except Exception as e:
            self._fallback("count", "fleet: counting %d rejections failed: %s", len(batch), _why(e))
            return
        newly: list[Block] = []
        for i, subject in enumerate(by_subject):
            total = sum(_int(v) for v in replies[3 * i + 2])
            self.learned[subject] = total
            limit = config.block_after if subject.startswith("ip:") else config.block_after_prefix
            if total >= limit and subject not in self.blocks:
                newly.append(Block(subject, config.block_seconds, total))
        if not newly:
            return
        for block in newly:
            self.learn(block.subject, block.seconds, block.count)
        pipe = self._client.pipeline(transaction=False)
        for block in newly:
            pipe.set(self._block_key + block.subject, block.count, ex=block.seconds)
            pipe.publish(self.channel, encode_event(block))
        try:
            async with asyncio.timeout(self._budget):
                await pipe.execute()
        except Exception as e:
            self._fallback("block", "fleet: publishing %d blocks failed: %s", len(newly), _why(e))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _int(value: object) -> int:
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return 0


def _why(e: BaseException) -> str:
    return "over budget" if isinstance(e, TimeoutError) else (str(e) or type(e).__name__)


async def _quietly(coro: Any) -> None:
    try:
        await asyncio.wait_for(coro, 1.0)
    except Exception:
        pass
