"""Render a pytest-benchmark JSON file as the markdown table of bench/RESULTS.md."""
from __future__ import annotations

import json
import platform
import sys

#: each measured benchmark and the reference it is compared with
REFERENCES = {
    "test_warm_decision_registered_id_spf_pass": "test_reference_pyspf_check_with_instant_dns",
    "test_warm_decision_prescreen_reject": "test_reference_pyspf_check_with_instant_dns",
    "test_policy_decode_request": "test_reference_policy_split_only",
    "test_policy_encode_reply": "test_reference_policy_concat_only",
    "test_rpc_decode_request": "test_reference_msgpack_unpackb_only",
    "test_rpc_encode_response": "test_reference_msgpack_packb_only",
}


def main(path: str) -> None:
    data = json.load(open(path))
    rows = {b["name"]: b for b in data["benchmarks"]}

    def per(name: str) -> float:
        return float(rows[name]["stats"]["median"] / rows[name]["extra_info"]["batch"])
    print(f"Machine: {data['machine_info']['cpu'].get('brand_raw', platform.processor())}, "
          f"{data['machine_info']['cpu'].get('count', '?')} cores; Python {data['machine_info']['python_version']}")
    print()
    print("| benchmark | median per call | reference | ratio |")
    print("|---|---:|---|---:|")
    for name in rows:
        ref = REFERENCES.get(name)
        if ref is None or ref not in rows:
            print(f"| {name.removeprefix('test_')} | {per(name) * 1e6:.2f} µs | (reference) | 1.00× |")
        else:
            print(f"| {name.removeprefix('test_')} | {per(name) * 1e6:.2f} µs | {ref.removeprefix('test_')} "
                  f"| {per(name) / per(ref):.2f}× |")


if __name__ == "__main__":
    main(sys.argv[1])
