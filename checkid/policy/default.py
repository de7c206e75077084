"""checkid default policy: the decision flow and its tables, for the operator to edit.

The engine loads this file by path (``[policy] path``) and calls ``decide(ctx)`` once per
transaction. Edit a copy, point the configuration at it, and check it with
``checkid check-config`` and ``checkid query``; a copy that fails to load, or whose tables
break their contract (checkid.engine.policytables), is refused and the last good policy stays.

``ctx`` runs the pipeline stages on request and builds the replies:
``ctx.prescreen()``, ``ctx.registry()``, ``ctx.authenticate(record, METHOD_LIST)``,
``ctx.ratings(record)``, ``ctx.score(ratings, TRUSTED_SERVICES)``,
``ctx.thresholds(THRESHOLDS)``, ``ctx.blacklist()``; ``ctx.accept/filter/reject/
tempfail/temperror/continue_(...)``.

DKIM needs the message: at MAIL time ``ctx.authenticate`` stops there with
``auth.pending`` and the policy answers CONTINUE; the front-end asks again at end of data
with the headers and the body, and the same flow decides.
"""
from checkid.engine.policyapi import Auth, Context, Decision, RegistryOutcome, Result, Verdict

#: method -> (preferred order, most DNS queries this site allows it). A method whose
#: registry record needs more (``mth=SPF1+15``) is skipped. QR1 is the address check of
#: the record's ip4=/ip6= blocks and costs no query. CSV (CSA) checks the HELO name's
#: SRV record and the target's address. DKIM runs at end of data, when the message is known.
METHOD_LIST = {
    "QR1": (1, 0),
    "SPF1": (2, 10),
    "CSV": (3, 2),
    "DKIM": (4, 4),
}

#: rating service -> grade -> score (0..9), and the service's weight 'Wt'.
#: Services not listed here are ignored.
TRUSTED_SERVICES = {
    "S1": {"A": 9, "B": 7, "C": 5, "D": 0, "Wt": 5},
    "M2": {"A": 9, "B": 7, "C": 5, "D": 0, "Wt": 3},
    "H1": {"A": 9, "B": 7, "C": 5, "D": 0, "Wt": 2},
}

#: accept an authenticated sender when the weighted average reaches accept_avg and no
#: trusted service scores it below accept_min; reject it when even its best score is at
#: or below reject_max (-1: never). Per-recipient overrides: [reputation] recipient_thresholds.
THRESHOLDS = {
    "accept_avg": 6.0,
    "accept_min": 5.0,
    "reject_max": -1.0,
}

#: the envelope inputs this flow reads (through the stages below): the engine may then
#: remember a decision for the same inputs while every DNS answer it used is valid
#: (checkid.engine.memo). Add any other input a copy reads (``id``, ``recipients``,
#: ``authenticated``), or delete the line to run decide() for every transaction.
DECISION_INPUTS = ("ip", "helo", "sender", "recipient_class")

#: only a record of this ID status or higher may lead to REJECT on failed authentication
#: (1..8: default records; 9: authoritative; 10: no record may)
REJECT_STATUS = 7


async def decide(ctx: Context) -> Decision:
    screen = await ctx.prescreen()
    if screen.verdict is Verdict.ALLOW:
        return ctx.accept("prescreen", Auth(Result.PASS, "ALLOW"))
    if screen.verdict is Verdict.BLOCK:
        reason = f" ({screen.reason})" if screen.reason else ""
        return ctx.reject("prescreen", f"Client host [{ctx.ip_text}] blocked using {screen.list_name}{reason}")

    if ctx.identity is None:
        return await unauthenticated(ctx, "identity")
    registry = await ctx.registry()
    if registry.outcome is RegistryOutcome.TEMPERROR:
        return ctx.temperror("registry")
    if registry.outcome is RegistryOutcome.PARSE_ERROR:
        return await unauthenticated(ctx, "registry", Auth(Result.PERMERROR, "REGISTRY"))
    if registry.record is None:
        return await unauthenticated(ctx, "registry")
    record = registry.record

    auth = await ctx.authenticate(record, METHOD_LIST)
    if auth.pending:
        return ctx.continue_("methods", auth)
    if auth.result is Result.PASS:
        ratings = await ctx.ratings(record)
        score = ctx.score(ratings, TRUSTED_SERVICES)
        limits = ctx.thresholds(THRESHOLDS)
        if score is None:
            return ctx.filter("reputation", auth, ratings, reason="no_ratings")
        if score.max <= limits["reject_max"]:
            return ctx.reject("reputation", f"Sender '{ctx.identity}' has a poor reputation", auth=auth,
                              reason="reputation")
        if score.avg >= limits["accept_avg"] and score.min >= limits["accept_min"]:
            return ctx.accept("reputation", auth, ratings)
        return ctx.filter("reputation", auth, ratings, reason="reputation")
    if auth.result is Result.TEMPERROR:
        return ctx.temperror("methods", auth)
    if auth.result is Result.FAIL and record.status >= REJECT_STATUS:
        return ctx.reject("methods", f"Sending MTA '{ctx.ip_text}' not authorized by '{ctx.identity}'", auth=auth)
    return await unauthenticated(ctx, "methods", auth)


async def unauthenticated(ctx: Context, stage: str, auth: Auth | None = None) -> Decision:
    """No authenticated identity: the aggressive IP lists, then the spam filter."""
    auth = auth or Auth(Result.NONE, "NONE")
    hit = await ctx.blacklist()
    if hit.verdict is Verdict.BLOCK:
        if ctx.config.blacklist.action == "reject":
            return ctx.reject("blacklist", f"Client host [{ctx.ip_text}] listed by {hit.list_name}", auth=auth)
        return ctx.filter("blacklist", auth, reason="blacklist")
    return ctx.filter(stage, auth)
