"""The ``checkid`` command line. Only :func:`main` returns an exit status.

Every command finds its configuration the same way (:func:`config_path`): ``-c FILE``,
else ``$CHECKID_CONFIG``, else ``/etc/checkid/checkid.toml`` when run as root and it
exists, else the embedded defaults.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import grp
import json
import logging
import os
import pwd
import sys
from collections.abc import Sequence
from typing import Any

from checkid import __version__
from checkid import config as config_mod
from checkid.config import Config
from checkid.config.convert import to_toml
from checkid.engine.contract import envelope
from checkid.engine.engine import Engine
from checkid.engine.trace import Trace
from checkid.errors import CheckidError
from checkid.exitcodes import ExitCode
from checkid.protocols import registry

#: the configuration a root ``checkid`` reads when none is named
SYSTEM_CONFIG = "/etc/checkid/checkid.toml"

#: ``checkid query``'s exit status per action; 2 stays bad usage (argparse's), and is also
#: what a query that could not be made at all (configuration refused, server unreachable) exits
QUERY_EXIT = {"ACCEPT": 0, "REJECT": 1, "TEMPFAIL": 3, "FILTER": 4, "DISCARD": 5, "CONTINUE": 6}


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="checkid: %(levelname)s %(message)s")
    try:
        return int(args.func(args))
    except CheckidError as e:
        print(f"checkid: {e}", file=sys.stderr)
        return int(getattr(args, "error_status", ExitCode.CANNOT_START))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="checkid", description="Mail-authentication decision engine.")
    parser.add_argument("--version", action="version", version=f"checkid {__version__}")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    q = sub.add_parser("query", help="decide one transaction and print the decision (exit status per action)",
                       description="Exit status: 0 ACCEPT, 1 REJECT, 3 TEMPFAIL, 4 FILTER, 5 DISCARD, 6 CONTINUE; "
                                   "2 bad usage or the query could not be made.")
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
    q.set_defaults(func=_query, error_status=ExitCode.USAGE)

    s = sub.add_parser("serve", help="serve the configured listeners (policy, msgpack-rpc, milter, smtp)")
    _config_args(s)
    s.set_defaults(func=_serve)

    c = sub.add_parser("check-config", help="validate a configuration and its policy file: every fault at once")
    _config_args(c)
    c.set_defaults(func=_check_config)

    d = sub.add_parser("config", help="print the effective configuration as TOML")
    _config_args(d)
    which = d.add_mutually_exclusive_group()
    which.add_argument("--defaults", action="store_true", help="the embedded defaults instead (postconf -d)")
    which.add_argument("-n", "--changed", action="store_true",
                       help="only what differs from the defaults (postconf -n)")
    d.set_defaults(func=_config)

    st = sub.add_parser("stats", help="counters of all workers, workers, uptime, policy state, cache")
    _config_args(st)
    st.add_argument("--json", action="store_true", help="print one JSON object")
    st.set_defaults(func=_stats)

    r = sub.add_parser("reload", help="reload the running daemon (SIGHUP) and wait for the outcome")
    _config_args(r)
    r.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="how long to wait for the new workers (default 60)")
    r.set_defaults(func=_reload)

    k = sub.add_parser("cache", help="the shared cache: stats, show NAME, flush [NAME]")
    _config_args(k)
    ksub = k.add_subparsers(required=True, metavar="ACTION")
    ks = ksub.add_parser("stats", help="entries and hit rates per layer")
    _config_args(ks)
    ks.add_argument("--json", action="store_true")
    ks.set_defaults(func=_cache_stats)
    kshow = ksub.add_parser("show", help="what the shared layer holds for a DNS name")
    _config_args(kshow)
    kshow.add_argument("name", metavar="NAME")
    kshow.add_argument("--json", action="store_true")
    kshow.set_defaults(func=_cache_show)
    kf = ksub.add_parser("flush", help="drop a DNS name (or everything) from every layer of every worker "
                                         "(of every host, with [fleet])")
    _config_args(kf)
    kf.add_argument("name", metavar="NAME", nargs="?")
    kf.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                    help="how long to wait for every worker to confirm (default 10)")
    kf.set_defaults(func=_cache_flush)
    return parser


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", metavar="FILE", default=argparse.SUPPRESS,
                   help=f"TOML configuration (default: $CHECKID_CONFIG, else {SYSTEM_CONFIG} as root, else the "
                        "embedded defaults)")


def config_path(args: argparse.Namespace) -> str | None:
    """The configuration file a command reads, or None for the embedded defaults."""
    named = getattr(args, "config", None) or os.environ.get("CHECKID_CONFIG")
    if named:
        return str(named)
    if os.geteuid() == 0 and os.path.exists(SYSTEM_CONFIG):
        return SYSTEM_CONFIG
    return None


def _load(args: argparse.Namespace) -> Config:
    path = config_path(args)
    config = config_mod.load(path) if path else Config()
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
        from checkid.protocols.msgpack_rpc.client import CallFailed, Client
        params = [args.ip, args.id, args.helo, args.sender, args.rcpt]
        try:
            with Client(args.server) as client:
                if trace is not None:
                    result = client.call("trace", *params)
                    (action, reply, headers), lines = _contract(result[0]), result[1]
                    for stage, message in lines:
                        trace.add(stage, message)
                else:
                    action, reply, headers = client.checkID(*params)
        except CallFailed as e:
            if trace is not None and "unknown method" in str(e):
                raise CheckidError(f"{args.server} offers no trace method (an older checkid)") from None
            raise CheckidError(f"{args.server}: {e}") from None
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
    return QUERY_EXIT.get(action, ExitCode.FAILURE)


def _contract(result: Any) -> tuple[str, tuple[int, str, str], list[dict[str, str]]]:
    action, reply, headers = result
    return action, (reply[0], reply[1], reply[2]), headers


def _serve(args: argparse.Namespace) -> int:
    from checkid.runtime import supervisor
    return supervisor.serve(_load(args), config_path(args))


def _check_config(args: argparse.Namespace) -> int:
    """Every fault of the configuration, its files, its user and its policy, in one run."""
    path = config_path(args)
    errors: list[str] = []
    config = config_mod.load(path, errors) if path else Config()
    errors += _check_files(config)
    errors += _check_user(config)
    errors += _check_private(config, path, errors)
    policy = config.policy.path or None
    if not any(e.startswith(("prescreen.", "blacklist.", "reputation.", "policy.")) for e in errors):
        try:  # loads the policy, the block lists and the thresholds file as a worker would
            engine = Engine(config)
            policy = str(engine.policy.current.path)
        except CheckidError as e:
            errors.append(str(e))
    if not any(e.startswith("smtp.tls_") for e in errors):
        try:  # what the listeners load (the front door's certificate)
            registry.check(config)
        except CheckidError as e:
            errors.append(str(e))
    source = path or "the embedded defaults"
    if errors:
        for error in errors:
            print(f"checkid: {error}", file=sys.stderr)
        print(f"{source}: {len(errors)} error{'s' if len(errors) > 1 else ''}", file=sys.stderr)
        return ExitCode.CANNOT_START
    print(f"configuration OK ({source}); policy {policy}")
    return ExitCode.OK


def _check_files(config: Config) -> list[str]:
    """Each file the configuration names that cannot be read, by its key."""
    named: list[tuple[str, str]] = [(f"prescreen.block_files[{i}]", f) for i, f in enumerate(config.prescreen.block_files)]
    named += [(f"blacklist.block_files[{i}]", f) for i, f in enumerate(config.blacklist.block_files)]
    named += [("reputation.recipient_thresholds", config.reputation.recipient_thresholds),
              ("policy.path", config.policy.path), ("smtp.tls_cert", config.smtp.tls_cert),
              ("smtp.tls_key", config.smtp.tls_key)]
    errors = []
    for key, path in named:
        if not path:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            errors.append(f"{key}: cannot read {path}: {e.strerror}")
    return errors


def _check_user(config: Config) -> list[str]:
    """Every user and group the configuration names exists."""
    named = [("server.user", config.server.user, pwd.getpwnam, "user"),
             ("server.group", config.server.group, grp.getgrnam, "group")]
    for i, listen in enumerate(config.listen):
        named += [(f"listen[{i}].owner", listen.owner, pwd.getpwnam, "user"),
                  (f"listen[{i}].group", listen.group, grp.getgrnam, "group")]
    errors = []
    for key, name, lookup, what in named:
        if name:
            try:
                lookup(name)
            except KeyError:
                errors.append(f"{key}: no such {what} {name!r}")
    return errors


def _check_private(config: Config, path: str | None, errors: list[str]) -> list[str]:
    """As root, what ``serve`` would refuse at start: a configuration or policy file that
    anyone but root or the run user can change, or one the run user cannot read."""
    from checkid.runtime import perms

    if os.geteuid() != 0 or any(e.startswith(("server.user", "server.group")) for e in errors):
        return []
    named = [("configuration", path)] if path else []
    if config.policy.path and not any(e.startswith("policy.path") for e in errors):
        named.append(("policy.path", config.policy.path))
    return perms.check_daemon_files(named, *perms.run_ids(config.server.user, config.server.group))


def _config(args: argparse.Namespace) -> int:
    config = Config() if args.defaults else _load(args)
    text = to_toml(config, changed_only=args.changed)
    print(text if text.strip() else "# everything at its default", end="" if text.strip() else "\n")
    return ExitCode.OK


def _stats(args: argparse.Namespace) -> int:
    from checkid.runtime import status
    stats = status.collect(_load(args))
    print(json.dumps(stats, indent=2) if args.json else status.render(stats))
    return ExitCode.OK


def _reload(args: argparse.Namespace) -> int:
    from checkid.runtime import control
    from checkid.runtime.process import state_dir
    # the file may be broken (that is for the master to refuse): read what can be read of it,
    # enough to find the master's state directory
    path = config_path(args)
    config = config_mod.load(path, errors=[]) if path else Config()
    outcome = control.wait_for_reload(state_dir(config), args.timeout)
    if outcome["result"] == "ok":
        print(f"reloaded: {outcome['reason']}")
        return ExitCode.OK
    print(f"checkid: reload {outcome['result']}: {outcome['reason']}", file=sys.stderr)
    return ExitCode.FAILURE


def _cache_stats(args: argparse.Namespace) -> int:
    from checkid.runtime import status
    stats = status.collect(_load(args))
    if args.json:
        print(json.dumps(stats["cache"], indent=2))
    else:
        print("\n".join(line for line in status.render(stats).splitlines() if line.startswith("cache")))
    return ExitCode.OK


def _cache_show(args: argparse.Namespace) -> int:
    from checkid.runtime import status
    entries = status.cache_show(_load(args), args.name)
    if args.json:
        print(json.dumps(entries, indent=2))
    elif not entries:
        print(f"nothing cached for {args.name}")
    for e in entries if not args.json else ():
        key = " ".join(str(k) for k in e["key"])
        print(f"{key}: {e['answer']}, {e['ttl_left']:g} s left [{e['layer']}]")
    return ExitCode.OK


def _cache_flush(args: argparse.Namespace) -> int:
    from checkid.runtime import control, status
    config = _load(args)
    out = status.cache_flush(config, args.name, args.timeout)
    what = args.name or "everything"
    workers = out["workers_confirmed"]
    print(f"flushed {what}: {out['shared_removed']} shared entries"
          + (f", {workers} workers confirmed" if workers is not None else f"; {out['note']}"))
    if config.fleet.enabled:
        heard = control.publish_flush(config.fleet, args.name)
        print(f"published to the fleet: {heard} workers subscribed (every host's)")
    return ExitCode.OK
