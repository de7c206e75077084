"""A synthetic sender population and request trace, reproducible from a seed.

Senders have Zipf popularity (a few send most of the mail) and fall into set fractions:
DNSBL-listed heavy spammers, registered IDs that pass, registered IDs that fail, unregistered
senders, SPF softfail, and DNS timeouts. The generator writes the zone files those senders
need — a registry zone, a DNSBL zone and SPF records with includes and redirects of
realistic depth — a faults file (names the test DNS server never answers) and the trace.

    .venv/bin/python -m bench.workload --out /tmp/wl --senders 2000 --requests 50000 --seed 1
"""
from __future__ import annotations

import argparse
import bisect
import ipaddress
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

REGISTRY = "reg.bench.test"
DNSBL = "dnsbl.bench.test"
DOMAINS = "senders.bench.test"

#: class -> share of the sender population
FRACTIONS = {
    "spammer": 0.10,         # on the DNSBL: rejected at the pre-screen
    "pass": 0.45,            # registered, SPF passes
    "fail": 0.10,            # registered, SPF fails: rejected (authoritative record)
    "unregistered": 0.20,    # no registry record: filtered
    "softfail": 0.10,        # registered, SPF ~all: filtered
    "timeout": 0.05,         # registered, SPF lookup never answered: tempfail
}


@dataclass(frozen=True)
class Sender:
    cls: str
    ip: str
    helo: str
    domain: str
    #: DNS lookups its SPF evaluation needs (the record and its include/redirect chain)
    spf_depth: int


@dataclass(frozen=True)
class Request:
    cls: str
    ip: str
    helo: str
    sender: str
    rcpt: str
    #: the message it belongs to: requests of one message (one per recipient) share it
    message: int = 0


def registry_record(domain: str, spf_depth: int, ttl: int) -> str:
    """The registry zone's line for a registered ``domain`` (SPF1 with its lookup count)."""
    return f'{domain} {ttl} TXT "mth=SPF1+{spf_depth + 1} svc=S1:A,M2:A,H1:B"\n'


def spf_records(name: str, depth: int, allow: str, final: str, ttl: int) -> list[str]:
    """The SPF zone's lines for ``name`` (relative to DOMAINS), ``depth`` lookups deep: its
    record includes _spf1, which redirects to _spf2, ..., the last allowing ``allow``;
    ``final`` (``-all``, ``~all``) ends the domain's own record."""
    chain = [f"_spf{k}.{name}" for k in range(1, depth)]
    if not chain:
        return [f'{name} {ttl} TXT "v=spf1 {allow} {final}"\n']
    out = [f'{name} {ttl} TXT "v=spf1 include:{chain[0]}.{DOMAINS} {final}"\n']
    for k, link in enumerate(chain):
        nxt = f"redirect={chain[k + 1]}.{DOMAINS}" if k + 1 < len(chain) else f"{allow} -all"
        out.append(f'{link} {ttl} TXT "v=spf1 {nxt}"\n')
    return out


class Workload:
    def __init__(self, senders: int = 2000, requests: int = 50_000, seed: int = 1, zipf: float = 1.1) -> None:
        rng = random.Random(seed)
        classes = [c for c, share in FRACTIONS.items() for _ in range(max(1, round(share * senders)))]
        rng.shuffle(classes)
        network = ipaddress.IPv4Network("100.64.0.0/10")  # shared address space: never a real sender
        self.senders = [self._sender(i, cls, network, rng) for i, cls in enumerate(classes[:senders])]
        weights = [1 / (rank + 1) ** zipf for rank in range(len(self.senders))]
        cumulative, total = [], 0.0
        for w in weights:
            total += w
            cumulative.append(total)
        self.requests = []
        for n in range(requests):
            s = self.senders[min(len(self.senders) - 1, bisect.bisect(cumulative, rng.random() * total))]
            self.requests.append(Request(s.cls, s.ip, s.helo, f"u{n % 97}@{s.domain}", f"user{n % 13}@example.org", n))

    @staticmethod
    def _sender(i: int, cls: str, network: ipaddress.IPv4Network, rng: random.Random) -> Sender:
        ip = str(network[1 + i])
        domain = f"d{i}.{DOMAINS}"
        depth = rng.choice((1, 1, 2, 2, 3, 4)) if cls in ("pass", "fail", "softfail") else 1
        return Sender(cls, ip, domain, domain, depth)

    def zones(self) -> dict[str, str]:
        """Zone files by origin: registry, DNSBL and the senders' SPF data."""
        # TTLs of an hour: longer than a bench run, so warm rows stay warm (cold.py decides each
        # sender once, so no TTL matters there)
        soa = "@ 3600 SOA ns hostmaster 1 3600 600 86400 300\n@ 3600 NS ns\n"
        reg, dnsbl, spf = [soa], [soa], [soa]
        for s in self.senders:
            name = s.domain.removesuffix("." + DOMAINS)
            if s.cls == "spammer":
                dnsbl.append(f"{'.'.join(reversed(s.ip.split('.')))} 3600 A 127.0.0.2\n")
            if s.cls != "unregistered":
                reg.append(registry_record(s.domain, s.spf_depth, 3600))
            allow = f"ip4:{s.ip}" if s.cls in ("pass", "timeout") else "ip4:192.0.2.0/24"
            final = {"softfail": "~all", "pass": "-all", "timeout": "-all"}.get(s.cls, "-all")
            spf += spf_records(name, s.spf_depth, allow, final, 3600)
        return {REGISTRY: "".join(reg), DNSBL: "".join(dnsbl), DOMAINS: "".join(spf)}

    def faults(self) -> list[str]:
        """Names the DNS server drops: the SPF records of the 'timeout' senders."""
        return [s.domain for s in self.senders if s.cls == "timeout"]

    def write(self, out: Path) -> None:
        zones = out / "zones"
        zones.mkdir(parents=True, exist_ok=True)
        for origin, text in self.zones().items():
            (zones / f"{origin}.zone").write_text(text)
        (out / "faults.json").write_text(json.dumps(self.faults()))
        with open(out / "trace.jsonl", "w") as f:
            for r in self.requests:
                f.write(json.dumps(asdict(r)) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--senders", type=int, default=2000)
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    Workload(args.senders, args.requests, args.seed).write(args.out)


if __name__ == "__main__":
    main()
