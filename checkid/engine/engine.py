"""The engine: one per process, answering ``await engine.decide(envelope)``.

It checks the input, picks the identity, and hands a :class:`Context` to the policy file's
``decide``. It knows no protocol and no process runtime: timings go to an :class:`Observer`
when one is given (the runtime's metrics exporter is one). Every decision has a deadline
(``dns.decision_timeout``); a policy that raises or returns garbage yields a 4xx, never an
exception to the caller.

Before the policy, the ``[prescreen]`` skip lists (a logged-in client, a HELO name, a sender
domain, recipients) accept a transaction at once: stage ``skip``, no DNS query. After it, in
report mode (``[policy] mode = "report"``) a refusal (REJECT, TEMPFAIL, DISCARD) is delivered
instead: an ACCEPT whose ``Authent:`` says ``would=REJECT`` and whose :attr:`Decision.would`
holds the refusal. A policy that declares the inputs it reads has its decisions memoized
(:mod:`checkid.engine.memo`): the same inputs get the same decision, without running the
policy, while every cached answer it used is valid. With ``[fleet]``, every REJECT of a client
address is counted across the fleet after the decision (:mod:`checkid.engine.fleet`: queued,
never awaited); a decision that read the fleet's counts is not memoized, and one refused by a
fleet block is memoized until the block ends at most (a new block learned, a flush or a
policy reload drops the memo). Bad input is refused in either mode: it is not a verdict on
the mail but input the engine cannot judge (no address, oversize fields), and stays bounded.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import socket
import time
from collections.abc import Callable
from typing import Protocol

from checkid.config import Config
from checkid.engine import headers, validate
from checkid.engine.checks import iplists
from checkid.engine.checks.dkim import DkimVerifier
from checkid.engine.checks.prescreen import IPScreen, SkipList
from checkid.engine.checks.reputation import RecipientThresholds
from checkid.engine.checks.spfcheck import SpfChecker
from checkid.engine.context import Auth, Context
from checkid.engine.decision import Action, BodySink, Decision, Envelope, Header
from checkid.engine.dns.cache import Cache, MemoryCache
from checkid.engine.dns.client import DEADLINE, DeadlineExceeded, DnsClient
from checkid.engine.fleet import Fleet
from checkid.engine.memo import RECORDING, DecisionMemo, Recording, RecordingCache, RecordingCounter
from checkid.engine.policy import DEFAULT_PATH, Policy, PolicyHolder
from checkid.engine.result import RANK, SPELLING, Result
from checkid.engine.services import Services
from checkid.engine.trace import Trace

log = logging.getLogger(__name__)

#: the recipient class of a ``skip_recipients`` entry: a thresholds key is an address or a
#: domain, never this
SKIP_CLASS = "(skip)"


def bad_input(text: str, code: int = 501, xcode: str = "5.5.4") -> Decision:
    return Decision(Action.REJECT, code, xcode, text, (), "input", "bad_input")


#: what report mode delivers instead of enforcing
_REFUSALS = frozenset((Action.REJECT, Action.TEMPFAIL, Action.DISCARD))
#: which method's result speaks for a refusal's ``Authent:`` in report mode (as the context's)
_PRECEDENCE = {r.value: rank for r, rank in RANK.items()}
#: a skipped transaction's ``Authent:`` method and result: nothing was checked
SKIPPED = Auth(Result.NONE, "SKIP")


class Observer(Protocol):
    """Who is told how long things took (the runtime's metrics exporter)."""

    def observe_decision(self, frontend: str, seconds: float) -> None:
        """One decision for ``frontend`` took ``seconds``."""

    def observe_dns(self, rdtype: str, seconds: float) -> None:
        """One DNS query of type ``rdtype`` took ``seconds`` (cache misses only)."""


class Engine:
    """The decision pipeline, its caches and its policy, for one process.

    :param policy_source: the text of the last good policy: when the policy file does not
        load, the engine starts on this instead (and watches the file for a good edit);
        without it such a file raises :class:`~checkid.errors.PolicyError`
    """

    def __init__(self, config: Config | None = None, *, cache: Cache | None = None,
                 clock: Callable[[], float] = time.monotonic, observer: Observer | None = None,
                 policy_source: bytes | None = None) -> None:
        self.config = config = config or Config()
        self.clock = clock
        #: plain counters keyed (name, *labels) (checkid.runtime.metrics.COUNTERS)
        self.counts: RecordingCounter = RecordingCounter()
        self.observer = observer
        self.cache = cache if cache is not None else MemoryCache(config.dns.cache_size)
        # the stages' view of the cache: it tells a decision being memoized what it used
        recorded = RecordingCache(self.cache)
        dns = DnsClient(config.dns, recorded, clock, self.counts,
                        observer.observe_dns if observer is not None else None)
        authserv_id = config.headers.authserv_id or socket.getfqdn()
        path = config.reputation.recipient_thresholds
        #: the fleet state (``[fleet]``), None when off; the runtime starts it in its loop
        self.fleet = Fleet(config.fleet, self.counts, clock) if config.fleet.enabled else None
        if self.fleet is not None:
            self.fleet.on_block = self.forget_decisions  # a memoized decision may be for the address blocked
        self.services = Services(
            config=config,
            dns=dns,
            prescreen=IPScreen(
                "prescreen", tuple(iplists.load_file(f) for f in config.prescreen.block_files),
                config.prescreen.dnsbl, self.counts,
                allow=iplists.from_networks(config.prescreen.allow, "allow list"), fleet=self.fleet,
            ),
            blacklist=IPScreen(
                "blacklist", tuple(iplists.load_file(f) for f in config.blacklist.block_files),
                config.blacklist.dnsbl, self.counts,
            ),
            spf=SpfChecker(dns, recorded, clock, authserv_id, config.dns.max_ttl),
            dkim=DkimVerifier(dns, config.dkim, self.counts),
            thresholds=RecipientThresholds.load(path) if path else RecipientThresholds(),
            counts=self.counts,
            authserv_id=authserv_id,
            fleet=self.fleet,
        )
        self.policy = PolicyHolder(config.policy.path or DEFAULT_PATH, policy_source)
        #: the memo of the policy serving, when it declares its inputs; remade when it changes
        self._memo: DecisionMemo | None = None
        self._memo_policy: Policy | None = None
        self.skip = SkipList(config.prescreen)
        self._report = config.policy.mode == "report"
        self._hash_addresses = config.policy.log_addresses == "hashed"
        self._hash_key = config.policy.log_hash_key.encode()
        self._remove = frozenset(n.lower() for n in config.headers.remove)
        #: the authserv-ids that are this site's; "" (none can be read) fails closed
        self._site_ids = frozenset(i.lower() for i in ("", authserv_id, *config.headers.site_ids))

    def forget_decisions(self) -> None:
        """Drop every memoized decision: after a cache flush (whole or of one name), or a
        change of what decisions read besides DNS (the recipient thresholds)."""
        if self._memo is not None:
            self._memo.clear()

    def _memo_for(self, policy: Policy) -> DecisionMemo | None:
        """The memo for ``policy``: a new one when the policy changed (a reload)."""
        if policy is not self._memo_policy:
            self._memo_policy = policy
            self._memo = None if policy.inputs is None else DecisionMemo(
                policy.inputs, self.services.thresholds.key_for)
        return self._memo

    def recipient_class(self, rcpt: str) -> str:
        """The class of ``rcpt`` ("" for most): recipients of one class share a decision,
        so a front-end may ask once for all of them."""
        if self.skip.recipient(rcpt):
            return SKIP_CLASS
        return self.services.thresholds.key_for(rcpt)

    def log_address(self, address: str) -> str:
        """How the decision log shows ``address`` (``[policy] log_addresses``): as it is, or
        the first 16 hex digits of the SHA-256 of its lower-case form, keyed (HMAC) with
        ``log_hash_key`` when one is set."""
        if not self._hash_addresses or not address:
            return address
        data = address.lower().encode("utf-8", "surrogateescape")
        if self._hash_key:
            return hmac.new(self._hash_key, data, hashlib.sha256).hexdigest()[:16]
        return hashlib.sha256(data).hexdigest()[:16]

    def forged_header(self, name: str, value: str) -> bool:
        """Whether an incoming message's header field is one a client may not bring
        (``[headers] remove``; ``Authentication-Results`` only when it names this site:
        ``authserv_id`` or one of ``site_ids``)."""
        key = name.strip().lower()
        if key not in self._remove:
            return False
        if key == "authentication-results":
            return headers.authserv_id_of(value) in self._site_ids
        return True

    def body_digest(self, headers: tuple[tuple[str, str], ...]) -> BodySink | None:
        """Where a front-end streams the body of a message whose end-of-data decision is due
        (the DKIM body hashes its signatures need), None when no signature needs one."""
        return self.services.dkim.body_digest(headers)

    def content_needed(self) -> tuple[bool, bool]:
        """``(headers, body)``: whether a decision may read a message's header fields, and its
        body, so a front-end may leave them out (the milter asks the MTA not to send them, per
        connection). Both when the serving policy may run DKIM: its ``METHOD_LIST`` names DKIM,
        or it has no such table (what it runs is then unknown); the headers also when ``[headers]
        remove`` names any (forged headers are removed)."""
        table = getattr(self.policy.current.module, "METHOD_LIST", None)
        dkim = not isinstance(table, dict) or "DKIM" in table
        return dkim or bool(self._remove), dkim

    async def decide(self, envelope: Envelope, trace: Trace | None = None, frontend: str = "inprocess") -> Decision:
        """Decide one transaction. Never raises for bad input or a failing policy.

        ``frontend`` only labels the metrics (decisions by front-end, latency).
        """
        start = time.perf_counter()
        decision = await self._decide(envelope, trace)
        if self._report and decision.action in _REFUSALS and decision.stage != "input":
            self.counts[("report_mode_refusals", frontend, decision.action.value)] += 1
            decision = self._delivered(decision, envelope)
            if trace is not None:
                trace.add("report", f"report mode: {decision.would.action.value if decision.would else ''} "
                                    "not enforced, delivered")
        self.counts[("decisions", frontend, decision.action.value, decision.stage)] += 1
        if self.observer is not None:
            self.observer.observe_decision(frontend, time.perf_counter() - start)
        return decision

    async def _decide(self, envelope: Envelope, trace: Trace | None) -> Decision:
        ctx = self._context(envelope, trace)
        if isinstance(ctx, Decision):
            self.counts[("bad_input",)] += 1
            # bounded: the client chose these strings (a 1.9 MB "address" made 1.9 MB lines)
            log.info("bad input: %s (ip=%r id=%r)", ctx.text, envelope.ip and envelope.ip[:80],
                     envelope.id and envelope.id[:validate.MAX_DOMAIN + 1])
            if trace is not None:
                trace.add("input", ctx.text)
            return ctx
        skipped = self.skip.reason(envelope)
        if skipped:
            self.counts[("skipped", skipped)] += 1
            ctx.log("skip", f"{skipped}: accepted unchecked")
            return ctx.accept("skip", SKIPPED, reason=skipped)
        policy = self.policy.current
        memo = self._memo_for(policy)
        recording: Recording | None = None
        if memo is not None and trace is None and not envelope.headers and envelope.body is None:
            key = memo.key(ctx)
            kept = memo.get(key, self.clock(), self.counts)
            if kept is not None:
                if self.fleet is not None and kept.action is Action.REJECT:
                    self.fleet.rejected(ctx.ip)  # a no-op while a block holds the client
                return kept
            recording = Recording()
        token = DEADLINE.set(asyncio.get_running_loop().time() + self.config.dns.decision_timeout)
        recording_token = RECORDING.set(recording)
        try:
            decision = await policy.decide(ctx)
        except DeadlineExceeded:
            decision = ctx.temperror("deadline")
        except Exception:
            self.counts[("policy_errors",)] += 1
            log.exception("policy %s failed for ip=%s id=%s", policy.path, ctx.ip_text, ctx.identity)
            return Decision(Action.TEMPFAIL, 451, "4.3.5", "Local policy error, try again later", (),
                            "policy", "policy_error")
        finally:
            RECORDING.reset(recording_token)
            DEADLINE.reset(token)
        if not isinstance(decision, Decision):
            self.counts[("policy_errors",)] += 1
            log.error("policy %s returned %r, not a Decision", policy.path, type(decision).__name__)
            return Decision(Action.TEMPFAIL, 451, "4.3.5", "Local policy error, try again later", (),
                            "policy", "policy_error")
        if self.fleet is not None:
            if decision.action is Action.REJECT and not ctx.fleet_blocked:
                self.fleet.rejected(ctx.ip)
            if ctx.fleet_read:
                return decision
            if ctx.fleet_blocked and recording is not None:
                # kept no longer than the block: once it lapses the client is asked about again
                recording.expires = min(recording.expires, ctx.fleet_expires)
        if recording is not None and memo is not None:
            memo.put(key, decision, recording, self.clock())
        return decision

    def _delivered(self, refusal: Decision, env: Envelope) -> Decision:
        """What report mode delivers for ``refusal``: an ACCEPT with checkid's headers (those of
        the refusal, which has none by default, else made here), ``would=`` added to
        ``Authent:``; the refusal itself in :attr:`Decision.would`."""
        hdrs = refusal.headers
        if not hdrs or hdrs[0].label != "Authent:":
            results = [(m, r) for m, r in refusal.results if r in _PRECEDENCE]
            method, result = min(results, key=lambda mr: _PRECEDENCE[mr[1]]) if results else ("NONE", "NONE")
            ip = validate.parse_ip(env.ip or "")
            made = [headers.authent(str(ip) if ip is not None else env.ip or "-", refusal.identity or None,
                                    method, result, "")]
            if self.config.headers.authentication_results:
                made.append(headers.authentication_results(self.services.authserv_id, [
                    headers.MethodReport(m, SPELLING[Result(r)]) for m, r in results]))
            hdrs = (*made, *hdrs)
        first = Header(hdrs[0].label, f"{hdrs[0].text} would={refusal.action.value}")
        return Decision(Action.ACCEPT, 250, "", "Sender OK", (first, *hdrs[1:]), refusal.stage, refusal.reason,
                        refusal.results, refusal.identity, refusal.identity_source, would=refusal)

    def _context(self, env: Envelope, trace: Trace | None) -> Context | Decision:
        """The context for a valid envelope, or the decision that refuses a bad one."""
        if not env.ip:
            return bad_input("No client address given", 550, "5.7.0")
        ip = validate.parse_ip(env.ip) if len(env.ip) <= 64 else None
        if ip is None:
            return bad_input(f"Unparseable client address {env.ip[:64]!r}", 550, "5.7.0")
        # written out, not looped over: this runs for every transaction
        if env.helo is not None and len(env.helo) > validate.MAX_ADDRESS:
            return bad_input(f"HELO name longer than {validate.MAX_ADDRESS} characters")
        if env.sender is not None and len(env.sender) > validate.MAX_ADDRESS:
            return bad_input(f"sender address longer than {validate.MAX_ADDRESS} characters")
        if len(env.rcpts) > validate.MAX_RCPTS or max(map(len, env.rcpts), default=0) > validate.MAX_ADDRESS:
            return bad_input("Too many or oversize recipients", 552, "5.5.3")
        if env.id:  # an empty ID is no ID
            identity = validate.domain(env.id) if len(env.id) <= validate.MAX_DOMAIN + 1 else None
            if identity is None:
                return bad_input(f"Invalid ID {env.id[:80]!r}: not a domain name")
            return Context(self.services, env, ip, identity, "id", trace)
        candidates: list[tuple[str, str]] = []
        for source in self.config.identity.fallback:
            if source == "helo" and env.helo:
                identity = validate.domain(env.helo)
            elif source == "mail_from" and env.sender:
                identity = validate.address_domain(env.sender)
            else:
                continue
            if identity is not None and all(identity != known for _, known in candidates):
                candidates.append((source, identity))
        if not candidates:
            return Context(self.services, env, ip, None, "none", trace)
        # the first valid source until ctx.registry() picks the one with a record ([identity] select)
        first_source, first = candidates[0]
        return Context(self.services, env, ip, first, first_source, trace, tuple(candidates))
