"""Fixtures of the runtime tests."""
from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture
def root_logger() -> Iterator[None]:
    """setup_logging replaces the root logger's handlers: put the test runner's back."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    switches = logging.logThreads, logging.logProcesses, logging.logMultiprocessing
    yield
    logging.logThreads, logging.logProcesses, logging.logMultiprocessing = switches
    for handler in root.handlers:
        if handler not in saved[0]:
            handler.close()
    root.handlers[:], level = saved
    root.setLevel(level)
