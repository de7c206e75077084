"""Render a pytest-benchmark JSON file as the markdown table of bench/RESULTS.md."""
from __future__ import annotations

import json
import platform
import sys

REFERENCE = "test_reference_pyspf_check_with_instant_dns"


def main(path: str) -> None:
    data = json.load(open(path))
    rows = {b["name"]: b for b in data["benchmarks"]}
    ref = rows[REFERENCE]["stats"]["median"] / rows[REFERENCE]["extra_info"]["batch"]
    print(f"Machine: {data['machine_info']['cpu'].get('brand_raw', platform.processor())}, "
          f"{data['machine_info']['cpu'].get('count', '?')} cores; Python {data['machine_info']['python_version']}")
    print()
    print("| benchmark | median per decision | ratio to reference |")
    print("|---|---:|---:|")
    for name, b in rows.items():
        per = b["stats"]["median"] / b["extra_info"]["batch"]
        print(f"| {name.removeprefix('test_')} | {per * 1e6:.1f} µs | {per / ref:.2f}× |")


if __name__ == "__main__":
    main(sys.argv[1])
