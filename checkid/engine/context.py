"""What the policy file works with: one :class:`Context` per decision.

The context runs the pipeline's stages on request (pre-screen, registry, methods, ratings,
blacklist) and builds the decisions, so the policy file holds only the flow and its tables.
Every reply and header is built here, never as literals in the policy.

A decision may be asked twice for one message: at MAIL time, when a method that needs the
message (DKIM) is due, the context says so (:attr:`Auth.pending`) and the policy answers
CONTINUE (:meth:`Context.continue_`); at end of data the front-end asks again with the
headers and the body, and the whole flow runs again (its DNS answers now cached).
"""
from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

from checkid.engine import headers
from checkid.engine.checks import csa
from checkid.engine.checks.csa import CsaOutcome
from checkid.engine.checks.dkim import DkimOutcome, Signature
from checkid.engine.checks.iplists import IPAddress
from checkid.engine.checks.prescreen import ListResult, Verdict, reverse_name
from checkid.engine.checks.registry import Rating, Record, RegistryOutcome, RegistryResult, interpret
from checkid.engine.checks.reputation import Score, score
from checkid.engine.checks.spfcheck import SpfOutcome
from checkid.engine.decision import Action, Decision, Envelope, Header
from checkid.engine.fleet import NO_COUNTS, FleetCounts
from checkid.engine.result import RANK, SPELLING, Result
from checkid.engine.services import Services
from checkid.engine.trace import Trace
from checkid.engine.validate import address_domain, domain



@dataclass(frozen=True, slots=True)
class Auth:
    """The outcome of the authentication methods."""

    result: Result
    #: the method that gave ``result`` (``SPF1``, ``QR1``, ``CSV``, ``DKIM``, ``STOP``;
    #: ``NONE`` when none ran)
    method: str
    #: every method that ran, in order
    results: tuple[tuple[str, Result], ...] = ()
    spf: SpfOutcome | None = None
    #: True when the run stopped at a method that needs the message (``method`` names it)
    #: and the front-end will ask again at end of data: the policy answers CONTINUE
    pending: bool = False
    csa: CsaOutcome | None = None
    #: every DKIM signature's outcome, when DKIM ran
    dkim: DkimOutcome | None = None
    #: the signature that gave DKIM's result for the identity (None: no d= matched)
    dkim_signature: Signature | None = None


NO_AUTH = Auth(Result.NONE, "NONE")
_REASON = {r: r.value.lower() for r in Result}


