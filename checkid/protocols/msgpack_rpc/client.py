"""MessagePack-RPC clients for checkid: :class:`AsyncClient` (pipelined) and :class:`Client`
(blocking, one call at a time). Addresses are ``HOST:PORT``, ``[v6]:PORT`` or ``unix:PATH``.

    with Client("127.0.0.1:10031") as c:
        action, (code, xcode, text), headers = c.checkID("192.0.2.1", "example.com")
"""
from __future__ import annotations

import asyncio
import itertools
import socket
from typing import Any

from checkid.config import parse_listen
from checkid.errors import CheckidError, ProtocolError
from checkid.protocols.msgpack_rpc.codec import Response, RpcParser, encode_request


class CallFailed(CheckidError):
    """The server answered the call with an error."""


def _contract(result: Any) -> tuple[str, tuple[int, str, str], list[dict[str, str]]]:
    action, reply, headers = result
    return action, (reply[0], reply[1], reply[2]), headers


class AsyncClient:
    """Many calls in flight on one connection, each matched to its answer by msgid."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._parser = RpcParser()
        self._closed: Exception | None = None
        self._task = asyncio.ensure_future(self._read())

    @classmethod
    async def connect(cls, address: str) -> "AsyncClient":
        kind, host, port = parse_listen(address)
        if kind == "unix":
            reader, writer = await asyncio.open_unix_connection(host)
        else:
            reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def call(self, method: str, *params: Any) -> Any:
        if self._closed is not None:
            raise self._closed
        msgid = next(self._ids) & 0xFFFFFFFF
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[msgid] = future
        self._writer.write(encode_request(msgid, method, list(params)))
        return await future

    async def checkID(self, IP: str | None = None, ID: str | None = None, H: str | None = None,
                      S: str | None = None, R: list[str] | None = None, Hdrs: list[str] | None = None,
                      Body: str | bytes | None = None) -> tuple[str, tuple[int, str, str], list[dict[str, str]]]:
        return _contract(await self.call("checkID", IP, ID, H, S, R or [], Hdrs or [], Body))

    async def _read(self) -> None:
        error: Exception = ConnectionError("connection closed by the server")
        try:
            while data := await self._reader.read(65536):
                self._parser.receive_data(data)
                while (event := self._parser.next_event()) is not None:
                    if isinstance(event, Response) and event.msgid in self._waiting:
                        future = self._waiting.pop(event.msgid)
                        if not future.done():
                            if event.error is not None:
                                future.set_exception(CallFailed(str(event.error)))
                            else:
                                future.set_result(event.result)
        except (OSError, ProtocolError) as e:
            error = e
        self._closed = error
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(error)
        self._waiting.clear()

    async def close(self) -> None:
        if self._closed is None:
            self._closed = ConnectionError("client closed")
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(self._closed)
        self._waiting.clear()
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except OSError:
            pass
        self._task.cancel()


class Client:
    """A blocking client: one call at a time, with a timeout per call."""

    def __init__(self, address: str, timeout: float = 30.0) -> None:
        kind, host, port = parse_listen(address)
        if kind == "unix":
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._sock.settimeout(timeout)
            self._sock.connect(host)
        else:
            self._sock = socket.create_connection((host, port), timeout=timeout)
        self._ids = itertools.count(1)
        self._parser = RpcParser()

    def call(self, method: str, *params: Any) -> Any:
        msgid = next(self._ids) & 0xFFFFFFFF
        self._sock.sendall(encode_request(msgid, method, list(params)))
        while True:
            event = self._parser.next_event()
            if event is None:
                data = self._sock.recv(65536)
                if not data:
                    raise ConnectionError("connection closed by the server")
                self._parser.receive_data(data)
                continue
            if isinstance(event, Response) and event.msgid == msgid:
                if event.error is not None:
                    raise CallFailed(str(event.error))
                return event.result

    def checkID(self, IP: str | None = None, ID: str | None = None, H: str | None = None, S: str | None = None,
                R: list[str] | None = None, Hdrs: list[str] | None = None,
                Body: str | bytes | None = None) -> tuple[str, tuple[int, str, str], list[dict[str, str]]]:
        return _contract(self.call("checkID", IP, ID, H, S, R or [], Hdrs or [], Body))

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
