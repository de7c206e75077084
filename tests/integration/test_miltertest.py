"""miltertest (Debian) drives ``checkid serve``'s milter listener with Lua scripts."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from testsupport.processes import Checkid, free_port, world_readable_tmpdir

SCRIPTS = Path(__file__).parents[1] / "data" / "milter"


@pytest.fixture(scope="module")
def milter(dns_server):
    port = free_port()
    toml = (f'[[listen]]\nprotocol = "milter"\naddress = "127.0.0.1:{port}"\n'
            f'[dns]\nnameservers = ["{dns_server.address}"]\ntimeout = 0.5\n[registry]\nzone = "registry.test"\n')
    with Checkid(toml, world_readable_tmpdir("checkid-milter-"), [port]) as checkid:
        yield port, checkid


@pytest.mark.parametrize("script", ["negotiate.lua", "accept_header.lua", "unknown_reject.lua"])
def test_miltertest_script(milter, script):
    port, checkid = milter
    out = subprocess.run(["miltertest", "-s", str(SCRIPTS / script), "-D", f"port={port}"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr + checkid.log.read_text()[-2000:]
