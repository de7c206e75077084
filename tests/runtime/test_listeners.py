"""Listening sockets, in-process."""
from __future__ import annotations

import os
import socket
from pathlib import Path

from checkid.config import ListenConfig
from checkid.runtime import listeners


def test_a_unix_listener_closes_even_when_its_file_cannot_be_removed(tmp_path: Path) -> None:
    path = tmp_path / "policy.sock"
    listener = listeners.bind(ListenConfig(protocol="policy", address=f"unix:{path}"), 2)
    os.unlink(path)
    path.mkdir()  # unlink() now fails with an OSError other than FileNotFoundError
    listener.close()
    assert listener.sockets[0].fileno() == -1 and path.is_dir()


def test_a_unix_listener_removes_its_file_when_it_may(tmp_path: Path) -> None:
    path = tmp_path / "policy.sock"
    listener = listeners.bind(ListenConfig(protocol="policy", address=f"unix:{path}"), 2)
    assert len(listener.sockets) == 1 and listener.sockets[0].family == socket.AF_UNIX
    listener.close()
    assert not path.exists()
