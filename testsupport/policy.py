"""A Postfix policy delegation client (postconf(5) check_policy_service) for tests that talk
to a real ``checkid serve``."""
from __future__ import annotations

import socket
from collections.abc import Callable

from checkid.protocols.postfix_policy import codec as pol


def ask(port: int, helo: str = "example.com", ip: str = "192.0.2.1", timeout: float = 10.0,
        on_sent: Callable[[], object] | None = None) -> str:
    """One RCPT-stage policy request on a new connection to 127.0.0.1:``port`` (each a new
    connection, which the accept gate gives to the least-loaded worker), and the action of the reply.
    ``on_sent``, if given, is called once the request is written, before the reply is read."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(pol.encode_request({"request": "smtpd_access_policy", "protocol_state": "RCPT",
                                      "client_address": ip, "helo_name": helo, "sender": "",
                                      "recipient": "u@example.org", "instance": ""}))
        if on_sent is not None:
            on_sent()
        data = b""
        while not data.endswith(b"\n\n"):
            chunk = s.recv(4096)
            if not chunk:
                raise ConnectionResetError("closed without a reply")
            data += chunk
    return pol.parse_reply(data)
