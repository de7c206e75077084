"""The log file flushed once per event-loop turn: no line waits past the turn that wrote
it, none is lost at exit (``exit_now``: ``os._exit`` after ``logging.shutdown``)."""
from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from checkid.config import from_dict
from checkid.runtime import logs
pytestmark = pytest.mark.usefixtures("root_logger")

#: bound on the child process that logs and exits
CHILD_SECONDS = 60
ROOT = Path(__file__).resolve().parents[2]


def setup(tmp_path: Path) -> Path:
    path = tmp_path / "checkid.log"
    logs.setup_logging(from_dict({"server": {"state_dir": str(tmp_path), "log_file": str(path)}}))
    return path


def test_a_line_logged_with_no_loop_running_is_in_the_file_at_once(tmp_path: Path) -> None:
    path = setup(tmp_path)
    logging.getLogger("checkid.test").info("no loop")
    assert path.read_text().endswith(" INFO checkid.test: no loop\n")


def test_lines_of_one_loop_turn_are_in_the_file_when_the_turn_ends(tmp_path: Path) -> None:
    path = setup(tmp_path)
    log = logging.getLogger("checkid.test")

    async def main() -> list[str]:
        for n in range(100):
            log.info("line %d", n)
        await asyncio.sleep(0)  # the turn ends
        return path.read_text().splitlines()

    lines = asyncio.run(main())
    assert [line.rsplit(" ", 1)[1] for line in lines] == [str(n) for n in range(100)]


def test_a_warning_is_in_the_file_before_the_turn_ends(tmp_path: Path) -> None:
    path = setup(tmp_path)
    log = logging.getLogger("checkid.test")

    async def main() -> str:
        log.info("before")
        log.warning("about to hang")  # a hung worker's SIGABRT would end the turn here
        return path.read_text()

    text = asyncio.run(main())
    assert text.endswith(" WARNING checkid.test: about to hang\n") and " INFO checkid.test: before\n" in text


def test_the_loop_stopping_before_the_flush_loses_nothing(tmp_path: Path) -> None:
    path = setup(tmp_path)
    log = logging.getLogger("checkid.test")

    async def log_last() -> None:
        log.info("last of the loop")

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(log_last())
    finally:
        loop.close()  # the flush it had scheduled never runs
    log.info("after the loop")
    assert path.read_text().splitlines()[-2:][0].endswith("last of the loop")
    assert path.read_text().endswith("after the loop\n")


def test_a_line_written_just_before_exit_now_is_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "checkid.log"
    script = textwrap.dedent(f"""
        import asyncio, logging
        from checkid.config import from_dict
        from checkid.runtime import logs
        from checkid.runtime.process import exit_now
        logs.setup_logging(from_dict({{"server": {{"state_dir": {str(tmp_path)!r}, "log_file": {str(path)!r}}}}}))
        async def main():
            logging.getLogger("checkid.decision").info("policy ip=192.0.2.1 action=DUNNO")
            exit_now(0)  # within the loop turn: the flush it scheduled never runs
        asyncio.run(main())
    """)
    done = subprocess.run([sys.executable, "-c", script], timeout=CHILD_SECONDS, capture_output=True, text=True,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert path.read_text().endswith(" INFO checkid.decision: policy ip=192.0.2.1 action=DUNNO\n")


def test_reopen_moves_on_without_losing_the_turns_lines(tmp_path: Path) -> None:
    path = setup(tmp_path)
    log = logging.getLogger("checkid.test")

    async def main() -> None:
        log.info("before the rotation")
        path.rename(tmp_path / "checkid.log.1")
        logs.reopen_logs()
        log.info("after the rotation")
        await asyncio.sleep(0)

    asyncio.run(main())
    assert (tmp_path / "checkid.log.1").read_text().endswith("before the rotation\n")
    assert path.read_text().endswith("after the rotation\n")

