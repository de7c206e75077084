"""A border MTA's day as a request trace, reproducible from a seed, with the DNS data it needs.

The small trace (bench/workload.py: a few hundred senders) fits every cache; a large ISP's
border does not. This one does what a border sees:

- **Mail, then requests.** Messages come first; a message with several recipients becomes
  one policy request per recipient (Postfix asks at RCPT time, once per recipient), all with
  the message's client, HELO and sender, and one milter session with as many RCPTs.
- **Sender domains with Zipf popularity** (``--domains``, 30,000 by default, exponent 0.9):
  a few big providers send most of the legitimate mail, a long tail sends a little. A
  domain is registered in the checkID registry or not (``UNREGISTERED``), ends its SPF record
  in ``-all`` or ``~all``, and sends from its own block of addresses, sized by its
  popularity (1 to 256), which its SPF record authorizes, through includes and redirects of
  realistic depth, unless it is one of the misconfigured few (``SPF_MISSES_OWN``).
- **Botnets** send the rest (``BOT_SHARE``): most bot addresses connect once or twice in a
  day, from a pool of millions, and most are on the DNSBL (``LISTED_SHARE``, the share of
  bot mail a good DNSBL catches); they forge popular sender domains. This is where most of
  the day's distinct client addresses come from.

Every request carries the class the default policy should decide it as (``spammer``:
DNSBL-listed, REJECT at the pre-screen; ``pass``: registered, SPF pass, ACCEPT; ``fail``:
registered, ``-all``, address not authorized, REJECT; ``softfail``: FILTER; ``unregistered``:
FILTER), so a test can check the zones match the trace. There are no DNS-timeout senders
(the peers' benchmarks leave them out anyway).

    .venv/bin/python -m bench.border [--messages 400000] [--domains 30000] [--seed 1]

prints the trace's shape (the counts the issue asks for); bench/peers.py uses it with
``--trace border``.
"""
from __future__ import annotations

import argparse
import bisect
import ipaddress
import random
from collections import Counter
from dataclasses import dataclass

from bench.workload import DNSBL, DOMAINS, REGISTRY, Request, Sender, registry_record, spf_records

#: share of messages sent by bots (spam from compromised hosts): 0.5 is the low end of the
#: spam share of SMTP connections that border operators report (most of it is stopped at
#: connection time by DNSBLs, which is why the pre-screen runs first)
BOT_SHARE = 0.5
#: share of bot mail whose client address is on the DNSBL (a good DNSBL's catch rate)
LISTED_SHARE = 0.8
#: share of bot messages from an address already seen today (the rest connect once)
BOT_REPEAT = 0.15
#: share of sender domains with no registry record
UNREGISTERED = 0.35
#: share of registered domains whose SPF record ends in ``~all`` (the rest: ``-all``)
SOFT_ALL = 0.3
#: share of domains whose own sending addresses their SPF record leaves out
SPF_MISSES_OWN = 0.03
#: recipients per message and their weights: most mail has one, mailing lists and
#: newsletters many
RECIPIENTS = ((1, 0.72), (2, 0.12), (3, 0.06), (5, 0.05), (10, 0.03), (25, 0.02))
#: the DNS data's TTL: longer than a full bench run, so warm figures stay warm (a real
#: day's turnover is in the cold figures, bench/cold.py)
TTL = 86400

#: bots: 100.80.0.0/12 (1 Mi addresses), the domains' own mail servers: 100.96.0.0/11, both
#: in the shared address space (never a real sender) and clear of the small trace's senders
#: (bench/workload.py counts up from 100.64.0.1), so both traces' zones can be served at once
BOT_NET = ipaddress.IPv4Network("100.80.0.0/12")
MTA_NET = ipaddress.IPv4Network("100.96.0.0/11")


@dataclass(frozen=True)
class Domain:
    name: str
    registered: bool
    #: ``-all`` or ``~all``
    final: str
    #: its mail servers: the first address and the block's prefix length
    first_ip: int
    prefix: int
    #: whether its SPF record authorizes its own servers
    covers_own: bool
    #: DNS lookups its SPF evaluation needs (the record and its include/redirect chain)
    spf_depth: int

    @property
    def size(self) -> int:
        return 1 << (32 - self.prefix)


