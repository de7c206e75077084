"""Render a pytest-benchmark JSON file as the markdown table of bench/RESULTS.md."""
from __future__ import annotations

import json
import sys
from typing import Any

#: each measured benchmark -> (what it is, the reference it is compared with)
ROWS = {
    "test_policy_warm_request_memo": ("policy: warm request end to end, decision memo",
                                      "test_policy_warm_request_no_memo"),
    "test_policy_warm_request_no_memo": ("policy: warm request end to end, policy run each time", None),
    "test_policy_warm_request_memo_logged": ("policy: warm request, decision memo, decision log line written",
                                             "test_policy_warm_request_no_memo_logged"),
    "test_policy_warm_request_no_memo_logged": ("policy: warm request, policy run each time, decision log line "
                                                "written", None),
    "test_milter_session_null_decider": ("milter: whole session, fixed decision", "test_reference_milter_framing_only"),
    "test_milter_session_null_decider_no_body": ("milter: whole session, fixed decision, no body asked (NOBODY, "
                                                 "NOEOH, NODATA)", "test_reference_milter_framing_only"),
    "test_milter_session_null_decider_no_message": ("milter: whole session, fixed decision, no header or body "
                                                    "asked (NOHDRS too)", "test_reference_milter_framing_only"),
    "test_decision_log_line": ("decision log line: fields, record, text format, file (flushed per loop turn)",
                               "test_reference_decision_log_line_logger_info"),
    "test_reference_decision_log_line_logger_info": ("reference: the same line through Logger.info, a flush per "
                                                     "line", None),
    "test_milter_session_warm_engine": ("milter: whole session, warm engine", "test_reference_milter_framing_only"),
    "test_reference_milter_framing_only": ("reference: framing the same packets only", None),
    "test_cold_decision_dnsbl_listed": ("cold decision, instant DNS, engine CPU: DNSBL-listed (1 query)", None),
    "test_cold_decision_spf_depth_1": ("cold decision, instant DNS, engine CPU: registered, SPF chain depth 1 "
                                       "(3 queries)", None),
    "test_cold_decision_spf_depth_3": ("cold decision, instant DNS, engine CPU: registered, SPF chain depth 3 "
                                       "(5 queries)", None),
    "test_warm_decision[accept-on]": ("fleet on Redis (issue 16): warm accept (memo hit)", "test_warm_decision[accept-off]"),
    "test_warm_decision[accept-off]": ("reference: fleet off: warm accept", None),
    "test_warm_decision[reject-on]": ("fleet on Redis: warm reject, counted (one pipeline per loop turn)",
                                      "test_warm_decision[reject-off]"),
    "test_warm_decision[reject-off]": ("reference: fleet off: warm reject", None),
    "test_warm_decision[fleet_block-on]": ("fleet on Redis: refused by a learned block (memoized)",
                                           "test_warm_decision[accept-off]"),
    "test_dns_cold_query_checkid_client": ("DNS: cold query, checkid client (persistent UDP sockets, loopback server)",
                                           "test_dns_cold_query_reference_dnspython_socket_per_query"),
    "test_dns_cold_query_reference_dnspython_socket_per_query": ("reference: dnspython async resolver, a socket per "
                                                                 "query", None),
    "test_worker_heap_trim_full_cache": ("worker: malloc_trim(0), memory cache full", "test_reference_heartbeat_write"),
    "test_reference_heartbeat_write": ("reference: heartbeat write", None),
    "test_warm_decision_registered_id_spf_pass": ("warm decision (the same envelope again: a memo hit): "
                                                  "registered ID, SPF pass → ACCEPT",
                                                  "test_reference_pyspf_check_with_instant_dns"),
    "test_warm_decision_prescreen_reject": ("warm decision (memo hit): pre-screen DNSBL reject",
                                            "test_reference_pyspf_check_with_instant_dns"),
    "test_reference_pyspf_check_with_instant_dns": ("reference: bare pyspf check, instant DNS", None),
    "test_policy_decode_request": ("policy: decode a Postfix 3.7 RCPT request (32 attributes)",
                                   "test_reference_policy_split_only"),
    "test_reference_policy_split_only": ("reference: split into a dict only", None),
    "test_policy_encode_reply": ("policy: encode a PREPEND reply", "test_reference_policy_concat_only"),
    "test_reference_policy_concat_only": ("reference: concatenation only", None),
    "test_rpc_decode_request": ("msgpack-rpc: decode a checkID request", "test_reference_msgpack_unpackb_only"),
    "test_reference_msgpack_unpackb_only": ("reference: msgpack.unpackb", None),
    "test_rpc_encode_response": ("msgpack-rpc: encode a checkID response", "test_reference_msgpack_packb_only"),
    "test_reference_msgpack_packb_only": ("reference: msgpack.packb", None),
    "test_cache_l1_hit": ("cache: L1 hit (memory)", "test_reference_dict_get"),
    "test_cache_l2_hit": ("cache: L2 hit (shared LMDB, copied into L1)", "test_reference_dict_get"),
    "test_cache_miss_both_layers": ("cache: miss in both layers", "test_reference_dict_get"),
    "test_reference_dict_get": ("reference: plain dict lookup", None),
}


def per_call(row: dict[str, Any]) -> float:
    return float(row["stats"]["median"] / row["extra_info"]["batch"])


def micro_table(data: dict[str, Any]) -> str:
    rows = {b["name"]: b for b in data["benchmarks"]}
    lines = ["| benchmark | median per call | reference | ratio |", "|---|---:|---|---:|"]
    for name, (what, ref) in ROWS.items():
        if name not in rows:
            continue
        if ref is None or ref not in rows:
            lines.append(f"| {what} | {per_call(rows[name]) * 1e6:.2f} µs | | 1.00× |")
        else:
            lines.append(f"| {what} | {per_call(rows[name]) * 1e6:.2f} µs | {ROWS[ref][0].removeprefix('reference: ')} "
                         f"| {per_call(rows[name]) / per_call(rows[ref]):.2f}× |")
    return "\n".join(lines)


def main(path: str) -> None:
    data = json.load(open(path))
    cpu = data["machine_info"]["cpu"]
    print(f"Machine: {cpu.get('brand_raw', '?')}, {cpu.get('count', '?')} cores; "
          f"Python {data['machine_info']['python_version']}")
    print()
    print(micro_table(data))


if __name__ == "__main__":
    main(sys.argv[1])
