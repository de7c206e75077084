"""The master's records in the state directory: worker status, flush requests, readiness."""
from __future__ import annotations

import os
import socket

from checkid.engine.dns.cache import MemoryCache, mentions
from checkid.runtime import control, notify


def test_control_worker_status_round_trips_in_a_fixed_size():
    status = control.WorkerStatus(True, 12, 3456)
    raw = control.encode_status(status)
    assert len(raw) == control.STATUS_SIZE and control.decode_status(raw) == status
    assert control.decode_status(b"") == control.WorkerStatus()


def test_control_flush_follower_sees_each_request_once_and_all_when_it_missed_some(tmp_path):
    follower = control.FlushFollower(tmp_path)
    assert follower.poll() is None
    control.request_flush(tmp_path, "example.com")
    control.request_flush(tmp_path, "example.net")
    assert follower.poll() == ["example.com", "example.net"] and follower.applied == 2
    assert follower.poll() is None
    late = control.FlushFollower(tmp_path)  # a new worker starts past what is on record
    assert late.applied == 2
    for i in range(control.FLUSH_KEPT + 1):
        control.request_flush(tmp_path, f"n{i}.test")
    assert follower.poll() == [None]  # the file no longer holds every request it missed


def test_control_mentions_a_name_and_the_names_under_it_in_dns_and_spf_keys():
    assert mentions(("example.com", "TXT"), "Example.COM.")
    assert mentions(("_spf.example.com", "TXT"), "example.com")
    assert not mentions(("badexample.com", "TXT"), "example.com")
    assert mentions(("spf", "192.0.2.1", "example.com"), "example.com")
    assert mentions(("spf", "192.0.2.1", "u@example.com", "mx.other.test"), "example.com")
    cache = MemoryCache(10)
    cache.put(("example.com", "TXT"), 1, 100.0)
    cache.put(("example.net", "TXT"), 2, 100.0)
    assert cache.drop(lambda k: mentions(k, "example.com")) == 1 and len(cache) == 1


def test_control_running_master_refuses_a_stale_pid_file(tmp_path):
    try:
        control.running_master(tmp_path)
        raise AssertionError("no pid file")
    except control.NotRunning as e:
        assert "no pid file" in str(e)
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    control.write_atomic(tmp_path / control.PID_FILE, f"{pid}\n".encode())
    try:
        control.running_master(tmp_path)
        raise AssertionError("stale pid")
    except control.NotRunning as e:
        assert "is gone" in str(e)


def test_notify_sends_one_datagram_and_nothing_without_a_socket(tmp_path, monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify.notify("READY=1") is False
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert notify.notify("READY=1", "STATUS=serving")
        assert sock.recv(100) == b"READY=1\nSTATUS=serving"
