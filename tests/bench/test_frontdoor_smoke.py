"""The front-door benchmark harness (bench/frontdoor.py): a tiny real run of smtp-sink direct
and Haraka, and the report's arithmetic on rows made up here."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from bench import frontdoor

ROOT = Path(__file__).resolve().parent.parent.parent
SESSIONS = 40


@pytest.fixture(scope="module")
def haraka_installed() -> None:
    """Haraka comes from scripts/bench-deps (CI runs it before the tests); a tree that has not
    run it yet gets it here, through the same script."""
    if not (frontdoor.HARAKA / "bin" / "haraka").exists():
        subprocess.run(["sh", str(ROOT / "scripts" / "bench-deps")], check=True, timeout=900)
    assert (frontdoor.HARAKA / "bin" / "haraka").exists()


def test_a_tiny_run_through_smtp_sink_and_haraka_completes_every_session(haraka_installed):
    # bounded by session counts; the seconds are only a cap, so a slow machine still finishes
    args = frontdoor.parse_args(["--targets=smtp-sink,haraka,haraka-nodelay", f"--max-sessions={SESSIONS}",
                                 "--seconds=60", "--warm-sessions=8", "--warm-cap=60", "--connections=4"])
    results = frontdoor.measure(args)
    rows = results["rows"]
    assert list(rows) == ["smtp-sink", "haraka", "haraka-nodelay"]
    for target, row in rows.items():
        assert row["errors"] == 0, (target, row)
        assert row["sessions"] == SESSIONS, (target, row)
        assert row["rate"] > 0
        assert 0 < row["p50"] <= row["p90"] <= row["p99"] <= row["p999"]
    assert results["versions"]["haraka"] == json.loads((frontdoor.HARAKA / "package.json").read_text())["version"]
    table = frontdoor.report(results, args)
    for name in ("smtp-sink direct", "Haraka (queue/smtp_forward)", "Haraka, TCP_NODELAY"):
        assert re.search(rf"^\| {re.escape(name)} \| [\d,]+ \| [\d.]+ ms \|", table, re.M), name
    assert "| front door sessions/s vs Haraka (its best row) | ≥ 1.5× | not available | — |" in table


def row(rate: float, p50: float, errors: int = 0) -> dict[str, float | int | str]:
    sessions = int(rate * 2)
    return {"sessions": sessions, "errors": errors, "seconds": 2.0, "p50": p50, "p90": p50 * 2, "p99": p50 * 3,
            "p999": p50 * 4, "first_error": "", "rate": rate}


def test_goals_take_haraka_best_row_and_the_median_over_smtp_sink():
    rows = {"smtp-sink": row(4000, 0.0030), "haraka": row(200, 0.050), "haraka-nodelay": row(300, 0.040),
            "checkid": row(450, 0.0039)}
    (speed, _, ratio, met_speed), (_, _, added, met_added) = frontdoor.goals(rows)
    assert "Haraka" in speed
    assert (ratio, met_speed) == ("1.50×", True)  # 450 / 300, the better Haraka row
    assert (added, met_added) == ("0.90 ms", True)  # 3.9 ms − 3.0 ms
    rows["checkid"] = row(440, 0.0041)
    (_, _, ratio, met_speed), (_, _, added, met_added) = frontdoor.goals(rows)
    assert (ratio, met_speed, added, met_added) == ("1.47×", False, "1.10 ms", False)


def test_a_front_door_with_failed_sessions_meets_no_goal():
    rows = {"smtp-sink": row(4000, 0.0030), "haraka": row(200, 0.050), "checkid": row(900, 0.0031, errors=3)}
    assert [met for *_, met in frontdoor.goals(rows)] == [False, False]
    rows["checkid"] = {**row(0, 0.0, errors=50), "first_error": "first error: banner: 421 4.3.0 no backend"}
    assert [got for _, _, got, _ in frontdoor.goals(rows)] == ["no session completed"] * 2


def test_a_front_door_that_does_not_start_is_reported_and_the_other_rows_stay():
    rows = {"smtp-sink": row(4000, 0.0030), "haraka": row(250, 0.045),
            "checkid": {"unavailable": "nothing listening on 127.0.0.1:2525 after 30 s"}}
    args = frontdoor.parse_args([])
    table = frontdoor.report({"rows": rows, "versions": {"haraka": "3.3.4", "node": "20", "postfix": "3.7"}}, args)
    assert "| checkid front door | not available |" in table
    assert "nothing listening on 127.0.0.1:2525" in table
    assert re.search(r"^\| Haraka \(queue/smtp_forward\) \| 250 \| 45.00 ms \|.*\| 42.00 ms \| 1.00× \|$", table, re.M)
    assert [met for *_, met in frontdoor.goals(rows)] == [None, None]


def test_the_message_is_one_dot_stuffed_crlf_message():
    data = frontdoor.message()
    assert data.endswith(b"\r\n.\r\n")
    lines = data[:-3].split(b"\r\n")
    assert b"\n" not in b"".join(lines) and b"\r" not in b"".join(lines)  # no bare CR or LF
    # every line that starts with a dot, but the terminator, is stuffed
    assert all(line.startswith(b"..") for line in lines if line.startswith(b"."))
    assert any(line.startswith(b"..") for line in lines)
    assert len(data) < 2000
