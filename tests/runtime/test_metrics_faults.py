"""A metrics directory that cannot be written (a file in its place, a read-only mount: root
ignores modes) does not stop the daemon: a private one serves, the fault logged and counted."""
from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from checkid.runtime import metrics


@pytest.fixture
def multiproc_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """PROMETHEUS_MULTIPROC_DIR restored after the test; the fallback folders made, removed."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")
    made: list[str] = []
    yield made
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "ro"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def _blocked(tmp_path: Path, kind: str, read_only: Path) -> Path:
    if kind == "file":
        (tmp_path / "metrics").write_text("not a directory")
        return tmp_path / "metrics"
    return read_only


@pytest.mark.parametrize("kind", ["file", "read-only mount"])
def test_an_unusable_metrics_directory_gives_way_to_a_private_one(
        tmp_path: Path, kind: str, read_only: Path, multiproc_env: list[str],
        caplog: pytest.LogCaptureFixture) -> None:
    blocked = _blocked(tmp_path, kind, read_only)
    before = metrics._pending["metrics_dir"]
    with caplog.at_level(logging.WARNING, logger="checkid.runtime.metrics"):
        metrics._throttles.clear()
        used = metrics.prepare_dir(str(blocked))
    multiproc_env.append(used)
    assert used != str(blocked) and os.environ["PROMETHEUS_MULTIPROC_DIR"] == used
    assert stat.S_IMODE(os.stat(used).st_mode) == 0o700  # the private one is ours alone
    (Path(used) / "counter_1.db").write_bytes(b"x")  # writable
    assert any("metrics directory" in r.getMessage() and used in r.getMessage() for r in caplog.records)
    assert metrics._pending["metrics_dir"] == before + 1  # counted by the Exporter made next


def test_a_usable_metrics_directory_is_used(tmp_path: Path, multiproc_env: list[str]) -> None:
    assert metrics.prepare_dir(str(tmp_path / "m")) == str(tmp_path / "m")
    assert not (tmp_path / "m" / metrics.PROBE).exists()
