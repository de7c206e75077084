"""What a reload may not change by omission: the rule the master applies on SIGHUP.

Every key has a default, so a file that lost its contents (truncated by a failed copy, an
editor's empty buffer saved, the wrong file) still loads, and would quietly switch DNS to
the system resolver, the registry to the public zone and the allow list to loopback. A
reload therefore refuses:

- a file that states no setting at all (empty, or comments and bare table headers only): to
  run on the embedded defaults on purpose, restart with it;
- a file that leaves out a :data:`GUARDED` key the running configuration sets (to a value
  other than its default): it would revert to the default unseen. Stating the key keeps it
  deliberate, even at its default value: ``nameservers = []`` is the system resolver on
  purpose, ``dnsbl = []`` no DNSBL.

At start nothing is running, so any file (an empty one included) is accepted as it reads.
"""
from __future__ import annotations

from typing import Any

from checkid.config.schema import Config
from checkid.errors import ConfigError

#: key -> what its default means, for the refusal. The keys whose silent loss changes whom
#: checkid asks or what it lets through (the DNS servers, the registry, the lists, the policy)
GUARDED: dict[str, str] = {
    "dns.nameservers": "the system resolver (resolv.conf)",
    "registry.zone": f"the public registry {Config().registry.zone}",
    "prescreen.allow": "loopback only",
    "prescreen.dnsbl": "Spamhaus ZEN",
    "prescreen.block_files": "no local block list",
    "blacklist.dnsbl": "no DNSBL",
    "blacklist.block_files": "no local block list",
    "policy.path": "the embedded default policy",
}


def check_reload(running: Config, new: Config, data: dict[str, Any], source: str) -> None:
    """Refuse replacing ``running`` by ``new`` (built from the TOML ``data`` of ``source``)
    when the file states nothing, or drops a guarded key the running configuration sets.

    :raises ConfigError: naming every key that would revert, and how to keep it
    """
    if not _states_anything(data):
        raise ConfigError(f"{source}: states no setting (an empty file?): a reload would revert every key to its "
                          "default, DNS to the system resolver; to run on the defaults on purpose, restart checkid")
    default = Config()
    dropped = []
    for key, meaning in GUARDED.items():
        was, now, base = (_value(c, key) for c in (running, new, default))
        if was != base and now == base and not _states(data, key):
            dropped.append(f"{key} (set to {_show(was)}; the default is {meaning})")
    if dropped:
        raise ConfigError(f"{source}: leaves out {', '.join(dropped)}: the reload would revert "
                          f"{'it' if len(dropped) == 1 else 'them'} to the default; state the key in the file "
                          "to change it on purpose (nameservers = [] for the system resolver)")


def _states_anything(data: Any) -> bool:
    """Whether a parsed TOML value holds a key with a value (not only empty tables)."""
    if isinstance(data, dict):
        return any(not isinstance(v, dict) or _states_anything(v) for v in data.values())
    return True


def _states(data: dict[str, Any], key: str) -> bool:
    section, name = key.split(".")
    table = data.get(section)
    return isinstance(table, dict) and name in table


def _value(config: Config, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(config, section), name)


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        shown = [getattr(v, "zone", v) for v in value]  # a DNS list by its zone
        return "[" + ", ".join(map(str, shown[:4])) + (", …" if len(shown) > 4 else "") + "]"
    return repr(value)
