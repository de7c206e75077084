"""The master on a faulty disk (issue 14): master.json that cannot be written is a throttled,
counted degradation, not a warning every pass; a metrics directory that gave way is the one
the master hands to its run user and names in master.json; a worker's heartbeat needs no room
on the disk."""
from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from checkid.config import Config
from checkid.runtime import control, metrics
from checkid.runtime.supervisor import Master
from testsupport.disk import fill, tmpfs
from testsupport.processes import Checkid, free_port, wait_until, world_readable_tmpdir

SECONDS = 30.0


def master_in(state_dir: Path) -> Master:
    config = Config()
    return Master(dataclasses.replace(config, server=dataclasses.replace(config.server, state_dir=str(state_dir))))


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs, filled to its last block."""
    with tmpfs(tmp_path / "state", "size=256k") as where:
        fill(where)
        yield where


def test_a_workers_heartbeat_needs_no_room_in_the_state_directory(full_disk: Path) -> None:
    with master_in(full_disk)._heartbeat_file() as heartbeat:
        # what a new worker writes first: it died of ENOSPC when its file was on the full disk
        os.pwrite(heartbeat.fileno(), control.encode_status(control.WorkerStatus(True, 0, 0)), 0)
        assert control.decode_status(os.pread(heartbeat.fileno(), control.STATUS_SIZE, 0)).serving


def test_no_room_for_a_heartbeat_file_delays_the_worker_not_the_master(
        full_disk: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def refused(name: str) -> int:
        raise PermissionError(1, "Operation not permitted")  # a seccomp filter without memfd_create
    monkeypatch.setattr(os, "memfd_create", refused)
    monkeypatch.setattr(metrics, "_exporter", None)
    monkeypatch.setattr(metrics, "_throttles", {})
    master = master_in(full_disk)
    before = metrics._pending["state_write"]
    with caplog.at_level(logging.WARNING):
        master.spawn_worker(0)  # no fork: it gave up before
    assert not master.workers
    assert master.slots[0].not_before > 0
    assert metrics._pending["state_write"] == before + 1
    assert any("heartbeat" in r.getMessage() for r in caplog.records)
    assert [p.name for p in full_disk.iterdir()] == ["filler"]  # nothing left behind


def test_a_state_file_that_cannot_be_written_is_logged_once_and_counted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "file").write_text("a file where the state directory's parent should be")
    master = master_in(tmp_path / "file" / "state")
    monkeypatch.setattr(metrics, "_exporter", None)  # counted in the pending faults, readable here
    monkeypatch.setattr(metrics, "_throttles", {})
    before = metrics._pending["state_write"]
    passes = 40
    with caplog.at_level(logging.WARNING):
        for n in range(passes):  # one pass every 250 ms: ten seconds of a full disk
            master.generation = n  # a state that changed: each pass tries to write it
            master.publish()
    lines = [r for r in caplog.records if "master.json" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert metrics._pending["state_write"] == before + passes


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = world_readable_tmpdir("checkid-supervisor-faults-")
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


def test_master_json_names_the_metrics_directory_really_used(workdir: Path) -> None:
    blocked = workdir / "metrics"
    blocked.write_text("a file where the metrics directory should be")
    port = free_port()
    toml = f"""
[[listen]]
protocol = "policy"
address = "127.0.0.1:{port}"
[server]
workers = 1
state_dir = "{workdir / "state"}"
[metrics]
address = "127.0.0.1:{free_port()}"
dir = "{blocked}"
"""
    checkid = Checkid(toml, workdir, [port]).start()
    try:
        state = wait_until(lambda: control.read_json(workdir / "state" / control.STATE_FILE), "master.json", SECONDS)
        used = Path(state["metrics_dir"])
        assert used != blocked and used.is_dir()
        assert wait_until(lambda: list(used.glob("*.db")), "metric files in the directory named", SECONDS)
    finally:
        checkid.stop()
        for word in checkid.log.read_text().split():  # the private directory, named in its log line
            if word.startswith("/tmp/checkid-metrics-"):
                subprocess.run(["rm", "-rf", word], check=False)
