"""What the policy file works with: one :class:`Context` per decision.

The context runs the pipeline's stages on request (pre-screen, registry, methods, ratings,
blacklist) and builds the decisions, so the policy file holds only the flow and its tables.
Every reply and header is built here, never as literals in the policy.
"""
from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

from checkid.engine import headers
from checkid.engine.checks.iplists import IPAddress
from checkid.engine.checks.prescreen import ListResult, Verdict, reverse_name
from checkid.engine.checks.registry import Rating, Record, RegistryOutcome, RegistryResult, interpret
from checkid.engine.checks.reputation import Score, score
from checkid.engine.checks.spfcheck import SpfOutcome
from checkid.engine.decision import Action, Decision, Envelope, Header
from checkid.engine.result import SPELLING, Result
from checkid.engine.services import Services
from checkid.engine.trace import Trace
from checkid.engine.validate import address_domain

#: which result speaks for the whole when several methods ran and none passed
_PRECEDENCE = (Result.PASS, Result.TEMPERROR, Result.FAIL, Result.SOFTFAIL,
               Result.NEUTRAL, Result.PERMERROR, Result.NONE)
_RANK = {r: i for i, r in enumerate(_PRECEDENCE)}


@dataclass(frozen=True, slots=True)
class Auth:
    """The outcome of the authentication methods."""

    result: Result
    #: the method that gave ``result`` (``SPF1``, ``QR1``, ``STOP``; ``NONE`` when none ran)
    method: str
    #: every method that ran, in order
    results: tuple[tuple[str, Result], ...] = ()
    spf: SpfOutcome | None = None


NO_AUTH = Auth(Result.NONE, "NONE")
_REASON = {r: r.value.lower() for r in Result}


class Context:
    """One decision's inputs, stages and reply builders, handed to the policy's ``decide``."""

    def __init__(self, services: Services, envelope: Envelope, ip: IPAddress, identity: str | None,
                 identity_source: str, trace: Trace | None) -> None:
        self.services = services
        self.config = services.config
        self.envelope = envelope
        self.ip = ip
        self.ip_text = str(ip)
        #: the identity the registry is asked about (declared ID, else the fallback)
        self.identity = identity
        #: where the identity came from: ``id``, ``helo``, ``mail_from`` or ``none``
        self.identity_source = identity_source
        self.trace = trace
        self._registry: RegistryResult | None = None

    def log(self, stage: str, message: str) -> None:
        if self.trace is not None:
            self.trace.add(stage, message)

    # -- stages -----------------------------------------------------------------------
    async def prescreen(self) -> ListResult:
        """Allow list, local block lists, then the pre-screen DNSBLs."""
        result = await self.services.prescreen.check(self.ip, self.services.dns, self.trace)
        if self.trace is not None:
            self.log("prescreen", f"{self.ip_text}: {result.verdict.name} {result.list_name} {result.reason}".rstrip())
        return result

    async def registry(self) -> RegistryResult:
        """The registry record of the identity (TXT at ``<identity>.<zone>``)."""
        if self._registry is None:
            if self.identity is None:
                self._registry = RegistryResult(RegistryOutcome.NO_RECORD, error="no identity")
            else:
                name = f"{self.identity}.{self.config.registry.zone}"
                # SPF reads the identity's TXT first: on a registry miss, ask both at once
                answer = await self.services.dns.resolve(name, "TXT", self.trace, alongside=((self.identity, "TXT"),))
                self._registry = interpret(answer)
            self.services.counts[("registry_lookups", self._registry.outcome.value)] += 1
            if self.trace is not None:
                self.log("registry", f"{self.identity}: {self._registry.outcome.name} {self._registry.error}".rstrip())
        return self._registry

    async def authenticate(self, record: Record, method_list: Mapping[str, tuple[int, int]]) -> Auth:
        """Run the methods the record offers, in the site's order, within each query budget.

        ``method_list`` maps a method to ``(preferred order, most DNS queries allowed)``;
        methods with the same order run in the order the record lists them. The first PASS
        ends the run.
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
        best, best_method, spf_outcome = Result.NONE, "NONE", None
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
            else:
                self.log("methods", f"{name}: not available at this stage")
                continue
            self.log("methods", f"{name}: {result.value}")
            results.append((name, result))
            if _RANK[result] < _RANK[best]:
                best, best_method = result, name
            if result is Result.PASS:
                break
        return Auth(best, best_method, tuple(results), spf_outcome)

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
                spf = SPELLING[auth.spf.result] if auth.spf is not None else None
                out.append(headers.authentication_results(self.services.authserv_id, spf, self.identity))
            if cfg.received_spf and auth.spf is not None and auth.spf.received_spf:
                out.append(Header("Received-SPF:", auth.spf.received_spf))
            hdrs = tuple(Header(h.label, _one_line(h.text)) for h in out)
        return Decision(action, code, xcode, _one_line(text), hdrs, stage, reason or _REASON[auth.result],
                        tuple((m, r.value) for m, r in auth.results))


def _one_line(text: str) -> str:
    """No line breaks or other control characters in a reply or header text."""
    if text.isprintable():
        return text
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())
