"""llm/transport.py: a streamed reply's connection is kept, and keeping it never holds up a reply."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import httpx2 as httpx
import openai
import pytest

from llm.client import ModelSettings, make_client
from llm.transport import ShardedPool

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%X\r\n%s\r\n" % (len(data), data)


TOKEN = chunk(b'data: {"choices": [{"index": 0, "delta": {"content": "hi"}}]}\n\n')
DONE = chunk(b"data: [DONE]\n\n")
END = b"0\r\n\r\n"


class RawServer:
    """Answers every request on a connection with `respond(sock)`; counts connections and sees them end."""

    def __init__(self, respond: Callable[[socket.socket], None]) -> None:
        self.respond = respond
        self.connections = 0
        self.closed = threading.Event()  # a client closed a connection
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        with sock:
            buffer = b""
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = sock.recv(65536)
                    if not data:
                        self.closed.set()
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                while len(buffer) < length:
                    buffer += sock.recv(65536)
                buffer = buffer[length:]
                self.respond(sock)

    def hold_until_closed(self, sock: socket.socket) -> None:
        """Send nothing more; return when the client closes this connection (or after 30 s)."""
        sock.settimeout(30)
        try:
            if sock.recv(1) == b"":
                self.closed.set()
        except OSError:
            pass

    def close(self) -> None:
        self._listener.close()


@pytest.fixture
def client_of():
    servers = []

    def make(respond):
        server = RawServer(respond)
        servers.append(server)
        # A long read timeout: a drain bounded only by it would take this long.
        return server, make_client(ModelSettings(api_key="k", base_url=f"http://127.0.0.1:{server.port}/v1",
                                                 timeout_seconds=30, max_retries=0))

    yield make
    for server in servers:
        server.close()


def stream(client: openai.OpenAI, stop_after: int | None = None) -> list:
    response = client.post("/chat/completions", body={"model": "m", "messages": [], "stream": True},
                           cast_to=openai.types.chat.ChatCompletion, stream=True, stream_cls=openai.Stream[object])
    chunks = []
    with response:
        for piece in response:
            chunks.append(piece)
            if stop_after is not None and len(chunks) == stop_after:
                break
    return chunks


def test_a_stream_whose_end_comes_after_done_keeps_its_connection(client_of):
    def respond(sock):
        sock.sendall(HEAD + TOKEN + DONE)
        time.sleep(0.02)  # the terminator in a packet of its own
        sock.sendall(END)

    server, client = client_of(respond)
    for _ in range(3):
        assert len(stream(client)) == 1
    assert server.connections == 1
    assert not server.closed.is_set()


def test_a_server_that_holds_the_stream_open_after_done_does_not_hold_the_reply(client_of):
    def respond(sock):
        sock.sendall(HEAD + TOKEN + DONE)
        server.hold_until_closed(sock)  # never ends the body

    server, client = client_of(respond)
    started = time.monotonic()
    assert len(stream(client)) == 1
    took = time.monotonic() - started
    assert server.closed.wait(5)  # given up on: the connection is closed, as without the transport
    assert took < 10  # bounded by the drain's own limit, not the 30-s read timeout
    assert len(stream(client)) == 1  # and the next request opens a new one
    assert server.connections == 2


def test_a_stream_stopped_before_done_is_closed_not_read_to_its_end(client_of):
    # A stopped reply is not read on (it may be long, and a cancel must be
    # prompt), even when the rest is already here: the connection goes.
    def respond(sock):
        sock.sendall(HEAD + TOKEN + TOKEN + DONE + END)

    server, client = client_of(respond)
    assert len(stream(client, stop_after=1)) == 1
    assert server.closed.wait(5)


# --- ShardedPool: the SDK's pool split in shards, its limits kept as a whole ----------------------


def open_stream(client: httpx.Client) -> httpx.Response:
    return client.send(client.build_request("POST", "/v1/chat/completions", json={}), stream=True)


def test_the_sharded_pool_spreads_open_streams_and_keeps_its_limits_as_a_whole():
    server = RawServer(lambda sock: sock.sendall(HEAD + TOKEN))  # a stream that stays open
    pool = ShardedPool(httpx.Limits(max_connections=4, max_keepalive_connections=2), shards=2)
    client = httpx.Client(transport=pool, base_url=f"http://127.0.0.1:{server.port}",
                          timeout=httpx.Timeout(30, pool=0.3))
    try:
        responses = [open_stream(client) for _ in range(4)]
        assert pool.in_flight == [2, 2]  # each to the shard with the fewest in flight
        with pytest.raises(httpx.PoolTimeout):  # 4 in all: full, though no shard was given 4
            open_stream(client)
        assert pool.in_flight == [2, 2]  # the failed request let go of its place
        for response in responses:
            response.close()
        assert pool.in_flight == [0, 0]
        assert server.connections == 4
        response = open_stream(client)  # room again
        assert response.status_code == 200
        response.close()
    finally:
        client.close()
        server.close()


def test_the_sharded_pool_lets_go_of_a_request_that_fails_to_connect():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now
    pool = ShardedPool(httpx.Limits(max_connections=10), shards=4)
    with httpx.Client(transport=pool, base_url=f"http://127.0.0.1:{port}") as client:
        for _ in range(3):
            with pytest.raises(httpx.ConnectError):
                client.get("/")
        assert pool.in_flight == [0, 0, 0, 0]


def test_the_sharded_pool_splits_its_limits_exactly():
    pool = ShardedPool(httpx.Limits(max_connections=10, max_keepalive_connections=3), shards=4)
    limits = [shard._pool._max_connections for shard in pool._shards]
    keepalive = [shard._pool._max_keepalive_connections for shard in pool._shards]
    assert limits == [3, 3, 2, 2] and sum(limits) == 10
    assert sum(keepalive) == 3
    with pytest.raises(ValueError):
        ShardedPool(httpx.Limits(max_connections=10), shards=0)


def test_the_sharded_pool_builds_one_tls_context_for_all_its_shards():
    # Each context loads the CA bundle (tens of ms): one per shard made every client slow to build.
    pool = ShardedPool(httpx.Limits(max_connections=10), shards=4)
    assert len({id(shard._pool._ssl_context) for shard in pool._shards}) == 1