class Context:
    """One decision's inputs, stages and reply builders, handed to the policy's ``decide``."""

    def __init__(self, services: Services, envelope: Envelope, ip: IPAddress, identity: str | None,
                 identity_source: str, trace: Trace | None,
                 candidates: tuple[tuple[str, str], ...] = ()) -> None:
        self.services = services
        self.config = services.config
        self.envelope = envelope
        self.ip = ip
        self.ip_text = str(ip)
        #: the identity the registry is asked about: the declared ID, else a fallback source's
        #: domain. Before :meth:`registry` it is the first valid fallback; with ``[identity]
        #: select = "first_with_record"`` :meth:`registry` may move it to a later source whose
        #: domain has a registry record
        self.identity = identity
        #: where the identity came from: ``id``, ``helo``, ``mail_from`` or ``none``
        self.identity_source = identity_source
        #: the valid fallback sources, ``(source, domain)`` in fallback order, duplicates
        #: dropped (empty when an ID was declared)
        self.candidates = candidates or (((identity_source, identity),) if identity is not None else ())
        self.trace = trace
        self._registry: RegistryResult | None = None
        #: whether the decision read the fleet's counts (:attr:`fleet_rejections`), which
        #: change without any expiry: the engine then does not memoize it
        self.fleet_read = False
        #: whether the pre-screen found a fleet block, and when (on the engine's clock) that
        #: block ends: the engine memoizes such a decision until then at most, and does not
        #: count its refusal as a new rejection
        self.fleet_blocked = False
        self.fleet_expires = float("inf")

    @property
    def message_known(self) -> bool:
        """Whether this is the end-of-data decision: the headers or the body are here."""
        return self.envelope.body is not None or bool(self.envelope.headers)

    @property
    def fleet_rejections(self) -> FleetCounts:
        """The rejections the fleet counted for the client address and its /24 (IPv4) or /64
        (IPv6) within ``[fleet] window``, as this worker last learned them (no Redis call;
        zeros when ``[fleet]`` is off or nothing was learned). A decision that reads them is
        not memoized."""
        fleet = self.services.fleet
        if fleet is None:
            return NO_COUNTS
        self.fleet_read = True
        return fleet.rejections(self.ip)

    def log(self, stage: str, message: str) -> None:
        if self.trace is not None:
            self.trace.add(stage, message)

    # -- stages -----------------------------------------------------------------------
    async def prescreen(self) -> ListResult:
        """Allow list, local block lists, the fleet's learned blocks, then the pre-screen DNSBLs."""
        result = await self.services.prescreen.check(self.ip, self.services.dns, self.trace)
        if result.fleet:
            self.fleet_blocked = True
            fleet = self.services.fleet
            expires = fleet.expiry(self.ip) if fleet is not None else None
            # None: the block ended in between (the clock moved): valid no longer than now
            self.fleet_expires = min(self.fleet_expires, expires if expires is not None else 0.0)
        if self.trace is not None:
            self.log("prescreen", f"{self.ip_text}: {result.verdict.name} {result.list_name} {result.reason}".rstrip())
        return result

    async def registry(self) -> RegistryResult:
        """The registry record of the identity (TXT at ``<identity>.<zone>``).

        With no declared ID and ``[identity] select = "first_with_record"``, every fallback
        source's domain is looked up at once, and the identity becomes the first (in fallback
        order) whose outcome is not "no record": a record, a parse error or a temporary
        error (a source that timed out is not skipped for a later one). When none has a
        record, the identity stays the first valid source.
        """
        if self._registry is None:
            if self.identity is None:
                self._registry = RegistryResult(RegistryOutcome.NO_RECORD, error="no identity")
            elif len(self.candidates) > 1 and self.config.identity.select == "first_with_record":
                self._registry = await self._select_identity()
            else:
                self._registry = await self._lookup(self.identity)
                self.services.counts[("registry_lookups", self._registry.outcome.value)] += 1
            if self.trace is not None:
                self.log("registry", f"{self.identity}: {self._registry.outcome.name} {self._registry.error}".rstrip())
        return self._registry

    async def _lookup(self, identity: str) -> RegistryResult:
        name = f"{identity}.{self.config.registry.zone}"
        # SPF reads the identity's TXT first: on a registry miss, ask both at once
        answer = await self.services.dns.resolve(name, "TXT", self.trace, alongside=((identity, "TXT"),))
        return interpret(answer)

    async def _select_identity(self) -> RegistryResult:
        """Look every candidate up together; keep the first that is not "no record"."""
        found = await asyncio.gather(*(self._lookup(identity) for _source, identity in self.candidates))
        for result in found:
            self.services.counts[("registry_lookups", result.outcome.value)] += 1
        chosen = next((i for i, r in enumerate(found) if r.outcome is not RegistryOutcome.NO_RECORD), 0)
        self.identity_source, self.identity = self.candidates[chosen]
        if self.trace is not None:
            if found[chosen].outcome is RegistryOutcome.NO_RECORD:
                why = "; no source has a record"
            elif chosen:
                why = "; no record for " + ", ".join(f"{name} ({src})" for src, name in self.candidates[:chosen])
            else:
                why = ""
            self.log("identity", f"{self.identity} (from {self.identity_source}){why}")
        return found[chosen]

    async def authenticate(self, record: Record, method_list: Mapping[str, tuple[int, int]]) -> Auth:
        """Run the methods the record offers, in the site's order, within each query budget.

        ``method_list`` maps a method to ``(preferred order, most DNS queries allowed)``;
        methods with the same order run in the order the record lists them. The first PASS
        ends the run. DKIM needs the message: before end of data the run stops there with
        an :attr:`Auth.pending` result when the front-end will ask again, and skips DKIM
        when it cannot (``Envelope.message_follows`` False).
        """
        if record.stop:
            self.log("methods", "opt=stop:all: no server may use this ID")
            return Auth(Result.FAIL, "STOP", (("STOP", Result.FAIL),))
        offered: list[tuple[str, int | None]] = [("QR1", 0)] if record.addresses is not None else []
        offered += [(m.name, m.cost) for m in record.methods]
        plan = sorted(
            ((method_list[name][0], pos, name, cost) for pos, (name, cost) in enumerate(offered) if name in method_list),
            key=lambda t: (t[0], t[1]),
        )
        results: list[tuple[str, Result]] = []
        best, best_method = Result.NONE, "NONE"
        spf_outcome: SpfOutcome | None = None
        csa_outcome: CsaOutcome | None = None
        dkim_outcome: DkimOutcome | None = None
        signature: Signature | None = None
        for _order, _pos, name, cost in plan:
            allowed = method_list[name][1]
            if cost is not None and cost > allowed:
                self.log("methods", f"{name}: skipped, needs {cost} queries, site allows {allowed}")
                continue
            if name == "QR1":
                assert record.addresses is not None
                result = Result.PASS if record.addresses.lookup(self.ip) is not None else Result.FAIL
            elif name == "SPF1":
                spf_outcome = await self._spf()
                result = spf_outcome.result
            elif name == "CSV":
                csa_outcome = await self._csa()
                result = csa_outcome.result
            elif name == "DKIM":
                if not self.message_known:
                    if self.envelope.message_follows:
                        self.log("methods", "DKIM: needs the message; asking again at end of data")
                        return Auth(Result.NONE, "DKIM", tuple(results), spf_outcome, pending=True, csa=csa_outcome)
                    self.log("methods", "DKIM: skipped, needs the message; this front-end cannot give it")
                    continue
                dkim_outcome = await self.services.dkim.verify(self.envelope.headers, self.envelope.body, self.trace,
                                                               self.envelope.headers_complete)
                result, signature = dkim_outcome.result_for(self.identity or "", self.config.dkim.match)
                if signature is not None and signature.reason:
                    self.log("methods", f"DKIM: d={signature.domain} s={signature.selector}: {signature.reason}")
            else:
                self.log("methods", f"{name}: not available at this stage")
                continue
            self.log("methods", f"{name}: {result.value}")
            results.append((name, result))
            if RANK[result] < RANK[best]:
                best, best_method = result, name
            if result is Result.PASS:
                break
        return Auth(best, best_method, tuple(results), spf_outcome, csa=csa_outcome, dkim=dkim_outcome,
                    dkim_signature=signature)

    async def _csa(self) -> CsaOutcome:
        """CSA for the HELO name, which it vouches for: only when that name is the identity
        or under it does CSA speak for the identity."""
        helo = domain(self.envelope.helo) if self.envelope.helo else None
        identity = self.identity or ""
        if helo is None:
            self.log("methods", "CSV: NONE, the HELO name is not a host name")
            return CsaOutcome(Result.NONE, "HELO is not a host name")
        if helo != identity and not helo.endswith("." + identity):
            self.log("methods", f"CSV: NONE, HELO {helo} is neither {identity} nor under it")
            return CsaOutcome(Result.NONE, f"HELO {helo} is not {identity} nor under it")
        outcome = await csa.check(self.services.dns, helo, self.ip, self.trace)
        if outcome.reason:
            self.log("methods", f"CSV: {outcome.reason}")
        return outcome

    async def _spf(self) -> SpfOutcome:
        """SPF for the identity: the MAIL FROM when its domain is the identity, else
        ``postmaster@<identity>``."""
        env = self.envelope
        identity = self.identity or ""
        sender = (env.sender or "").strip().strip("<>")
        if not sender or address_domain(sender) != identity:
            sender = f"postmaster@{identity}"
        return await self.services.spf.check(
            self.ip_text, sender, env.helo or identity, self.trace, want_header=self.config.headers.received_spf,
        )

    async def ratings(self, record: Record | None) -> tuple[Rating, ...]:
        """The record's ratings followed by those of the configured DNS rating services."""
        own = record.ratings if record is not None else ()
        wanted = [s for s in self.config.reputation.dns if s.key == "ip" or self.identity]
        if not wanted:
            return own
        answers = await asyncio.gather(*(
            self.services.dns.resolve(
                f"{reverse_name(self.ip) if svc.key == 'ip' else self.identity}.{svc.zone}", "A", self.trace)
            for svc in wanted
        ))
        extra = []
        for svc, answer in zip(wanted, answers):
            grade = next((svc.grades[a] for a in answer.records if a in svc.grades), None)
            if grade is not None:
                extra.append(Rating(svc.name, grade))
        return own + tuple(extra)

    def score(self, ratings: tuple[Rating, ...], trusted: Mapping[str, Mapping[str, float]]) -> Score | None:
        result = score(ratings, trusted)
        if self.trace is not None:
            self.log("reputation", "no trusted ratings" if result is None else
                     f"min {result.min:g} max {result.max:g} avg {result.avg:.2f}")
        return result

    def thresholds(self, defaults: Mapping[str, float]) -> dict[str, float]:
        """``defaults`` with the per-recipient overrides for this transaction's recipients."""
        return self.services.thresholds.for_recipients(defaults, self.envelope.rcpts)

    async def blacklist(self) -> ListResult:
        """The aggressive IP lists, for mail that did not authenticate."""
        result = await self.services.blacklist.check(self.ip, self.services.dns, self.trace)
        if result.verdict is Verdict.BLOCK:
            self.log("blacklist", f"{self.ip_text}: listed by {result.list_name} {result.reason}".rstrip())
        return result

    # -- decisions --------------------------------------------------------------------
    def accept(self, stage: str, auth: Auth = NO_AUTH, ratings: tuple[Rating, ...] = (),
               text: str = "Sender OK", reason: str = "") -> Decision:
        return self._decision(Action.ACCEPT, 250, "", text, stage, reason, auth, ratings, with_headers=True)

    def filter(self, stage: str, auth: Auth = NO_AUTH, ratings: tuple[Rating, ...] = (),
               text: str = "Sender OK, filtering", reason: str = "") -> Decision:
        return self._decision(Action.FILTER, 250, "", text, stage, reason, auth, ratings, with_headers=True)

    def reject(self, stage: str, text: str, code: int = 550, xcode: str = "5.7.1",
               auth: Auth = NO_AUTH, reason: str = "") -> Decision:
        return self._decision(Action.REJECT, code, xcode, text, stage, reason, auth, (), with_headers=False)

    def tempfail(self, stage: str, text: str, code: int = 451, xcode: str = "4.4.3",
                 auth: Auth = NO_AUTH, reason: str = "") -> Decision:
        return self._decision(Action.TEMPFAIL, code, xcode, text, stage, reason, auth, (), with_headers=False)

    def continue_(self, stage: str, auth: Auth = NO_AUTH, text: str = "Continue, waiting for the message") -> Decision:
        """No verdict yet: the front-end asks again at end of data (``auth.pending``). No
        headers: they come with the final decision."""
        return Decision(Action.CONTINUE, 250, "", _one_line(text), (), stage, "pending",
                        tuple((m, r.value) for m, r in auth.results), self.identity or "", self.identity_source)

    def temperror(self, stage: str, auth: Auth = NO_AUTH, ratings: tuple[Rating, ...] = ()) -> Decision:
        """A DNS temporary error: TEMPFAIL, or fail open to the spam filter, as configured."""
        self.services.counts[("temperrors", stage)] += 1
        if self.config.policy.on_temperror == "filter":
            return self.filter(stage, auth if auth is not NO_AUTH else Auth(Result.TEMPERROR, "DNS"),
                               ratings, reason="temperror")
        return self.tempfail(stage, "Temporary DNS failure checking sender, try again later",
                             auth=auth, reason="temperror")

    def _decision(self, action: Action, code: int, xcode: str, text: str, stage: str, reason: str,
                  auth: Auth, ratings: tuple[Rating, ...], with_headers: bool) -> Decision:
        hdrs: tuple[Header, ...] = ()
        if with_headers:
            cfg = self.config.headers
            out = [headers.authent(self.ip_text, self.identity, auth.method, auth.result.value,
                                   ",".join(map(str, ratings)))]
            if cfg.authentication_results:
                out.append(headers.authentication_results(self.services.authserv_id, self._reports(auth)))
            if cfg.received_spf and auth.spf is not None and auth.spf.received_spf:
                out.append(Header("Received-SPF:", auth.spf.received_spf))
            hdrs = tuple(Header(h.label, _one_line(h.text)) for h in out)
        return Decision(action, code, xcode, _one_line(text), hdrs, stage, reason or _REASON[auth.result],
                        tuple((m, r.value) for m, r in auth.results), self.identity or "", self.identity_source)

    def _reports(self, auth: Auth) -> list[headers.MethodReport]:
        """One ``Authentication-Results`` clause per method that ran; DKIM one per signature."""
        helo = domain(self.envelope.helo) if self.envelope.helo else None
        reports = []
        for method, result in auth.results:
            if method == "DKIM" and auth.dkim is not None and auth.dkim.signatures:
                reports += [headers.MethodReport("DKIM", SPELLING[sig.result], domain=sig.domain, selector=sig.selector,
                                                 algorithm=sig.algorithm, reason=sig.reason)
                            for sig in auth.dkim.signatures]
            elif method == "SPF1":
                reports.append(headers.MethodReport(method, SPELLING[result], mailfrom=self.identity or ""))
            elif method in ("QR1", "CSV"):
                reason = auth.csa.reason if method == "CSV" and auth.csa is not None and result is not Result.PASS else ""
                reports.append(headers.MethodReport(method, SPELLING[result], helo=helo or "", reason=reason))
            else:
                reports.append(headers.MethodReport(method, SPELLING[result]))
        return reports


def _one_line(text: str) -> str:
    """No line breaks or other control characters in a reply or header text."""
    if text.isprintable():
        return text
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())
