"""The shared LMDB layer: sharing across processes, expiry, restart, full map, dead writers."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st

from checkid.engine.dns.cache import LayeredCache, MemoryCache
from checkid.engine.dns.client import DnsAnswer, Outcome
from checkid.engine.checks.spfcheck import SpfOutcome
from checkid.engine.result import Result
from checkid.runtime.lmdbcache import LmdbCache, encode_key


class Clocks:
    def __init__(self) -> None:
        self.mono, self.wall = 100.0, 1_800_000_000.0

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


@pytest.fixture
def clocks():
    return Clocks()


def cache(path, clocks, size_mb=4):
    return LmdbCache(str(path), size_mb, mono=lambda: clocks.mono, wall=lambda: clocks.wall)


TXT = DnsAnswer(Outcome.ANSWER, ((b"v=spf1 ", b"-all"),), 300)


def test_entries_expire_by_wall_clock_and_survive_reopening(tmp_path, clocks):
    c = cache(tmp_path, clocks)
    c.put(("example.com", "TXT"), TXT, clocks.mono + 300)
    c.put(("gone.example", "A"), DnsAnswer(Outcome.NXDOMAIN, (), 60), clocks.mono + 60)
    c.close()
    clocks.advance(100)
    reopened = cache(tmp_path, clocks)  # a restarted daemon: new process, new monotonic origin
    clocks.mono = 5.0
    value, expires = reopened.get_entry(("example.com", "TXT"), clocks.mono)
    assert value == TXT and expires == pytest.approx(5.0 + 200)
    assert reopened.get(("gone.example", "A"), clocks.mono) is None  # its 60 s are over


def test_a_write_in_one_process_is_a_hit_in_another(tmp_path):
    c = LmdbCache(str(tmp_path), 4)
    script = textwrap.dedent(f"""
        import time
        from checkid.runtime.lmdbcache import LmdbCache
        from checkid.engine.dns.client import DnsAnswer, Outcome
        c = LmdbCache({str(tmp_path)!r}, 4)
        c.put(("shared.example", "A"), DnsAnswer(Outcome.ANSWER, ("192.0.2.7",), 600), time.monotonic() + 600)
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    import time
    assert c.get(("shared.example", "A"), time.monotonic()) == DnsAnswer(Outcome.ANSWER, ("192.0.2.7",), 600)


def test_full_map_evicts_and_keeps_serving(tmp_path, clocks):
    c = cache(tmp_path, clocks, size_mb=1)
    big = DnsAnswer(Outcome.ANSWER, ((b"x" * 200,),), 600)
    for i in range(20_000):
        c.put((f"n{i}.example", "TXT"), big, clocks.mono + 600)
        clocks.advance(0.001)
    assert c.evictions > 0
    assert c.get(("n19999.example", "TXT"), clocks.mono) == big  # the newest survived
    assert c.get(("n0.example", "TXT"), clocks.mono) is None     # the oldest went
    assert 0 < len(c) < 20_000


def test_sweep_removes_only_expired(tmp_path, clocks):
    c = cache(tmp_path, clocks)
    c.put(("a", "A"), TXT, clocks.mono + 10)
    c.put(("b", "A"), TXT, clocks.mono + 1000)
    clocks.advance(11)
    assert c.sweep() == 1
    assert len(c) == 1 and c.get(("b", "A"), clocks.mono) == TXT


def test_layered_over_memory_promotes_shared_hits(tmp_path, clocks):
    shared = cache(tmp_path, clocks)
    shared.put(("example.com", "TXT"), TXT, clocks.mono + 300)
    front = MemoryCache(10)
    layered = LayeredCache(front, shared)
    assert layered.get(("example.com", "TXT"), clocks.mono) == TXT
    assert front.get(("example.com", "TXT"), clocks.mono) == TXT


def test_a_writer_killed_mid_transaction_does_not_block_others(tmp_path):
    LmdbCache(str(tmp_path), 4).close()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from checkid.runtime.lmdbcache import LmdbCache
        c = LmdbCache({str(tmp_path)!r}, 4)
        txn = c.env.begin(write=True)
        txn.put(b"half", b"written")
        print("holding", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
    finally:
        holder.stdout.close()
        if holder.poll() is None:
            holder.kill()
    writer = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from checkid.runtime.lmdbcache import LmdbCache
        from checkid.engine.dns.client import DnsAnswer, Outcome
        c = LmdbCache({str(tmp_path)!r}, 4)
        c.reader_check()
        c.put(("after", "A"), DnsAnswer(Outcome.ANSWER, ("192.0.2.1",), 60), time.monotonic() + 60)
        with c.env.begin() as txn:
            print(txn.get(b"half"))
        print(len(c))
    """)], capture_output=True, text=True, timeout=30)
    assert writer.returncode == 0, writer.stderr
    assert writer.stdout.split() == ["None", "1"]  # the dead writer's put never happened


def test_an_spf_outcome_is_shared_through_the_layer(tmp_path, clocks):
    c = cache(tmp_path, clocks)
    outcome = SpfOutcome(Result.SOFTFAIL, "not quite", "softfail (example.com: ...)")
    c.put(("spf", "192.0.2.1", "example.com"), outcome, clocks.mono + 60)
    c.close()
    assert cache(tmp_path, clocks).get(("spf", "192.0.2.1", "example.com"), clocks.mono) == outcome


@given(st.tuples(st.text(max_size=600), st.text(max_size=10)))
def test_keys_fit_lmdb(key):
    assert 0 < len(encode_key(key)) <= 500


def test_cache_files_are_created_for_the_run_user_only(tmp_path, clocks):
    """The cache says which senders talk to the site: not 0644, whatever the umask."""
    old = os.umask(0o002)
    try:
        c = cache(tmp_path / "cache", clocks)
    finally:
        os.umask(old)
    c.put(("TXT", "example.com"), TXT, clocks.mono + 300)
    assert (tmp_path / "cache").stat().st_mode & 0o777 == 0o750
    for name in ("data.mdb", "lock.mdb"):
        assert (tmp_path / "cache" / name).stat().st_mode & 0o777 == 0o640


def test_an_older_cache_readable_by_all_is_tightened(tmp_path, clocks):
    c = cache(tmp_path / "cache", clocks)
    c.put(("TXT", "example.com"), TXT, clocks.mono + 300)
    c.close()
    os.chmod(tmp_path / "cache", 0o777)
    for name in ("data.mdb", "lock.mdb"):
        os.chmod(tmp_path / "cache" / name, 0o666)
    again = cache(tmp_path / "cache", clocks)
    assert again.get(("TXT", "example.com"), clocks.mono) == TXT  # the entries are kept
    assert (tmp_path / "cache").stat().st_mode & 0o777 == 0o750
    assert {(tmp_path / "cache" / n).stat().st_mode & 0o777 for n in ("data.mdb", "lock.mdb")} == {0o640}
