"""Reopening the log file (SIGUSR1), in-process."""
from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from checkid.runtime import logs


@pytest.fixture
def file_handler(tmp_path: Path) -> Iterator[logging.FileHandler]:
    handler = logging.FileHandler(tmp_path / "dir" / "checkid.log", delay=True)
    (tmp_path / "dir").mkdir()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    yield handler
    handler.close()
    root.handlers[:], level = saved
    root.setLevel(level)


def test_reopen_logs_opens_a_new_file_after_a_rotation(tmp_path: Path, file_handler: logging.FileHandler) -> None:
    log = logging.getLogger("checkid.test")
    log.info("before")
    rotated = tmp_path / "checkid.log.1"
    Path(file_handler.baseFilename).rename(rotated)
    logs.reopen_logs()
    log.info("after")
    file_handler.flush()
    assert "after" in Path(file_handler.baseFilename).read_text()
    assert "after" not in rotated.read_text()


def test_reopen_logs_keeps_the_open_file_when_the_new_one_cannot_be_created(
        tmp_path: Path, file_handler: logging.FileHandler) -> None:
    log = logging.getLogger("checkid.test")
    log.info("before")
    rotated = tmp_path / "checkid.log.1"
    Path(file_handler.baseFilename).rename(rotated)
    Path(file_handler.baseFilename).parent.rmdir()  # the new file cannot be created
    logs.reopen_logs()  # does not raise
    log.info("after")
    file_handler.flush()
    text = rotated.read_text()
    assert "cannot reopen the log file" in text and "after" in text
