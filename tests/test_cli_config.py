"""``checkid config`` and ``checkid check-config`` (no daemon needed): the TOML printed loads
back to the same Config, and every fault of a configuration shows in one run."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tomllib

from checkid.config import Config, DnsList, ListenConfig, from_dict, load
from checkid.config.convert import to_toml


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "checkid", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_to_toml_round_trips_the_defaults_and_a_changed_config():
    assert from_dict(tomllib.loads(to_toml(Config()))) == Config()
    changed = dataclasses.replace(
        Config(), listen=(ListenConfig("milter", "unix:/run/checkid/milter \"x\".sock", mode="0600"),),
        prescreen=dataclasses.replace(Config().prescreen, dnsbl=(DnsList("bl.test", codes={"127.0.0.2": "a\tb"}),)),
    )
    assert from_dict(tomllib.loads(to_toml(changed))) == changed
    only = tomllib.loads(to_toml(changed, changed_only=True))
    assert set(only) == {"listen", "prescreen"} and set(only["prescreen"]) == {"dnsbl"}
    assert from_dict(only) == changed


def test_config_command_prints_the_effective_file_and_the_defaults(tmp_path):
    conf = tmp_path / "checkid.toml"
    conf.write_text('[dns]\ntimeout = 1.5\n[registry]\nzone = "registry.test"\n')
    out = run("config", env={"CHECKID_CONFIG": str(conf)})
    assert out.returncode == 0 and from_dict(tomllib.loads(out.stdout)) == load(conf)
    changed = run("config", "-n", "-c", str(conf))
    assert tomllib.loads(changed.stdout) == {"dns": {"timeout": 1.5}, "registry": {"zone": "registry.test"}}
    defaults = run("config", "--defaults", "-c", str(conf))
    assert from_dict(tomllib.loads(defaults.stdout)) == Config()


def test_check_config_reports_every_fault_at_once(tmp_path):
    conf = tmp_path / "checkid.toml"
    missing = tmp_path / "no-such-list.txt"
    conf.write_text(f'[server]\nuser = "no-such-user-here"\ngroup = "no-such-group-here"\nworkers = -1\n'
                    f'[dns]\ntimeout = "soon"\nbogus = 1\n[prescreen]\nblock_files = ["{missing}"]\n')
    out = run("check-config", env={"CHECKID_CONFIG": str(conf)})
    assert out.returncode == 3
    for fault in ("dns.timeout: expected a number", "dns.bogus: unknown key", "server.workers: must be",
                  f"prescreen.block_files[0]: cannot read {missing}", "server.user: no such user",
                  "server.group: no such group", "6 errors"):
        assert fault in out.stderr, (fault, out.stderr)


def test_check_config_passes_a_good_file(tmp_path):
    conf = tmp_path / "checkid.toml"
    conf.write_text('[registry]\nzone = "registry.test"\n')
    out = run("check-config", "-c", str(conf))
    assert out.returncode == 0 and "configuration OK" in out.stdout


def test_check_config_reports_files_the_run_user_could_not_reload_or_others_could_change():
    """As root (CI): what ``serve`` would refuse at start, StrictModes and the run user's reads."""
    import pwd
    import shutil
    import tempfile
    from pathlib import Path

    assert os.geteuid() == 0, "run as root, as CI does"
    uid = pwd.getpwnam("nobody").pw_uid
    site = Path(tempfile.mkdtemp(prefix="checkid-check-config-", dir="/tmp"))
    try:
        os.chmod(site, 0o755)
        loose = site / "loose"
        loose.mkdir()
        os.chmod(loose, 0o777)
        policy = loose / "policy.py"
        policy.write_text("async def decide(ctx):\n    return ctx.accept()\n")
        conf = site / "checkid.toml"
        conf.write_text(f'[server]\nuser = "nobody"\n[policy]\npath = "{policy}"\n')
        os.chmod(conf, 0o600)
        out = run("check-config", "-c", str(conf))
        assert out.returncode == 3, out
        assert f"configuration: {conf}: uid {uid} gid" in out.stderr and "cannot read it" in out.stderr
        assert f"policy.path: {policy}" in out.stderr and f"{loose} is writable by everyone" in out.stderr
        os.chmod(conf, 0o644)
        os.chmod(loose, 0o755)
        out = run("check-config", "-c", str(conf))
        assert out.returncode == 0, out
    finally:
        shutil.rmtree(site, ignore_errors=True)
