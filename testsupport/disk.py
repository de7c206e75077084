"""Small disks for fault tests: a tmpfs mounted for the length of a test (CI runs as root),
and filling one to its last block."""
from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def tmpfs(where: Path, options: str) -> Iterator[Path]:
    """``where`` (made if need be) with a tmpfs mounted on it (``mount -o options``), unmounted
    afterwards whatever happened."""
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(where: Path) -> None:
    """Write ``where``/filler until its file system has no block left (unbuffered: the
    last write's failure is the end, with nothing left to flush)."""
    with open(where / "filler", "ab", buffering=0) as filler:
        try:
            while True:
                filler.write(b"\0" * 4096)
        except OSError:
            pass
