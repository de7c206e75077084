"""``checkid serve`` as the operator runs it, and ``checkid query --server`` against it."""
from __future__ import annotations

import json
import subprocess
import sys

from checkid.protocols.msgpack_rpc.client import Client
from testsupport.processes import Checkid, free_port, wait_until, world_readable_tmpdir


def query(*args):
    out = subprocess.run([sys.executable, "-m", "checkid", "query", *args], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode in (0, 1, 4), out.stderr  # ACCEPT, REJECT or FILTER (the documented exit codes)
    return json.loads(out.stdout)


def test_query_through_a_unix_socket_equals_in_process(dns_server):
    workdir = world_readable_tmpdir("checkid-serve-")
    sock = workdir / "rpc.sock"
    port = free_port()
    toml = (f'[[listen]]\nprotocol = "msgpack-rpc"\naddress = "unix:{sock}"\n'
            f'[[listen]]\nprotocol = "policy"\naddress = "127.0.0.1:{port}"\n'
            f'[dns]\nnameservers = ["{dns_server.address}"]\n[registry]\nzone = "registry.test"\n')
    with Checkid(toml, workdir, [port]) as checkid:
        for ident in ("example.com", "example.net", "unregistered.example"):
            remote = query("192.0.2.1", ident, "--server", f"unix:{sock}", "--json")
            local = query("192.0.2.1", ident, "--json", "-c", str(checkid.config))
            assert remote == local
        # --trace against the running engine: its stages, then the decision
        traced = subprocess.run([sys.executable, "-m", "checkid", "query", "192.0.2.1", "example.com", "--server",
                                 f"unix:{sock}", "--trace"], capture_output=True, text=True, timeout=60)
        assert traced.returncode == 0, traced.stderr
        lines = traced.stdout.splitlines()
        assert any(line.split()[:1] == ["registry"] for line in lines)
        assert any(line.startswith("ACCEPT 250") for line in lines)
        # a log file is written at the end of the worker's loop turn, maybe just after the reply
        log = wait_until(lambda: (text := checkid.log.read_text()) and "action=REJECT code=550" in text and text,
                         "the decision lines")
    assert "msgpack-rpc queue_id=- ip=192.0.2.1 id=example.net" in log and "action=REJECT code=550" in log


def test_serve_exits_cleanly_on_sigterm(dns_server):
    port = free_port()
    workdir = world_readable_tmpdir("checkid-serve-")
    checkid = Checkid(f'[[listen]]\nprotocol = "msgpack-rpc"\naddress = "127.0.0.1:{port}"\n'
                      f'[dns]\nnameservers = ["{dns_server.address}"]\n[registry]\nzone = "registry.test"\n',
                      workdir, [port]).start()
    with Client(f"127.0.0.1:{port}") as c:
        assert c.checkID("192.0.2.1", "example.com")[0] == "ACCEPT"
    assert checkid.stop() == 0
    log = checkid.log.read_text()
    assert "stopped" in log and "Traceback" not in log


def test_serve_refuses_a_bad_configuration_naming_the_key(tmp_path):
    bad = tmp_path / "checkid.toml"
    bad.write_text('[[listen]]\nprotocol = "lmtp"\naddress = "127.0.0.1:1"\n')
    out = subprocess.run([sys.executable, "-m", "checkid", "serve", "-c", str(bad)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode != 0 and "listen[0].protocol" in out.stderr


def test_serve_refuses_a_policy_that_does_not_load(tmp_path):
    policy = tmp_path / "policy.py"
    policy.write_text("import no_such_module\nasync def decide(ctx): pass\n")
    conf = tmp_path / "checkid.toml"
    conf.write_text(f'[policy]\npath = "{policy}"\n[server]\nstate_dir = "{tmp_path / "state"}"\n'
                    f'[[listen]]\nprotocol = "policy"\naddress = "127.0.0.1:{free_port()}"\n[metrics]\naddress = ""\n')
    out = subprocess.run([sys.executable, "-m", "checkid", "serve", "-c", str(conf)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode != 0 and "ModuleNotFoundError" in out.stderr
