"""Where a process keeps its state: the setting, systemd's StateDirectory=, the defaults."""
from __future__ import annotations

from checkid.config import from_dict
from checkid.runtime.process import state_dir


def test_the_setting_wins_then_systemds_state_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}/a:{tmp_path}/b")
    assert state_dir(from_dict({"server": {"state_dir": "/srv/checkid"}})) == "/srv/checkid"
    assert state_dir(from_dict({})) == f"{tmp_path}/a"  # systemd lists several with ':'
    monkeypatch.delenv("STATE_DIRECTORY")
    assert state_dir(from_dict({})) != f"{tmp_path}/a"
