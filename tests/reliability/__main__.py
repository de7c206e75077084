"""``python -m tests.reliability [--full] [pytest arguments]``: run the reliability suite and
print the figures each phase recorded (see ``docs/operations.md``)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import pytest

from tests.reliability import REPORT_VARIABLE, SIZE_VARIABLE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.reliability", description=__doc__)
    parser.add_argument("--full", action="store_true", help="full size (1,000,000 inputs per protocol)")
    args, rest = parser.parse_known_args(argv)
    os.environ[SIZE_VARIABLE] = "full" if args.full else "smoke"
    with tempfile.TemporaryDirectory(prefix="checkid-reliability-") as tmp:
        report = Path(tmp) / "figures.jsonl"
        os.environ[REPORT_VARIABLE] = str(report)
        status = pytest.main([str(Path(__file__).resolve().parent), "-q", *rest])
        lines = report.read_text(encoding="utf-8").splitlines() if report.exists() else []
    print(f"\nreliability suite ({os.environ[SIZE_VARIABLE]} size): figures by phase")
    for line in lines:
        figures = json.loads(line)
        phase = figures.pop("phase")
        print(f"  {phase}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))
    return int(status)


if __name__ == "__main__":
    sys.exit(main())
