"""Throwaway MTA instances on loopback for integration tests (reference/milter.md §11.2,
anchors.md §8), a throwaway HAProxy, and an SMTP client that can speak for another address
through a PROXY header. Nothing of the system's own MTA configuration is touched."""
from __future__ import annotations

import os
import pwd
import re
import shutil
import smtplib
import socket
import subprocess
import time
import typing
from pathlib import Path

from testsupport.processes import READY_SECONDS, wait_for_port, wait_until, world_readable_tmpdir

POSTFIX_DIR = Path("/etc/postfix")


def terminate(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, a bounded wait, then SIGKILL."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


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
        """The queued message's content, polled until a deadline while the queue manager moves it."""
        deadline = time.monotonic() + READY_SECONDS
        while True:
            out = subprocess.run(["postcat", "-c", str(self.etc), "-q", queue_id], capture_output=True, text=True,
                                 timeout=READY_SECONDS)
            if out.returncode == 0:
                return out.stdout
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        raise AssertionError(f"message {queue_id} not found in the queue: {out.stderr}")

    @property
    def maillog(self) -> str:
        log = self.root / "maillog"
        return log.read_text() if log.exists() else ""

    def queue_ids(self) -> set[str]:
        """The ids of every message in the queue, whatever its stage (a message still being
        received is a file in ``incoming`` too); read from the queue directories, so it works
        with Postfix stopped."""
        spool = self.root / "spool"
        return {f.name for queue in POSTFIX_QUEUES if (spool / queue).is_dir()
                for f in (spool / queue).rglob("*") if f.is_file()}

    def halt(self) -> None:
        """Stop the mail system now (``postfix abort``: every smtpd goes, sessions in progress
        are cut), keeping its queue for :meth:`resume`."""
        subprocess.run(["postfix", "-c", str(self.etc), "abort"], check=True, capture_output=True, timeout=60)
        wait_until(lambda: not _listening(self.port), f"Postfix still listening on {self.port}")

    def resume(self) -> None:
        """Start it again after :meth:`halt`, on the same queue."""
        subprocess.run(["postfix", "-c", str(self.etc), "start"], check=True, capture_output=True, timeout=60)
        wait_for_port(self.port)

    def stop(self) -> None:
        subprocess.run(["postfix", "-c", str(self.etc), "stop"], capture_output=True, timeout=60)
        subprocess.run(["postfix", "-c", str(self.etc), "abort"], capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


#: the queue directories a message can be in (postconf(5) queue_directory; "maildrop" for
#: local submissions)
POSTFIX_QUEUES = ("maildrop", "incoming", "active", "deferred", "hold", "corrupt")


def _listening(port: int, host: str = "127.0.0.1") -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


class ProxySMTP(smtplib.SMTP):
    """smtplib's client that can write ``header`` (a PROXY protocol header) on the connection
    before reading the banner, as a load balancer would, and bind a source address (another
    loopback address such as 127.0.0.2)."""

    def __init__(self, host: str, port: int, header: bytes = b"", source: str | None = None,
                 timeout: float = 30.0) -> None:
        self.proxy_header = header
        super().__init__(host, port, timeout=timeout, source_address=(source, 0) if source else None)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock: socket.socket = super()._get_socket(host, port, timeout)  # type: ignore[misc]  # not in typeshed
        if self.proxy_header:
            sock.sendall(self.proxy_header)
        return sock


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

    def queue_ids(self) -> set[str]:
        """The ids of the messages in its spool (one ``<id>-H`` header file each)."""
        spool = self.root / "spool" / "input"
        return {f.name[:-2] for f in spool.rglob("*-H")} if spool.is_dir() else set()

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
        terminate(self.proc)
        shutil.rmtree(self.root, ignore_errors=True)


SENDMAIL_ROOT = Path(__file__).resolve().parent.parent / ".mta" / "sendmail"


class Sendmail(Throwaway):
    """A private Sendmail 8.17 daemon (unpacked by scripts/mta-deps) on [::1]:port, built
    from ``testsupport/data/sendmail.mc``, with checkid as its milter. Mail stays queued.

    It runs in a private mount namespace whose /etc/hosts gives the machine a fully qualified
    name (Sendmail waits 60 s without one) and whose /etc/resolv.conf points at loopback;
    its service switch uses files only, so it sends no DNS query anywhere."""

    def __init__(self, port: int, milter_port: int) -> None:
        self.port = port
        self.milter_port = milter_port
        self.root = world_readable_tmpdir("checkid-sendmail-")
        self.queue = self.root / "queue"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "Sendmail":
        self.queue.mkdir(mode=0o700)
        (self.root / "service.switch").write_text("hosts files\naliases files\n")
        (self.root / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        hostname = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip() or "localhost"
        (self.root / "hosts").write_text(f"127.0.0.1 {hostname}.checkid.test {hostname} localhost\n::1 localhost\n")
        mc = (Path(__file__).parent / "data" / "sendmail.mc").read_text()
        for key, value in (("@ROOT@", str(self.root)), ("@PORT@", str(self.port)),
                           ("@MILTER@", str(self.milter_port)), ("@DOMAIN@", f"{hostname}.checkid.test")):
            mc = mc.replace(key, value)
        (self.root / "lab.mc").write_text(mc)
        cf_dir = SENDMAIL_ROOT / "usr" / "share" / "sendmail" / "cf"
        with open(self.root / "lab.cf", "w") as cf:
            subprocess.run([str(SENDMAIL_ROOT / "usr" / "bin" / "m4"), f"-D_CF_DIR_={cf_dir}/",
                            str(cf_dir / "m4" / "cf.m4"), str(self.root / "lab.mc")],
                           stdout=cf, stderr=subprocess.DEVNULL, check=True)
        binary = SENDMAIL_ROOT / "usr" / "libexec" / "sendmail" / "sendmail"
        script = (f"mount --bind {self.root}/hosts /etc/hosts && mount --bind {self.root}/resolv.conf "
                  f"/etc/resolv.conf && exec {binary} -C {self.root}/lab.cf -bD -odq")
        self.proc = subprocess.Popen(["unshare", "-m", "sh", "-c", script],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, self.proc, host="::1")
        return self

    def headers(self, queue_id: str) -> list[str]:
        """The header lines of a queued message, in order (``H??Name: value`` in its qf file)."""
        qf = (self.queue / f"qf{queue_id}").read_text(errors="replace")
        return [re.sub(r"^H\?[^?]*\?", "", line) for line in qf.splitlines() if line.startswith("H")]

    def stop(self) -> None:
        terminate(self.proc)
        shutil.rmtree(self.root, ignore_errors=True)


class HAProxy(Throwaway):
    """A private HAProxy (the Debian package, scripts/mta-deps) in the foreground on a
    configuration given as text; ``ports`` are the listening ports to wait for. The
    package's own service is not used."""

    def __init__(self, config: str, ports: list[int]) -> None:
        self.root = world_readable_tmpdir("checkid-haproxy-")
        self.conf = self.root / "haproxy.cfg"
        self.config = config
        self.ports = ports
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: typing.BinaryIO | None = None

    def start(self) -> "HAProxy":
        self.conf.write_text(self.config)
        check = subprocess.run(["haproxy", "-c", "-f", str(self.conf)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy configuration refused: {check.stdout}{check.stderr}")
        self.log = open(self.root / "haproxy.log", "wb")
        self.proc = subprocess.Popen(["haproxy", "-db", "-f", str(self.conf)], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        try:
            for port in self.ports:
                wait_for_port(port, self.proc)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        terminate(self.proc)
        if self.log is not None:
            self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)
