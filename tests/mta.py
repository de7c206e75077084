"""Throwaway MTA instances on loopback for integration tests (reference/milter.md §11.2,
anchors.md §8). Nothing of the system's own MTA configuration is touched."""
from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import time
from pathlib import Path

from tests.processes import wait_for_port, world_readable_tmpdir

POSTFIX_DIR = Path("/etc/postfix")


class Throwaway:
    """A started-then-stopped MTA instance: ``with Postfix(...) as mta:``; a failed start
    still cleans up."""

    def start(self) -> "Throwaway":
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self):  # type: ignore[no-untyped-def]
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Postfix(Throwaway):
    """A private Postfix 3.7: its own config and queue, smtpd on 127.0.0.1:port, mail kept
    queued (``defer_transports = smtp``), XCLIENT allowed from loopback so tests can speak
    for any client address."""

    def __init__(self, port: int, settings: dict[str, str]) -> None:
        self.port = port
        self.root = world_readable_tmpdir("checkid-postfix-")
        self.etc = self.root / "etc"
        self.settings = settings

    def postconf(self, *args: str) -> None:
        subprocess.run(["postconf", "-c", str(self.etc), *args], check=True, capture_output=True)

    def start(self) -> "Postfix":
        shutil.copytree(POSTFIX_DIR, self.etc)
        (self.etc / "main.cf").write_text("")
        master = (self.etc / "master.cf").read_text()
        master = re.sub(r"(?m)^smtp\s+inet\s.*$", f"127.0.0.1:{self.port} inet n - n - - smtpd", master)
        (self.etc / "master.cf").write_text(master)
        base = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.root / "spool"),
            "data_directory": str(self.root / "data"),
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "myhostname": "mx.checkid.test",
            "mydestination": "",
            "relay_domains": "example.org",
            "relayhost": "[127.0.0.1]:9",
            "defer_transports": "smtp",
            "mynetworks": "127.0.0.0/8",
            "smtpd_authorized_xclient_hosts": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "maillog_file": str(self.root / "maillog"),
            "maillog_file_prefixes": str(self.root),
            "alias_maps": "",
            "alias_database": "",
            "biff": "no",
        }
        self.postconf("-e", *(f"{k}={v}" for k, v in {**base, **self.settings}.items()))
        self.postconf("-F", "*/*/chroot=n")
        (self.root / "spool").mkdir()
        (self.root / "data").mkdir()
        # post-install makes the queue's subdirectories with their owners and modes
        subprocess.run(["postfix", "-c", str(self.etc), "set-permissions", "create-missing"],
                       check=True, capture_output=True, timeout=60)
        subprocess.run(["postfix", "-c", str(self.etc), "start"], check=True, capture_output=True, timeout=60)
        wait_for_port(self.port)
        return self

    def postcat(self, queue_id: str) -> str:
        """The queued message's content; bounded retries while the queue manager moves it."""
        for _ in range(100):
            out = subprocess.run(["postcat", "-c", str(self.etc), "-q", queue_id], capture_output=True, text=True)
            if out.returncode == 0:
                return out.stdout
            time.sleep(0.05)
        raise AssertionError(f"message {queue_id} not found in the queue: {out.stderr}")

    @property
    def maillog(self) -> str:
        log = self.root / "maillog"
        return log.read_text() if log.exists() else ""

    def stop(self) -> None:
        subprocess.run(["postfix", "-c", str(self.etc), "stop"], capture_output=True, timeout=60)
        subprocess.run(["postfix", "-c", str(self.etc), "abort"], capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)



EXIM = Path(__file__).resolve().parent.parent / ".mta" / "exim" / "usr" / "sbin" / "exim4"


class Exim(Throwaway):
    """A private Exim 4.96 daemon (unpacked by scripts/mta-deps) on 127.0.0.1:port with its
    own configuration, spool and logs; accepted mail stays in its queue (``queue_only``)."""

    def __init__(self, port: int, config: str) -> None:
        self.port = port
        self.root = world_readable_tmpdir("checkid-exim-")
        self.conf = self.root / "exim.conf"
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "Exim":
        exim = pwd.getpwnam("Debian-exim")
        for sub in ("spool", "log"):
            (self.root / sub).mkdir()
            os.chown(self.root / sub, exim.pw_uid, exim.pw_gid)
        self.conf.write_text(self.config.replace("@ROOT@", str(self.root)).replace("@PORT@", str(self.port)))
        check = subprocess.run([str(EXIM), "-C", str(self.conf), "-bV"], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"exim configuration refused: {check.stdout}{check.stderr}")
        self.proc = subprocess.Popen([str(EXIM), "-C", str(self.conf), "-bdf", "-oX", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, self.proc)
        return self

    def headers(self, message_id: str) -> str:
        out = subprocess.run([str(EXIM), "-C", str(self.conf), "-Mvh", message_id],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return out.stdout

    @property
    def mainlog(self) -> str:
        log = self.root / "log" / "mainlog"
        return log.read_text() if log.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.root, ignore_errors=True)
