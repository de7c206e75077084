"""The metrics directory: its files say which senders the site sees, so no other user may read them."""
from __future__ import annotations

import stat

from checkid.runtime.metrics import prepare_dir


def test_the_metrics_directory_is_closed_to_other_users(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")  # prepare_dir points it here; restored after
    fresh, old = tmp_path / "fresh", tmp_path / "old"
    old.mkdir(mode=0o755)
    old.chmod(0o755)
    (old / "counter_1.db").write_bytes(b"stale")
    for directory in (fresh, old):
        prepare_dir(str(directory))
        assert stat.S_IMODE(directory.stat().st_mode) == 0o750
    assert not (old / "counter_1.db").exists()
