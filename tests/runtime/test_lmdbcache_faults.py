"""The shared LMDB layer under faults: a corrupt file at open, a full disk. Each is survived,
logged and counted (``degraded{what}``), and the engine's memory layer keeps serving."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from checkid.engine.dns.client import DnsAnswer, Outcome
from checkid.runtime import lmdbcache
from checkid.runtime.lmdbcache import LmdbCache

TXT = DnsAnswer(Outcome.ANSWER, ((b"v=spf1 -all",),), 300)


@pytest.fixture
def degradations(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    monkeypatch.setattr(lmdbcache, "degraded", lambda what, *_: seen.append(what))
    return seen


def test_a_corrupt_cache_file_is_set_aside_and_made_anew(tmp_path: Path, degradations: list[str]) -> None:
    path = tmp_path / "cache"
    path.mkdir()
    garbage = os.urandom(65536)
    (path / "data.mdb").write_bytes(garbage)
    cache = LmdbCache(str(path), 1)
    cache.put(("example.com", "TXT"), TXT, expires=1e12)
    assert cache.get(("example.com", "TXT"), now=0.0) == TXT
    cache.close()
    assert degradations == ["cache_corrupt"]
    kept = [p for p in path.iterdir() if p.name.startswith("data.mdb.corrupt-")]
    assert len(kept) == 1 and kept[0].read_bytes() == garbage  # kept for a look, never read


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (CI runs as root); unmounted after the test."""
    where = tmp_path / "disk"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


FILL = textwrap.dedent("""
    import sys
    from checkid.engine.dns.client import DnsAnswer, Outcome
    from checkid.runtime import lmdbcache
    seen = []
    lmdbcache.degraded = lambda what, *_: seen.append(what)
    cache = lmdbcache.LmdbCache(sys.argv[1], 64)  # a map far larger than the disk
    big = DnsAnswer(Outcome.ANSWER, ((b"x" * 3000,),), 300)
    for i in range(2000):  # 6 MB of entries onto a 1 MiB disk
        cache.put((f"n{i}.example", "TXT"), big, expires=1e12)
    cache.sweep()
    print(cache.errors, len(set(seen)), seen[:1])
""")


def test_a_full_disk_fails_writes_without_killing_the_process(small_disk: Path) -> None:
    # a child process, so that a SIGBUS (a mapped page with no room behind it) is a return code
    done = subprocess.run([sys.executable, "-c", FILL, str(small_disk / "cache")], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-2000:]
    errors, kinds, first = done.stdout.split(maxsplit=2)
    assert int(errors) > 0 and int(kinds) == 1 and "cache_write" in first
