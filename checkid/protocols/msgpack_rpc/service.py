"""The methods a MessagePack-RPC client may call, over the :class:`Decider`. No I/O of its own."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from checkid.engine.contract import envelope
from checkid.engine.decision import Envelope
from checkid.engine.trace import Trace
from checkid.errors import CheckidError
from checkid.protocols.base import ServerState
from checkid.protocols.decider import Decider, timed_decide

#: the contract's parameter names, in order, then this protocol's own: ``MessageFollows``
#: (default true) false from a caller that cannot ask again with the message (qmail-spp),
#: so that a method needing the message is skipped instead of answered CONTINUE
CONTRACT_PARAMS = ("IP", "ID", "H", "S", "R", "Hdrs", "Body")
CHECKID_PARAMS = (*CONTRACT_PARAMS, "MessageFollows")
#: bound on a message body handed over for a decision
MAX_BODY = 1024 * 1024


class RpcError(CheckidError):
    """An error to return to the caller in the response's error field (the connection stays good)."""


class RpcService:
    def __init__(self, decider: Decider, state: ServerState, front: str = "msgpack-rpc") -> None:
        self.decider = decider
        self.state = state
        self.front = front
        self.methods: dict[str, Callable[[list[Any]], Any]] = {
            "checkID": self.check_id,
            "trace": self.trace,
            "ping": self.ping,
            "stats": self.stats,
        }

    async def call(self, method: str, params: list[Any]) -> Any:
        """Run ``method``. :raises RpcError: unknown method or bad params"""
        handler = self.methods.get(method)
        if handler is None:
            raise RpcError(f"unknown method {method!r} (known: {', '.join(self.methods)})")
        result = handler(params)
        return await result if hasattr(result, "__await__") else result

    async def check_id(self, params: list[Any]) -> list[Any]:
        decision = await timed_decide(self.decider, checkid_envelope(params), self.front)
        action, reply, headers = decision.as_tuple()
        return [action, list(reply), headers]

    async def trace(self, params: list[Any]) -> list[Any]:
        """``checkID`` with what each stage did: ``[[action, reply, headers], [[stage, message], ...]]``
        (``checkid query --server ... --trace``)."""
        trace = Trace()
        decision = await self.decider.decide(checkid_envelope(params), trace, frontend=self.front)
        action, reply, headers = decision.as_tuple()
        return [[action, list(reply), headers], [list(line) for line in trace.lines]]

    def ping(self, params: list[Any]) -> str:
        if params:
            raise RpcError("ping takes no params")
        return "pong"

    def stats(self, params: list[Any]) -> dict[str, int]:
        """This worker's counters, flattened: ``decisions:msgpack-rpc:ACCEPT:reputation``."""
        if params:
            raise RpcError("stats takes no params")
        counts = self.state.stats() if self.state.stats is not None else self.state.counts
        return {":".join(key): value for key, value in counts.items()}


def checkid_envelope(params: list[Any]) -> Envelope:
    """``checkID`` params: positional as the contract, or one map with the contract's names.

    :raises RpcError: naming the parameter at fault
    """
    if len(params) == 1 and isinstance(params[0], dict):
        args = params[0]
        unknown = [k for k in args if k not in CHECKID_PARAMS]
        if unknown:
            raise RpcError(f"checkID: unknown parameter {unknown[0]!r} (known: {', '.join(CHECKID_PARAMS)})")
    else:
        if len(params) > len(CHECKID_PARAMS):
            raise RpcError(f"checkID takes at most {len(CHECKID_PARAMS)} params, got {len(params)}")
        args = dict(zip(CHECKID_PARAMS, params))
    for name in ("IP", "ID", "H", "S"):
        if args.get(name) is not None and not isinstance(args[name], str):
            raise RpcError(f"checkID: {name} must be a string or nil")
    rcpts = args.get("R") or []
    if not isinstance(rcpts, list) or not all(isinstance(r, str) for r in rcpts):
        raise RpcError("checkID: R must be an array of strings")
    hdrs = args.get("Hdrs") or []
    if not isinstance(hdrs, list) or not all(
        isinstance(h, str) or (isinstance(h, list) and len(h) == 2 and all(isinstance(p, str) for p in h))
        for h in hdrs
    ):
        raise RpcError("checkID: Hdrs must be an array of 'Name: value' strings or [name, value] pairs")
    body = args.get("Body")
    if body is not None and not isinstance(body, (str, bytes)):
        raise RpcError("checkID: Body must be a string, binary or nil")
    if body is not None and len(body) > MAX_BODY:
        raise RpcError(f"checkID: Body longer than {MAX_BODY} bytes")
    follows = args.get("MessageFollows", True)
    if not isinstance(follows, bool):
        raise RpcError("checkID: MessageFollows must be true or false")
    env = envelope(args.get("IP"), args.get("ID"), args.get("H"), args.get("S"), rcpts,
                   [tuple(h) if isinstance(h, list) else h for h in hdrs], body)
    return env if follows else dataclasses.replace(env, message_follows=False)
