"""A small asyncio HTTP/1.1 client: keep-alive, Content-Length and chunked bodies, streamed reads.

The one load generator for every scenario, ours and the peer's alike, so both
pay the same client costs. No dependency beyond the standard library.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    elapsed: float  # seconds, request written -> body read

    def json(self):
        return json.loads(self.body)


class Connection:
    def __init__(self, host: str, port: int, default_headers: dict[str, str] | None = None) -> None:
        self.host, self.port = host, port
        self.default_headers = default_headers or {}
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _open(self) -> None:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except OSError:
                pass
            self._writer = self._reader = None

    async def request(self, method: str, path: str, *, body=None, headers: dict[str, str] | None = None,
                      on_chunk: Callable[[bytes], None] | None = None) -> Response:
        await self._open()
        data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        for name, value in {**self.default_headers, **(headers or {})}.items():
            lines.append(f"{name}: {value}")
        if body is not None:
            lines.append("Content-Type: application/json")
        if body is not None or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(data)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode()
        started = time.perf_counter()
        try:
            self._writer.write(head + data)
            await self._writer.drain()
            return await self._read_response(started, on_chunk, method)
        except BaseException:
            await self.close()
            raise

    async def _read_response(self, started: float, on_chunk, method: str) -> Response:
        reader = self._reader
        raw = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = raw.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in header_lines:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        parts: list[bytes] = []
        if method == "HEAD" or status in (204, 304):
            pass
        elif "content-length" in headers:
            parts.append(await reader.readexactly(int(headers["content-length"])))
            if on_chunk and parts[0]:
                on_chunk(parts[0])
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
                if size == 0:
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers, then the blank line
                        pass
                    break
                chunk = (await reader.readexactly(size + 2))[:-2]
                if on_chunk:
                    on_chunk(chunk)
                parts.append(chunk)
        else:  # body until the server closes
            while chunk := await reader.read(65536):
                if on_chunk:
                    on_chunk(chunk)
                parts.append(chunk)
            headers["connection"] = "close"
        elapsed = time.perf_counter() - started
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return Response(status, headers, b"".join(parts), elapsed)