class BorderWorkload:
    """The domains, the listed bot addresses and the per-recipient requests of one day."""

    def __init__(self, messages: int = 400_000, domains: int = 30_000, seed: int = 1, zipf: float = 0.9) -> None:
        rng = random.Random(seed)
        weights = [1 / (rank + 1) ** zipf for rank in range(domains)]
        total = sum(weights)
        self.domains = self._domains(weights, total, rng)
        cumulative, acc = [], 0.0
        for w in weights:
            acc += w
            cumulative.append(acc)
        counts, shares = zip(*RECIPIENTS)
        rcpt_cumulative = [sum(shares[:k + 1]) for k in range(len(shares))]
        # bot addresses: a fresh one walks the pool in a fixed scrambled order (an odd
        # multiplier mod a power of two visits each address once)
        pool = BOT_NET.num_addresses
        base = int(BOT_NET.network_address)
        used_bots: list[int] = []
        self.listed: set[int] = set()
        self.requests: list[Request] = []
        for message in range(messages):
            domain = self.domains[min(domains - 1, bisect.bisect(cumulative, rng.random() * acc))]
            if rng.random() < BOT_SHARE:
                if used_bots and rng.random() < BOT_REPEAT:
                    ip = rng.choice(used_bots)
                else:
                    ip = base + (len(used_bots) * 2_654_435_761 + 12_345) % pool
                    used_bots.append(ip)
                    if rng.random() < LISTED_SHARE:
                        self.listed.add(ip)
                n = 1
            else:
                ip = domain.first_ip + rng.randrange(domain.size)
                n = counts[bisect.bisect(rcpt_cumulative, rng.random() * rcpt_cumulative[-1])]
            cls = self._class(domain, ip)
            text = str(ipaddress.IPv4Address(ip))
            helo = domain.name if ip not in self.listed else f"host-{text.replace('.', '-')}.example.net"
            local = f"u{rng.randrange(1000)}@{domain.name}"
            for k in range(n):
                self.requests.append(Request(cls, text, helo, local, f"user{(message + k) % 5000}@example.org",
                                             message))

    @staticmethod
    def _domains(weights: list[float], total: float, rng: random.Random) -> list[Domain]:
        out = []
        next_ip = int(MTA_NET.network_address)
        for rank, w in enumerate(weights):
            # mail servers in proportion to the domain's share, 1 to 256, a power of two
            servers = max(1, min(256, round(w / total * 40_000)))
            prefix = 32 - (servers - 1).bit_length()
            size = 1 << (32 - prefix)
            next_ip = (next_ip + size - 1) // size * size  # aligned, so ip4:first/prefix is exact
            registered = rng.random() >= UNREGISTERED
            out.append(Domain(f"b{rank}.{DOMAINS}", registered, "~all" if rng.random() < SOFT_ALL else "-all",
                              next_ip, prefix, rng.random() >= SPF_MISSES_OWN, rng.choice((1, 1, 1, 2, 2, 3, 4))))
            next_ip += size
        if next_ip > int(MTA_NET.broadcast_address):
            raise ValueError("too many domains for the mail-server address block")
        return out

    def _class(self, domain: Domain, ip: int) -> str:
        if ip in self.listed:
            return "spammer"
        if not domain.registered:
            return "unregistered"
        own = domain.first_ip <= ip < domain.first_ip + domain.size
        if own and domain.covers_own:
            return "pass"
        return "softfail" if domain.final == "~all" else "fail"

    def zones(self) -> dict[str, str]:
        """Zone files by origin: the registry, the DNSBL (every listed address of the day)
        and the domains' SPF records."""
        soa = f"@ {TTL} SOA ns hostmaster 1 3600 600 86400 {TTL}\n@ {TTL} NS ns\n"
        reg, dnsbl, spf = [soa], [soa], [soa]
        for ip in sorted(self.listed):
            dnsbl.append(f"{'.'.join(reversed(str(ipaddress.IPv4Address(ip)).split('.')))} {TTL} A 127.0.0.2\n")
        for d in self.domains:
            name = d.name.removesuffix("." + DOMAINS)
            if d.registered:
                reg.append(registry_record(d.name, d.spf_depth, TTL))
            own = f"ip4:{ipaddress.IPv4Address(d.first_ip)}/{d.prefix}" if d.covers_own else "ip4:192.0.2.0/24"
            spf += spf_records(name, d.spf_depth, own, d.final, TTL)
        return {REGISTRY: "".join(reg), DNSBL: "".join(dnsbl), DOMAINS: "".join(spf)}

    def faults(self) -> list[str]:
        """Names the DNS server drops: none (the trace has no DNS-timeout senders)."""
        return []

    @property
    def senders(self) -> list[Sender]:
        """One sender per (class, client address, sender domain) of the trace, in order of
        first appearance: what a test decides to check the zones against the classes."""
        seen: dict[tuple[str, str, str], Sender] = {}
        depth = {d.name: d.spf_depth for d in self.domains}
        for r in self.requests:
            domain = r.sender.split("@", 1)[1]
            seen.setdefault((r.cls, r.ip, domain), Sender(r.cls, r.ip, r.helo, domain, depth[domain]))
        return list(seen.values())

    def shape(self) -> dict[str, object]:
        """The figures the issue asks the trace to reach, as measured on it."""
        messages = len({r.message for r in self.requests})
        by_class = Counter(r.cls for r in self.requests)
        return {"messages": messages, "requests": len(self.requests),
                "client_addresses": len({r.ip for r in self.requests}),
                "sender_domains": len({r.sender.split("@", 1)[1] for r in self.requests}),
                "listed_addresses": len(self.listed),
                "classes": {cls: round(n / len(self.requests), 3) for cls, n in sorted(by_class.items())}}


def merge_zones(*sources: dict[str, str]) -> dict[str, str]:
    """Zone texts by origin, each origin's records from every source under the first one's
    SOA and NS (the lines starting ``@``); the traces' names do not overlap."""
    out: dict[str, str] = {}
    for zones in sources:
        for origin, text in zones.items():
            if origin in out:
                text = "".join(line for line in text.splitlines(keepends=True) if not line.startswith("@ "))
            out[origin] = out.get(origin, "") + text
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=400_000)
    parser.add_argument("--domains", type=int, default=30_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    for key, value in BorderWorkload(args.messages, args.domains, args.seed).shape().items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
