"""The model client's transport: connections kept after streamed replies, and a pool that scales to thousands.

Keep the model server's connection after a streamed reply, so the next turn needs no new handshake.

The openai SDK stops reading a stream at its `data: [DONE]` event and closes
the response. The body's last bytes (HTTP/1.1's chunked terminator) are then
still unread, so httpcore drops the connection, and every turn pays a new TCP
(and, against a real provider, TLS) handshake before its request is even sent
(openai-python#3440, left open upstream for a transport-level fix).

This transport wraps the SDK's own and reads those last bytes when a response
that ended with [DONE] is closed unfinished. Only then: a reply stopped halfway
(a cancel) is closed at once, as before. The read is bounded: a server that
keeps the stream open after [DONE] gets DRAIN_SECONDS, then its socket is shut
down and the connection closed, as it always was.

ShardedPool splits the SDK's connection pool in several (same limits in all):
httpcore's pool looks at every connection it holds each time a request starts
or a response closes: with 500 replies streaming in one worker, that scan
was a sixth of the worker's sampled time.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx2 as httpx

DRAIN_SECONDS = 0.25
DRAIN_BYTES = 16_384
_DONE = b"data: [DONE]"


class ReusableStreamsTransport(httpx.BaseTransport):
    def __init__(self, inner: httpx.BaseTransport) -> None:
        self._inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self._inner.handle_request(request)
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            return response
        return httpx.Response(
            status_code=response.status_code, headers=response.headers, extensions=response.extensions,
            stream=_FinishedAfterDone(response.stream, response.extensions.get("network_stream")),
        )

    def close(self) -> None:
        self._inner.close()


class ShardedPool(httpx.BaseTransport):
    """`shards` HTTP transports splitting `limits` between them; each request goes to the one
    with the fewest requests in flight (the first, when all are equal, so a lone client keeps
    reusing one connection). A shard is full only when all are: the limits hold as a whole."""

    def __init__(self, limits: httpx.Limits, shards: int = 16, **transport_options: Any) -> None:
        if shards < 1:
            raise ValueError("shards must be at least 1")

        def share(total: int | None, i: int) -> int | None:
            # Split exactly: the shards' limits add up to the whole (None: no limit).
            return None if total is None else total // shards + (1 if i < total % shards else 0)

        # One TLS context for all: building one loads the CA bundle (tens of ms each).
        transport_options["verify"] = httpx.create_ssl_context(
            verify=transport_options.pop("verify", True), cert=transport_options.pop("cert", None),
            trust_env=transport_options.get("trust_env", True))
        self._shards = [
            httpx.HTTPTransport(limits=httpx.Limits(
                max_connections=share(limits.max_connections, i),
                max_keepalive_connections=share(limits.max_keepalive_connections, i),
                keepalive_expiry=limits.keepalive_expiry,
            ), **transport_options)
            for i in range(shards)
        ]
        self._in_flight = [0] * shards
        self._lock = threading.Lock()

    @property
    def in_flight(self) -> list[int]:
        """Requests (and responses not yet closed) per shard."""
        return list(self._in_flight)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            i = min(range(len(self._in_flight)), key=self._in_flight.__getitem__)
            self._in_flight[i] += 1
        try:
            response = self._shards[i].handle_request(request)
        except BaseException:
            self._release(i)
            raise
        response.stream = _Released(response.stream, lambda: self._release(i))
        return response

    def _release(self, i: int) -> None:
        with self._lock:
            self._in_flight[i] -= 1

    def close(self) -> None:
        for shard in self._shards:
            shard.close()


class _Released(httpx.SyncByteStream):
    """A response body that tells its shard once, when closed, that its request is done."""

    def __init__(self, inner: httpx.SyncByteStream, release: Callable[[], None]) -> None:
        self._inner = inner
        self._release: Callable[[], None] | None = release

    def __iter__(self) -> Iterator[bytes]:
        yield from self._inner

    def close(self) -> None:
        release, self._release = self._release, None
        try:
            self._inner.close()
        finally:
            if release is not None:
                release()


class _FinishedAfterDone(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, network_stream: object) -> None:
        self._inner = inner
        self._network_stream = network_stream
        self._chunks: Iterator[bytes] | None = None
        self._tail = b""  # the end of the bytes passed on so far
        self._finished = False

    def __iter__(self) -> Iterator[bytes]:
        self._chunks = iter(self._inner)
        for chunk in self._chunks:
            if chunk:
                self._tail = chunk[-32:]
            yield chunk
        self._finished = True

    def close(self) -> None:
        if self._chunks is not None and not self._finished and self._tail.rstrip().endswith(_DONE):
            self._drain(self._chunks)
        self._inner.close()

    def _drain(self, chunks: Iterator[bytes]) -> None:
        """Read to the end of the body (which lets httpcore keep the connection), within bounds."""
        sock = socket_of(self._network_stream)
        watchdog = threading.Timer(DRAIN_SECONDS, shut_down, (sock,)) if sock is not None else None
        if watchdog is not None:
            watchdog.daemon = True
            watchdog.start()
        try:
            read = 0
            for chunk in chunks:
                read += len(chunk)
                if read > DRAIN_BYTES:
                    return  # not a stream that ends: close it as before
        except Exception:  # noqa: BLE001 - the reply is complete; a failed drain only costs the connection
            pass
        finally:
            if watchdog is not None:
                watchdog.cancel()


def socket_of(network_stream: object) -> socket.socket | None:
    """The socket under an httpcore network stream (a response's `network_stream` extension)."""
    return network_stream.get_extra_info("socket") if network_stream is not None else None


def shut_down(sock: socket.socket | None) -> None:
    """Wake any read blocked on this socket (it then fails); never blocks itself."""
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed
