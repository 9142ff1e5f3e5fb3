"""A fake OpenAI-compatible upstream: a real HTTP server on 127.0.0.1 (ephemeral port),
so the real ``openai`` client exercises its actual HTTP, SSE, retry and timeout code.

    with FakeOpenAI() as fake:
        client = openai.OpenAI(api_key="k", base_url=fake.base_url)
        fake.fail_next(status=500)            # scripted faults: FIFO, one per chat request
        with fake.hold_streams() as gate:     # streams park after their first token
            ...; gate.wait_for_held(1); gate.release()

Streams use HTTP/1.1 chunked encoding, so a cut stream is a protocol error for the
client, exactly like a dropped upstream connection.
"""
from __future__ import annotations

import collections
import json
import re
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Mapping

ReplyFn = Callable[[dict[str, Any]], str]
CHAT_PATHS = ("/v1/chat/completions", "/chat/completions")
MODELS_PATHS = ("/v1/models", "/models")


def echo_reply(request_json: dict[str, Any]) -> str:
    """Default reply: "Echo: <last user message>"."""
    users = [m for m in request_json.get("messages") or [] if isinstance(m, dict) and m.get("role") == "user"]
    return "Echo: " + (_content_text(users[-1].get("content")) if users else "")


def split_tokens(text: str) -> list[str]:
    """Words with their following whitespace; "".join(tokens) == text."""
    return re.findall(r"^\s+|\S+\s*", text)


def _content_text(content: Any) -> str:
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}]
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    path: str  # without the query string
    headers: Mapping[str, str]  # case-insensitive: headers["authorization"] == headers["Authorization"]
    json: Any  # parsed body; None for GET or invalid JSON
    client_port: int = 0  # the client's end of the connection: equal ports, one connection reused


@dataclass(frozen=True)
class _Fault:
    kind: str  # "fail" | "hang" | "cut"
    status: int = 500
    retry_after: float | None = None
    seconds: float = 0.0
    after_tokens: int = 0


class StreamGate:
    """Parks every stream after its first token until release(). Releases on `with` exit."""

    def __init__(self) -> None:
        self._released = threading.Event()
        self._cond = threading.Condition()
        self.held = 0  # streams that have reached the gate so far

    def release(self) -> None:
        self._released.set()

    def wait_for_held(self, n: int = 1, timeout: float = 5.0) -> bool:
        """Block until at least n streams have reached the gate."""
        with self._cond:
            return self._cond.wait_for(lambda: self.held >= n, timeout)

    def _park(self) -> None:
        with self._cond:
            self.held += 1
            self._cond.notify_all()
        self._released.wait()

    def __enter__(self) -> StreamGate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()  # never leave streams parked when a test fails


