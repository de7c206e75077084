"""StrictModes for the policy and config files: files and directories in a tmp dir."""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from checkid.errors import ConfigError
from checkid.runtime.perms import check_private

#: the run user of these tests: the one running them (root in CI containers, or not)
RUN_UID = os.geteuid()
#: a uid that is neither root nor the run user
STRANGER = 54321


@pytest.fixture
def site() -> Iterator[Path]:
    """A private directory with a policy file, made directly under /tmp (sticky, so accepted
    though world-writable): pytest's own base directory may sit under directories others
    can write."""
    base = Path(tempfile.mkdtemp(prefix="checkid-perms-", dir="/tmp"))
    try:
        directory = base / "etc"
        directory.mkdir(mode=0o755)
        os.chmod(directory, 0o755)
        policy = directory / "policy.py"
        policy.write_text("def decide(ctx):\n    return ctx.accept()\n")
        os.chmod(policy, 0o644)
        yield policy
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_check_private_accepts_a_file_only_its_owner_can_change(site: Path) -> None:
    check_private(site, RUN_UID)
    os.chmod(site, 0o600)
    check_private(str(site), RUN_UID)


@pytest.mark.parametrize(("mode", "who"), [(0o666, "everyone"), (0o646, "everyone"), (0o664, "group")])
def test_check_private_refuses_a_file_others_can_write(site: Path, mode: int, who: str) -> None:
    os.chmod(site, mode)
    with pytest.raises(ConfigError, match=f"{site}.*writable by {who}.*mode {mode:04o}"):
        check_private(site, RUN_UID)


def test_check_private_refuses_a_directory_others_can_write(site: Path) -> None:
    os.chmod(site.parent, 0o777)
    with pytest.raises(ConfigError, match=f"{site.parent} is writable by everyone \\(mode 0777\\)"):
        check_private(site, RUN_UID)


def test_check_private_accepts_a_sticky_directory(site: Path) -> None:
    """/tmp's 1777: nobody can replace an entry they do not own there."""
    os.chmod(site.parent, 0o1777)
    check_private(site, RUN_UID)


def test_check_private_refuses_a_file_owned_by_another_user(site: Path) -> None:
    if RUN_UID == 0:
        os.chown(site, STRANGER, -1)
        run_uid = 1000 if STRANGER != 1000 else 1001
    else:
        run_uid = STRANGER  # the file is the test user's: neither root nor the run user
    with pytest.raises(ConfigError, match=f"{site} is owned by uid {os.stat(site).st_uid} \\(mode 0644\\)"):
        check_private(site, run_uid)


def test_check_private_accepts_root_and_the_run_user_as_owners(site: Path) -> None:
    check_private(site, RUN_UID)
    if RUN_UID == 0:
        os.chown(site, STRANGER, -1)
        check_private(site, STRANGER)  # owned by the run user


def test_check_private_follows_a_link_to_the_file_it_names(site: Path) -> None:
    loose = site.parent.parent / "loose"
    loose.mkdir()
    os.chmod(loose, 0o777)
    target = loose / "real.py"
    target.write_text("")
    link = site.parent / "linked.py"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match=f"{loose} is writable by everyone"):
        check_private(link, RUN_UID)


def test_check_private_checks_the_directory_holding_a_link(site: Path) -> None:
    """Whoever writes the link's directory can point it elsewhere."""
    loose = site.parent.parent / "loose"
    loose.mkdir()
    os.chmod(loose, 0o777)
    link = loose / "policy.py"
    link.symlink_to(site)
    with pytest.raises(ConfigError, match=f"{loose} is writable by everyone"):
        check_private(link, RUN_UID)


def test_check_private_refuses_what_is_missing_or_not_a_file(site: Path) -> None:
    with pytest.raises(ConfigError, match="cannot stat"):
        check_private(site.parent / "missing.py", RUN_UID)
    with pytest.raises(ConfigError, match="not a regular file"):
        check_private(site.parent, RUN_UID)
