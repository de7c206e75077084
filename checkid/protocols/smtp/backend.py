"""The seam between the front door's session and the MTA behind it: :class:`Backend` (the
relay over a socket in ``relay.py``, a fake in tests) and :class:`BackendError`, what every
backend failure raises. This module does no I/O."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, Protocol

from checkid.errors import CheckidError
from checkid.protocols.smtp.events import Reply

#: how the backend learns the client's address: XCLIENT, a PROXY v2 header, or not at all
BackendClient = Literal["xclient", "proxy", "none"]


class BackendError(CheckidError):
    """The backend MTA cannot be reached, or broke the protocol, or went away.

    :param kind: for the ``smtp_relay_errors`` counter: ``connect`` (unreachable), ``refused``
        (a banner or EHLO other than 2xx), ``timeout``, ``lost``, ``protocol`` (malformed
        replies) or ``tls`` (STARTTLS required and refused, or its handshake failed)
    """

    def __init__(self, message: str, kind: str = "lost") -> None:
        super().__init__(message)
        self.kind = kind


class Backend(Protocol):
    """The MTA behind the front door, one connection per client session."""

    @property
    def extensions(self) -> Mapping[str, str]:
        """EHLO keywords of its last EHLO reply: upper-case keyword -> its parameters."""
        ...

    @property
    def connected(self) -> bool:
        """Whether a connection is open (and greeted)."""
        ...

    async def connect(self) -> None:
        """:meth:`open`, then :meth:`ready`. :raises BackendError:"""
        ...

    async def open(self) -> None:
        """Open the connection; the backend's greeting (banner, an EHLO when its keywords are
        needed before :meth:`hello`, STARTTLS) goes on meanwhile. :raises BackendError:"""
        ...

    async def ready(self) -> None:
        """Wait for the greeting :meth:`open` began (at once when there is none).
        :raises BackendError:"""
        ...

    async def hello(self, helo: str, esmtp: bool = True) -> Reply:
        """Pass on the client's HELO name (XCLIENT first when configured, with PROTO=SMTP after a
        plain HELO), by EHLO.
        :raises BackendError:"""
        ...

    async def command(self, line: bytes) -> Reply:
        """Send one command line, return its reply. :raises BackendError:"""
        ...

    def send(self, data: bytes) -> None:
        """Message content in wire form (dot-stuffed)."""
        ...

    async def end_data(self) -> Reply:
        """The final ``.``; the reply says whether the backend took the message.
        :raises BackendError:"""
        ...

    def abort(self) -> None:
        """Close without finishing anything: a message in DATA is not queued."""
        ...

    def quit(self) -> None:
        """QUIT and close."""
        ...
