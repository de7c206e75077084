"""Prometheus metrics, aggregated across worker processes (multiprocess mode).

The hot path only bumps plain counters (the engine's and the front-ends', keyed
``(name, *labels)``); each worker copies their growth into Prometheus once a tick
(:meth:`Exporter.sync`), so a decision pays no mmap write for them. Latency histograms are
observed directly (the Exporter is the engine's observer).

``PROMETHEUS_MULTIPROC_DIR`` must be set before this module is imported
(:func:`prepare_dir`, called by the runtime before it imports anything that imports this).
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from checkid.runtime import metricfiles
from checkid.throttle import LogThrottle, left_out

log = logging.getLogger(__name__)

#: counter name -> (help, label names); exported as ``checkid_<name>_total``
COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "decisions": ("Decisions by front-end, action and deciding stage", ("frontend", "action", "stage")),
    "bad_input": ("Transactions refused for unusable input", ()),
    "policy_errors": ("Decisions the policy file failed to make (answered 451 4.3.5)", ()),
    "temperrors": ("DNS temporary errors that decided a transaction, by stage", ("stage",)),
    "dns_queries": ("DNS queries sent, by type and outcome", ("type", "outcome")),
    "cache_lookups": ("DNS cache lookups by layer and result", ("layer", "result")),
    "dns_prefetches": ("DNS lookups started ahead of need, in parallel with the one awaited", ("type",)),
    "list_hits": ("IP list hits by stage (prescreen, blacklist) and list", ("stage", "list")),
    "dnsbl_error_answers": ("DNSBL error answers (127.255.255.0/24), never listings", ("zone",)),
    "dnsbl_unknown_answers": ("DNSBL answers outside the configured codes", ("zone",)),
    "dnsbl_lookup_errors": ("DNSBL lookups that timed out or failed", ("zone",)),
    "registry_lookups": ("Registry lookups by outcome", ("outcome",)),
    "spf_results": ("SPF results", ("result",)),
    "connections": ("Connections accepted, by front-end", ("frontend",)),
    "protocol_errors": ("Connections closed because the peer broke the protocol", ("frontend",)),
    "internal_errors": ("Requests that failed inside checkid", ("frontend",)),
    "policy_reloads": ("Policy files loaded after an edit", ()),
    "policy_reload_failures": ("Policy files refused on reload (the last good one keeps serving)", ()),
    "config_reloads": ("Configuration reloads by result", ("result",)),
    "worker_restarts": ("Workers replaced by the master, by reason", ("reason",)),
    "smtp_sessions": ("Front-door sessions greeted (the backend reachable)", ()),
    "smtp_transactions": ("Front-door transactions (MAIL commands taken up) by outcome: relayed, rejected, "
                          "tempfailed, discarded, aborted", ("outcome",)),
    "smtp_relay_errors": ("Front-door backend failures by kind: connect, refused, timeout, lost, protocol, tls",
                          ("kind",)),
    "smtp_relayed_bytes": ("Message bytes the front door wrote to backends (dot-stuffed, headers included)", ()),
    "smtp_refused": ("Front-door connections refused with 421 by a cap (max_connections, max_per_ip)",
                     ("cap",)),
    "smtp_timeouts": ("Front-door sessions ended by a timeout (idle, session)", ("kind",)),
    "smtp_tls_handshakes": ("Front-door TLS handshakes by side (client, backend) and result (ok, failed)",
                            ("side", "result")),
    "smtp_starttls_pipelined": ("STARTTLS commands with plaintext pipelined behind them, dropped "
                                "(CVE-2011-0411)", ()),
    "forged_headers_removed": ("Header fields a client may not bring ([headers] remove) deleted from incoming "
                               "messages, by front-end", ("frontend",)),
    "forged_headers_kept": ("Forged header fields that could not be deleted (the milter was not granted "
                            "header changes), by front-end", ("frontend",)),
    "dkim_signatures": ("DKIM signatures verified, by result", ("result",)),
    "dkim_signatures_ignored": ("DKIM signatures past [dkim] max_signatures, not verified", ()),
    "report_mode_refusals": ("Refusals report mode delivered instead ([policy] mode = \"report\"), by front-end "
                             "and would-be action", ("frontend", "action")),
    "skipped": ("Transactions accepted unchecked by a [prescreen] skip list, by reason", ("reason",)),
    "limits_exceeded": ("Connections closed because the peer passed a bound on what one connection may hold "
                        "(also counted in protocol_errors), by front-end and bound", ("frontend", "limit")),
    "codec_exceptions": ("Unexpected exceptions a front-end's codec raised on a peer's input; the connection was "
                         "closed as a protocol error (also counted in protocol_errors)", ("frontend",)),
    "fleet_fallbacks": ("Fleet Redis calls that failed or ran out of [fleet] budget_ms, by operation (subscribe, "
                        "load, count, block, publish, max_blocks); the worker carried on local-only", ("op",)),
    "fleet_blocks_learned": ("Fleet pre-screen blocks learned, by kind (ip, net)", ("kind",)),
    "fleet_rejections_dropped": ("Rejections not counted by the fleet: the queue to Redis was full", ()),
    "accept_wakeups": ("Wake-ups of a worker on a shared listening socket that took no connection, by front-end "
                       "and why (empty: another worker had taken it; deferred: left to a less-loaded worker, "
                       "counted once per connection)", ("frontend", "why")),
    "dns_unreachable": ("DNS queries whose nameserver host or port was unreachable (ICMP), failed over at once", ()),
    "accept_errors": ("Accepts that failed for want of descriptors or memory, by error (EMFILE, ENFILE, ENOBUFS, "
                      "ENOMEM, other); accepting pauses and the connections wait in the kernel's queue", ("error",)),
    "metrics_connections_closed": ("Metrics endpoint connections closed by checkid, by reason (cap: the oldest, to "
                                   "admit a new one; timeout; too_large)", ("reason",)),
    "connections_refused": ("Connections refused at accept, by front-end and reason (max_connections: the "
                            "worker's cap for that listener; budget: the worker's bytes of unfinished requests)",
                            ("frontend", "reason")),
    "request_timeouts": ("Connections closed because one request took longer than [server] request_timeout "
                         "from its first byte to its last", ("frontend",)),
    "dns_answers_ignored": ("DNS answers dropped as matching no query waiting (another source, an unknown id, "
                            "another question, malformed), by reason", ("reason",)),
    "degraded": ("Faults survived by running with less, by what (cache_corrupt: a shared cache file that "
                 "was not LMDB, set aside and made anew; cache_open: no shared cache; cache_write: a write "
                 "to it failed; metrics_dir: the metrics directory unusable, a private one used instead; "
                 "metrics_write: no room for a process's metric file, or for a new series in it, kept in "
                 "memory unexported; state_write: a file the master writes in the state directory (master.json, "
                 "a worker's heartbeat) could not be written)",
                 ("what",)),
}

#: every ``what`` of ``degraded``: each series made (at 0) with the Exporter, while its metric
#: file has room, so that a fault later on a full disk is still counted where it is exported
DEGRADED = ("cache_corrupt", "cache_open", "cache_write", "metrics_dir", "metrics_write", "state_write")

#: 50 µs to 10 s
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


#: faults survived before this process made its :class:`Exporter` (the master checks its
#: cache and metrics directory first), counted by it when it is made
_pending: Counter[str] = Counter()
#: the process's Exporter, once made: where :func:`degraded` counts
_exporter: "Exporter | None" = None
#: one log line per kind of degradation per interval: a full disk fails every cache write
_throttles: dict[str, LogThrottle] = {}


def degraded(what: str, message: str, *args: object) -> None:
    """Count one fault survived by running with less (``degraded{what}``) and log ``message``
    (lazy ``%s`` ``args``) as a warning, at most once per interval for each ``what``. Never
    raises: a fault in counting must not become a fault in deciding."""
    throttle = _throttles.setdefault(what, LogThrottle())
    suppressed = throttle.ready(time.monotonic())
    if suppressed is not None:
        log.warning(message + "%s", *args, left_out(suppressed))
    if _exporter is None:
        _pending[what] += 1
        return
    try:
        _exporter.counters["degraded"].labels(what).inc()
    except (OSError, ValueError):  # the metric files themselves cannot be written
        pass


def prepare_dir(path: str) -> str:
    """Empty the metrics directory of the last run's files and point prometheus_client at
    it. Only ``*.db`` metric files are removed, whatever directory is configured.

    A directory that cannot be used (a file in its place, a read-only mount, no space) does
    not stop the daemon: the metrics go to a private directory under the system's temporary
    one instead, with a warning and ``degraded{what="metrics_dir"}``.

    :returns: the directory the metric files go to
    """
    try:
        _prepare(Path(path))
    except OSError as e:
        fallback = tempfile.mkdtemp(prefix="checkid-metrics-")  # 0700, ours alone
        degraded("metrics_dir", "metrics directory %s cannot be used (%s): metrics go to %s instead",
                 path, e.strerror or e, fallback)
        path = fallback
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    # imported now, before the master drops its privileges: it needs this module as it reaps
    # workers, and the user it becomes may not be able to read the Python installation
    import prometheus_client.multiprocess  # noqa: F401

    # every metric file's blocks reserved before prometheus_client maps it: a full disk
    # would otherwise kill the process that next stores a value (SIGBUS)
    metricfiles.install()
    return path


def report_file_faults() -> None:
    """Log (throttled) and count the metric files found without room since the last call
    (:mod:`checkid.runtime.metricfiles` only notes them: it finds them inside
    prometheus_client's lock). Called once a tick, outside that lock."""
    for path, failed, error in metricfiles.take_faults():
        if failed == "create":
            degraded("metrics_write", "metric file %s cannot be made (%s): its series are kept in memory, "
                     "not exported", path, error)
        else:
            degraded("metrics_write", "metric file %s cannot grow (%s): its new series are kept in memory, "
                     "not exported", path, error)


#: a probe file :func:`_prepare` writes, so a directory that lists but cannot be written
#: (a read-only mount; modes do not stop root) is found at start, not at the first metric
PROBE = ".checkid-probe"


def _prepare(directory: Path) -> None:
    """:raises OSError: when ``directory`` cannot be made, emptied or written"""
    # 0750: the metric files name what the site sees; prometheus_client makes them 0644
    directory.mkdir(parents=True, mode=0o750, exist_ok=True)
    os.chmod(directory, 0o750)
    for stale in directory.glob("*.db"):
        stale.unlink()
    probe = directory / PROBE
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        # blocks really allocated: prometheus_client maps its files, and a page of a mapped
        # file with no room behind it kills the process with SIGBUS instead of an error
        os.posix_fallocate(fd, 0, 1 << 16)
    finally:
        os.close(fd)
        probe.unlink()


class Exporter:
    """The metric objects of one process."""

    def __init__(self) -> None:
        import prometheus_client as prom

        self.counters = {
            name: prom.Counter(f"checkid_{name}", help_text, labels, registry=None)
            for name, (help_text, labels) in COUNTERS.items()
        }
        self.decision_seconds = prom.Histogram(
            "checkid_decision_duration_seconds", "Time to decide one transaction", ("frontend",),
            buckets=LATENCY_BUCKETS, registry=None)
        self.dns_seconds = prom.Histogram(
            "checkid_dns_query_duration_seconds", "Time of one DNS query sent upstream", ("type",),
            buckets=LATENCY_BUCKETS, registry=None)
        self.open_connections = prom.Gauge(
            "checkid_open_connections", "Connections open now, by front-end", ("frontend",),
            multiprocess_mode="livesum", registry=None)
        self.workers = prom.Gauge("checkid_workers", "Workers running", multiprocess_mode="livemax",
                                  registry=None)
        #: made at the first :meth:`sync` that reports one: a site without ``[fleet]`` shows none
        self.fleet_up: prom.Gauge | None = None
        self._decision_children: dict[str, prom.Histogram] = {}
        self._synced: Counter[tuple[str, ...]] = Counter()
        self._children: dict[tuple[str, ...], object] = {}
        self._frontends: set[str] = set()
        for what in DEGRADED:
            self.counters["degraded"].labels(what)
        global _exporter
        _exporter = self
        for what, n in _pending.items():
            self.counters["degraded"].labels(what).inc(n)
        _pending.clear()
        report_file_faults()

    def sync(self, counts: Mapping[tuple[str, ...], int], open_connections: Mapping[str, int] | None = None,
             fleet_up: bool | None = None) -> None:
        """Add what ``counts`` gained since the last call to the Prometheus counters, and
        set the open connections per front-end (0 for one no longer listed) and, with
        ``[fleet]`` (``fleet_up`` not None), whether this process follows the fleet; report
        the metric files found without room meanwhile."""
        report_file_faults()
        for key, value in counts.items():
            delta = value - self._synced[key]
            if delta > 0:
                child = self._children.get(key)
                if child is None:
                    metric = self.counters.get(key[0])
                    if metric is None:
                        continue
                    child = metric.labels(*key[1:]) if key[1:] else metric
                    self._children[key] = child
                child.inc(delta)  # type: ignore[attr-defined]
                self._synced[key] = value
        now_open = open_connections or {}
        self._frontends.update(now_open)
        for frontend in self._frontends:
            self.open_connections.labels(frontend).set(now_open.get(frontend, 0))
        if fleet_up is not None:
            if self.fleet_up is None:
                import prometheus_client as prom

                # livemin: 0 as soon as any live worker is local-only
                self.fleet_up = prom.Gauge("checkid_fleet_up", "1 while every worker follows the fleet state on "
                                           "Redis ([fleet]), 0 while any is local-only",
                                           multiprocess_mode="livemin", registry=None)
            self.fleet_up.set(1 if fleet_up else 0)

    def observe_decision(self, frontend: str, seconds: float) -> None:
        # the child per front-end kept: labels() takes a lock and a dict lookup per call
        child = self._decision_children.get(frontend)
        if child is None:
            child = self._decision_children[frontend] = self.decision_seconds.labels(frontend)
        child.observe(seconds)

    def observe_dns(self, rdtype: str, seconds: float) -> None:
        self.dns_seconds.labels(rdtype).observe(seconds)


def render() -> tuple[bytes, str]:
    """The merged exposition of every process's metrics: ``(body, content type)``."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry), CONTENT_TYPE_LATEST


def mark_dead(pid: int) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)
