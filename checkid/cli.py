"""The ``checkid`` command line. Only :func:`main` returns an exit status."""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence

from checkid import config as config_mod
from checkid.config import Config
from checkid.engine.contract import envelope
from checkid.engine.engine import Engine
from checkid.engine.trace import Trace
from checkid.errors import CheckidError
from checkid.exitcodes import ExitCode
from checkid.protocols import registry


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="checkid: %(levelname)s %(message)s")
    try:
        return int(args.func(args))
    except CheckidError as e:
        print(f"checkid: {e}", file=sys.stderr)
        return ExitCode.CANNOT_START


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="checkid", description="Mail-authentication decision engine.")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    q = sub.add_parser("query", help="decide one transaction in-process and print the decision")
    q.add_argument("ip", metavar="IP", help="connecting client address")
    q.add_argument("id", metavar="ID", nargs="?", help="identity declared with the SMTP ID command")
    q.add_argument("--helo", metavar="H", help="HELO/EHLO name")
    q.add_argument("--from", dest="sender", metavar="S", help="MAIL FROM address")
    q.add_argument("--rcpt", metavar="R", action="append", default=[], help="RCPT TO address (repeatable)")
    _config_args(q)
    q.add_argument("--nameserver", metavar="HOST:PORT", action="append", default=[],
                   help="DNS server to ask instead of the configured ones (repeatable)")
    q.add_argument("--registry-zone", metavar="ZONE", help="registry zone instead of the configured one")
    q.add_argument("--server", metavar="ADDRESS",
                   help="ask a running engine over MessagePack-RPC (HOST:PORT or unix:PATH) instead")
    q.add_argument("--json", action="store_true", help="print one JSON object")
    q.add_argument("--trace", action="store_true", help="print each stage and DNS query")
    q.set_defaults(func=_query)

    s = sub.add_parser("serve", help="serve the configured listeners (policy, msgpack-rpc)")
    _config_args(s)
    s.set_defaults(func=_serve)

    c = sub.add_parser("check-config", help="validate a configuration and its policy file")
    _config_args(c)
    c.set_defaults(func=_check_config)
    return parser


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", metavar="FILE", help="TOML configuration (default: embedded defaults)")


def _load(args: argparse.Namespace) -> Config:
    config = config_mod.load(args.config) if args.config else Config()
    nameservers, zone = getattr(args, "nameserver", None), getattr(args, "registry_zone", None)
    if not nameservers and not zone:
        return config
    data = _as_dict(config)
    if nameservers:
        data["dns"]["nameservers"] = nameservers  # type: ignore[index]
    if zone:
        data["registry"]["zone"] = zone  # type: ignore[index]
    return config_mod.from_dict(data, source="command line")


def _as_dict(config: Config) -> dict[str, object]:
    """The config as TOML-shaped data, to re-validate after command-line overrides."""
    def plain(v: object) -> object:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [plain(i) for i in v]
        return v
    result = plain(config)
    assert isinstance(result, dict)
    return result


def _query(args: argparse.Namespace) -> int:
    trace = Trace() if args.trace else None
    if args.server:
        if args.trace:
            raise CheckidError("--trace works in-process only, not with --server")
        from checkid.protocols.msgpack_rpc.client import Client
        try:
            with Client(args.server) as client:
                action, reply, headers = client.checkID(args.ip, args.id, args.helo, args.sender, args.rcpt)
        except OSError as e:
            raise CheckidError(f"cannot ask {args.server}: {e.strerror or e}") from None
    else:
        engine = Engine(_load(args))
        env = envelope(args.ip, args.id, args.helo, args.sender, args.rcpt)
        action, reply, headers = asyncio.run(engine.decide(env, trace)).as_tuple()
    if trace is not None:
        print(trace.render(), file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps({"action": action, "reply": list(reply), "headers": headers}))
    else:
        code, xcode, text = reply
        print(f"{action} {code}{' ' + xcode if xcode else ''} {text}")
        for h in headers:
            print(f"{h['label']} {h['text']}")
    return ExitCode.OK


def _serve(args: argparse.Namespace) -> int:
    from checkid.runtime import supervisor
    return supervisor.serve(_load(args), args.config)


def _check_config(args: argparse.Namespace) -> int:
    config = _load(args)
    engine = Engine(config)
    registry.check(config)
    print(f"configuration OK; policy {engine.policy.current.path}")
    return ExitCode.OK