class FakeOpenAI:
    def __init__(self, reply: ReplyFn | None = None, *, token_delay: float = 0.0,
                 first_token_delay: float = 0.0, model: str = "fake-model",
                 honor_max_tokens: bool = True) -> None:
        # Plain attributes read per request, so tests may change them at any time.
        self.reply: ReplyFn = reply or echo_reply
        self.token_delay = token_delay
        self.first_token_delay = first_token_delay  # also delays non-streamed answers
        self.model = model
        self.honor_max_tokens = honor_max_tokens  # cut at max_tokens words, finish_reason "length"
        self.report_usage = True  # False: no `usage`, even when stream_options.include_usage asks
        self.cached_tokens = 0  # reported as prompt_tokens_details.cached_tokens (at most the prompt's)
        self.stream_started = threading.Event()  # set when a stream's first token is flushed
        self.client_disconnected = threading.Event()  # set when a client vanished mid-response
        self._cond = threading.Condition()  # guards everything below
        self._requests: list[ReceivedRequest] = []
        self._faults: collections.deque[_Fault] = collections.deque()
        self._gate: StreamGate | None = None
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> FakeOpenAI:
        if self._server is None:
            self._stopping.clear()
            self._server = _Server(("127.0.0.1", 0), _Handler)
            self._server.fake = self
            self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                            name="fake-openai", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()  # wakes hangs and delays
        gate = self._current_gate()
        if gate is not None:
            gate.release()
        server.shutdown()  # idle keep-alive handlers (daemon threads) end when clients close
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeOpenAI is not running")
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    # -- scripting (faults apply to chat-completion requests only) ------------------
    def fail_next(self, status: int = 500, retry_after: float | None = None) -> None:
        """Next chat request gets an OpenAI-style JSON error (+ Retry-After if given)."""
        self._add_fault(_Fault("fail", status=status, retry_after=retry_after))

    def hang_next(self, seconds: float) -> None:
        """Next chat request is accepted but answered (normally) only after `seconds`."""
        self._add_fault(_Fault("hang", seconds=seconds))

    def cut_stream_next(self, after_tokens: int = 1) -> None:
        """Next chat request streams N tokens then drops the connection (no [DONE]).
        A non-streaming request gets half its JSON body, then the drop."""
        self._add_fault(_Fault("cut", after_tokens=after_tokens))

    def hold_streams(self) -> StreamGate:
        """Streams started from now on park after their first token until gate.release()."""
        with self._cond:
            self._gate = StreamGate()
            return self._gate

    # -- observation -------------------------------------------------------------
    @property
    def requests(self) -> list[ReceivedRequest]:
        """Snapshot of every request received (any path), in arrival order."""
        with self._cond:
            return list(self._requests)

    @property
    def chat_requests(self) -> list[ReceivedRequest]:
        return [r for r in self.requests if r.path in CHAT_PATHS]

    @property
    def faults_pending(self) -> int:
        with self._cond:
            return len(self._faults)

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> bool:
        """Block until at least n requests (any path) have arrived; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self._requests) >= n, timeout)

    # -- used by the handler -------------------------------------------------------
    def _add_fault(self, fault: _Fault) -> None:
        with self._cond:
            self._faults.append(fault)

    def _record(self, request: ReceivedRequest) -> tuple[_Fault | None, int]:
        with self._cond:
            self._requests.append(request)
            chat = request.path in CHAT_PATHS and request.method == "POST"
            fault = self._faults.popleft() if chat and self._faults else None
            self._cond.notify_all()
            return fault, len(self._requests)

    def _current_gate(self) -> StreamGate | None:
        with self._cond:
            return self._gate

    def _pause(self, seconds: float) -> bool:
        """Sleep unless stopping; False means the server is shutting down."""
        return seconds <= 0 or not self._stopping.wait(seconds)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # benchmarks open many connections at once
    fake: FakeOpenAI

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)  # a bug in the fake: show it
        # else: the client went away, which is expected; stay quiet


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive + chunked streams
    disable_nagle_algorithm = True  # tokens are tiny writes; don't let TCP batch them
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # silence per-request logging

    def do_GET(self) -> None:
        self._handle(None)

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        self._handle(body)

    def _handle(self, body: Any) -> None:
        fake, path = self.server.fake, self.path.split("?", 1)[0]
        fault, number = fake._record(ReceivedRequest(self.command, path, self.headers, body,
                                                           self.client_address[1]))
        try:
            if fake._stopping.is_set():
                return
            if path in MODELS_PATHS and self.command == "GET":
                model = {"id": fake.model, "object": "model", "created": 0, "owned_by": "fake"}
                return self._send_json(200, {"object": "list", "data": [model]})
            if path not in CHAT_PATHS or self.command != "POST":
                return self._send_error(404, f"Unknown route {self.command} {path}")
            if not isinstance(body, dict):
                return self._send_error(400, "Request body must be a JSON object")
            if fault and fault.kind == "fail":
                return self._send_error(fault.status, f"Injected error {fault.status}", fault.retry_after)
            if fault and fault.kind == "hang" and not fake._pause(fault.seconds):
                return
            cut = fault.after_tokens if fault and fault.kind == "cut" else None
            if body.get("stream"):
                self._stream(body, f"chatcmpl-fake-{number}", cut)
            else:
                self._complete(body, f"chatcmpl-fake-{number}", cut is not None)
        except OSError:  # BrokenPipe/ConnectionReset: the client left
            fake.client_disconnected.set()
            self.close_connection = True
        finally:
            if fake._stopping.is_set():  # aborted replies must not leave the client waiting
                self.close_connection = True

    def _tokens(self, body: dict[str, Any]) -> tuple[list[str], str]:
        fake = self.server.fake
        tokens = split_tokens(str(fake.reply(body)))
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        if fake.honor_max_tokens and isinstance(limit, int) and 0 < limit < len(tokens):
            return tokens[:limit], "length"
        return tokens, "stop"

    def _complete(self, body: dict[str, Any], ident: str, cut: bool) -> None:
        tokens, finish = self._tokens(body)
        if not self.server.fake._pause(self.server.fake.first_token_delay):
            return
        data = json.dumps({
            "id": ident, "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model") or self.server.fake.model,
            "choices": [{"index": 0, "finish_reason": finish, "logprobs": None,
                         "message": {"role": "assistant", "content": "".join(tokens)}}],
            **({"usage": _usage(body, tokens, self.server.fake.cached_tokens)} if self.server.fake.report_usage else {}),
        }).encode()
        self._send_head(200, "application/json", {"Content-Length": str(len(data))})
        if cut:  # promise the full body, deliver half, hang up
            self.close_connection = True
            return self._write(data[: len(data) // 2])
        self._write(data)

    def _stream(self, body: dict[str, Any], ident: str, cut_after: int | None) -> None:
        fake = self.server.fake
        tokens, finish = self._tokens(body)
        base = {"id": ident, "object": "chat.completion.chunk", "created": int(time.time()),
                "model": body.get("model") or fake.model}

        def send_chunk(delta: dict[str, Any], finish_reason: str | None) -> None:
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
            self._sse({**base, "choices": [choice]})

        self._send_head(200, "text/event-stream", {"Transfer-Encoding": "chunked", "Cache-Control": "no-cache"})
        if not fake._pause(fake.first_token_delay):
            return
        for i, token in enumerate(tokens):
            if cut_after is not None and i >= cut_after:
                break
            if i > 0 and not fake._pause(fake.token_delay):
                return
            send_chunk({"role": "assistant", "content": token} if i == 0 else {"content": token}, None)
            if i == 0:
                fake.stream_started.set()
                gate = fake._current_gate()
                if gate is not None:
                    gate._park()
                    if fake._stopping.is_set():
                        return
        if cut_after is not None:
            self.close_connection = True  # abrupt: no final chunk, no [DONE], no chunked terminator
            return
        send_chunk({} if tokens else {"role": "assistant", "content": ""}, finish)
        if fake.report_usage and (body.get("stream_options") or {}).get("include_usage"):
            self._sse({**base, "choices": [], "usage": _usage(body, tokens, fake.cached_tokens)})
        self._write_chunk(b"data: [DONE]\n\n")
        self._write(b"0\r\n\r\n")  # end of the chunked body

    def _send_error(self, status: int, message: str, retry_after: float | None = None) -> None:
        kind = {400: "invalid_request_error", 404: "not_found_error", 429: "rate_limit_exceeded"}
        headers = {}
        if retry_after is not None:  # the SDK prefers retry-after-ms, which allows sub-second waits
            headers = {"retry-after-ms": str(int(retry_after * 1000)), "retry-after": f"{retry_after:g}"}
        error = {"message": message, "type": kind.get(status, "server_error"), "param": None, "code": str(status)}
        self._send_json(status, {"error": error}, headers)

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self._send_head(status, "application/json", {"Content-Length": str(len(data)), **(headers or {})})
        self._write(data)

    def _send_head(self, status: int, content_type: str, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def _sse(self, payload: dict[str, Any]) -> None:
        self._write_chunk(b"data: " + json.dumps(payload).encode() + b"\n\n")

    def _write_chunk(self, data: bytes) -> None:
        self._write(b"%X\r\n%s\r\n" % (len(data), data))

    def _write(self, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()


def _usage(body: dict[str, Any], tokens: list[str], cached: int = 0) -> dict[str, Any]:
    """Tokens as words: the prompt's words, the reply's pieces."""
    prompt = sum(len(_content_text(m.get("content")).split())
                 for m in body.get("messages") or [] if isinstance(m, dict))
    usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": len(tokens),
                             "total_tokens": prompt + len(tokens)}
    if cached:
        usage["prompt_tokens_details"] = {"cached_tokens": min(cached, prompt)}
    return usage
