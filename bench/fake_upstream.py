"""A lean fake OpenAI upstream for benchmarks: asyncio, one process, hundreds of streams at once.

tests/fake_openai.py is a ThreadingHTTPServer (a thread per connection, a
listen backlog of 128) built for fault injection; here the upstream must never
be the bottleneck, so this one does only what the benchmarks need:

- POST /v1/chat/completions with "stream": true: N tokens at a fixed interval.
  N and the interval come from a directive in the last user message,
  "[bench tokens=N interval_ms=T first_ms=F tag=X]"; without one, 5 tokens at once.
  With a tag, the arrival time (epoch seconds) is printed: "recv X 1763782800.123456",
  so the harness can split a backend's time to first token into its work before
  calling the model and the relay of the first token.
- The same without "stream" (session naming): a short title, at once.
- GET /v1/models.

    python -m bench.fake_upstream --port 8089
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time

DIRECTIVE = re.compile(r"\[bench tokens=(\d+) interval_ms=(\d+(?:\.\d+)?)(?: first_ms=(\d+(?:\.\d+)?))?(?: tag=(\w+))?\]")


def directive(text: str) -> tuple[int, float, float]:
    match = DIRECTIVE.search(text or "")
    if not match:
        return 5, 0.0, 0.0
    return int(match.group(1)), float(match.group(2)) / 1000, float(match.group(3) or 0) / 1000


def last_user_text(body: dict) -> str:
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else json.dumps(content)
    return ""


def chunk(data: bytes) -> bytes:
    return b"%X\r\n%s\r\n" % (len(data), data)


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            request_line, *lines = head.decode("latin-1").split("\r\n")
            method, path, _ = request_line.split(" ", 2)
            length = 0
            for line in lines:
                if line.lower().startswith("content-length:"):
                    length = int(line.split(":", 1)[1])
            raw = await reader.readexactly(length) if length else b""
            path = path.split("?", 1)[0]
            if method == "GET" and path.endswith("/models"):
                await send_json(writer, {"object": "list", "data": [{"id": "bench-model", "object": "model",
                                                                     "created": 0, "owned_by": "bench"}]})
                continue
            if method != "POST" or not path.endswith("/chat/completions"):
                await send_json(writer, {"error": {"message": "not found"}}, status=404)
                continue
            body = json.loads(raw or b"{}")
            if body.get("stream"):
                await stream(writer, body)
            else:
                await send_json(writer, {
                    "id": "chatcmpl-bench", "object": "chat.completion", "created": int(time.time()),
                    "model": body.get("model", "bench"),
                    "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                                 "message": {"role": "assistant", "content": "Bench Session"}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
                })
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def send_json(writer: asyncio.StreamWriter, payload: dict, status: int = 200) -> None:
    data = json.dumps(payload).encode()
    writer.write(b"HTTP/1.1 %d OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                 % (status, len(data), data))
    await writer.drain()


async def stream(writer: asyncio.StreamWriter, body: dict) -> None:
    text = last_user_text(body)
    tag = DIRECTIVE.search(text or "")
    if tag and tag.group(4):
        print(f"recv {tag.group(4)} {time.time():.6f}", flush=True)
    tokens, interval, first = directive(text)
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": body.get("model", "bench")}

    def event(delta: dict, finish: str | None) -> bytes:
        payload = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
        return chunk(b"data: " + json.dumps(payload).encode() + b"\n\n")

    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n")
    await writer.drain()
    if first:
        await asyncio.sleep(first)
    # Tokens are emitted on a fixed schedule from the first one, so a slow
    # reader does not stretch the intervals of the upstream itself.
    start = time.monotonic()
    for i in range(tokens):
        if i:
            delay = start + i * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        word = f"w{i} "
        writer.write(event({"role": "assistant", "content": word} if i == 0 else {"content": word}, None))
        await writer.drain()
    usage = b""
    if (body.get("stream_options") or {}).get("include_usage"):  # as OpenAI does: a last chunk, no choices
        payload = {**base, "choices": [], "usage": {"prompt_tokens": len(json.dumps(body.get("messages"))) // 4,
                                                    "completion_tokens": tokens,
                                                    "total_tokens": len(json.dumps(body.get("messages"))) // 4 + tokens}}
        usage = chunk(b"data: " + json.dumps(payload).encode() + b"\n\n")
    writer.write(event({}, "stop") + usage + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
    await writer.drain()


async def main(port: int) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096, limit=1 << 22)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(main(parser.parse_args().port))
