"""StrictModes and the run user's reads, wired into ``checkid serve`` (issue 14): as root,
the master refuses a policy or configuration file others can change before it executes the
policy, and one the run user (``[server] user``) could not read after the privilege drop.
CI runs as root with a ``nobody`` user; each case makes its own private place under /tmp."""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from checkid.runtime import perms
from testsupport.processes import free_port

NOBODY = pwd.getpwnam("nobody")
#: bound on a refused start: it fails before binding anything
START_SECONDS = 60


@pytest.fixture
def site() -> Iterator[Path]:
    """A private directory (0755, root's) directly under /tmp (sticky, root's: accepted)."""
    assert os.geteuid() == 0, "these tests run as root, as CI does"
    base = Path(tempfile.mkdtemp(prefix="checkid-perms-daemon-", dir="/tmp"))
    os.chmod(base, 0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_unreadable_by_opens_the_file_as_the_run_user(site: Path) -> None:
    conf = site / "checkid.toml"
    conf.write_text("")
    os.chmod(conf, 0o644)
    assert perms.unreadable_by(conf, NOBODY.pw_uid, NOBODY.pw_gid) is None
    os.chmod(conf, 0o600)
    problem = perms.unreadable_by(conf, NOBODY.pw_uid, NOBODY.pw_gid)
    assert problem is not None and "Permission denied" in problem and f"uid {NOBODY.pw_uid}" in problem
    os.chmod(conf, 0o640)
    os.chown(conf, 0, NOBODY.pw_gid)  # the usual fix: the run user's group may read it
    assert perms.unreadable_by(conf, NOBODY.pw_uid, NOBODY.pw_gid) is None
    os.chmod(conf, 0o644)
    os.chmod(site, 0o700)  # a directory it cannot search
    assert "Permission denied" in (perms.unreadable_by(conf, NOBODY.pw_uid, NOBODY.pw_gid) or "")
    # and the process is root again, with its groups
    assert os.geteuid() == 0 and os.getegid() == 0


def test_check_daemon_files_names_each_fault_by_key(site: Path) -> None:
    conf, loose = site / "checkid.toml", site / "loose"
    conf.write_text("")
    os.chmod(conf, 0o600)
    loose.mkdir()
    os.chmod(loose, 0o777)
    policy = loose / "policy.py"
    policy.write_text("")
    faults = perms.check_daemon_files([("configuration", str(conf)), ("policy.path", str(policy))],
                                      NOBODY.pw_uid, NOBODY.pw_gid)
    assert len(faults) == 2
    assert faults[0].startswith(f"configuration: {conf}: uid {NOBODY.pw_uid}") and "mode 0640" in faults[0]
    assert faults[1].startswith("policy.path: ") and f"{loose} is writable by everyone" in faults[1]
    os.chmod(conf, 0o644)
    os.chmod(loose, 0o1777)  # sticky and root's, as /tmp: nobody else can replace our entry
    assert perms.check_daemon_files([("configuration", str(conf)), ("policy.path", str(policy))],
                                    NOBODY.pw_uid, NOBODY.pw_gid) == []


def serve(conf: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "checkid", "serve", "-c", str(conf)], capture_output=True,
                          text=True, timeout=START_SECONDS)


def config_text(site: Path, extra: str = "") -> str:
    return (f'[[listen]]\nprotocol = "policy"\naddress = "127.0.0.1:{free_port()}"\n'
            f'[server]\nworkers = 1\nstate_dir = "{site / "state"}"\n{extra}'
            f'[metrics]\naddress = ""\n')


def test_serve_refuses_a_policy_in_a_directory_others_can_write_before_running_it(site: Path) -> None:
    loose = site / "loose"
    loose.mkdir()
    os.chmod(loose, 0o777)
    marker = site / "executed"
    policy = loose / "policy.py"
    policy.write_text(f"open({str(marker)!r}, 'w').close()\n\nasync def decide(ctx):\n    return ctx.accept()\n")
    os.chmod(policy, 0o644)
    conf = site / "checkid.toml"
    conf.write_text(config_text(site) + f'[policy]\npath = "{policy}"\n')
    out = serve(conf)
    assert out.returncode == 3, out
    assert f"{loose} is writable by everyone (mode 0777)" in out.stderr
    assert not marker.exists()  # refused before the master executed it


def test_serve_refuses_a_config_its_run_user_could_not_reload(site: Path) -> None:
    conf = site / "checkid.toml"
    conf.write_text(config_text(site, 'user = "nobody"\n'))
    os.chmod(conf, 0o600)
    out = serve(conf)
    assert out.returncode == 3, out
    assert f"configuration: {conf}: uid {NOBODY.pw_uid}" in out.stderr and "cannot read it" in out.stderr
