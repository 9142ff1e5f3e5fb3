"""The model behind a chat turn: any OpenAI-compatible server, or a built-in offline one."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

import openai
from openai.types.chat import ChatCompletion

from llm.transport import shut_down, socket_of
from llm.usage import CallUsage, usage_from_openai

OFFLINE_MODEL_NAME = "offline"


class ReplyCancelled(Exception):
    """The reply was stopped (client gone, or a forced delete) before it finished."""


class CancelSignal(Protocol):
    """How the caller stops a reply (backend.chat.runs.CancelToken is one): polled between
    pieces, and a hook to break a read that is blocked on a quiet upstream."""

    def is_set(self) -> bool: ...

    def on_cancel(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Run `callback` (which must not block) once cancelled; returns a function that unregisters it."""
        ...


class ChatModel(Protocol):
    name: str

    def stream(self, messages: list[dict[str, Any]], cancel: CancelSignal) -> Iterator[str]:
        """Yield the reply's text in pieces; raise ReplyCancelled once `cancel` is set."""
        ...


class OpenAIChatModel:
    def __init__(self, client: openai.OpenAI, model: str, max_tokens: int | None = None) -> None:
        self._client = client
        self.name = model
        self._max_tokens = max_tokens  # the most a reply may cost upstream

    def stream(self, messages: list[dict[str, Any]], cancel: CancelSignal) -> Iterator[str]:
        return self.stream_metered(messages, cancel)

    def stream_metered(
        self, messages: list[dict[str, Any]], cancel: CancelSignal, *, max_tokens: int | None = None,
        on_usage: Callable[[CallUsage], None] | None = None,
    ) -> Iterator[str]:
        """stream(), asking the upstream for its usage (`stream_options.include_usage`): `on_usage`
        gets an llm.usage.CallUsage when the last chunk carries it. `max_tokens` lowers the
        configured limit for this call (what the caller's quota leaves)."""
        if cancel.is_set():
            raise ReplyCancelled()
        limit = self._max_tokens if max_tokens is None else min(max_tokens, self._max_tokens or max_tokens)
        # The SDK's low-level post, not chat.completions.create: create() walks
        # every message through its type-driven transform first, which took
        # 27 ms for a 100-turn conversation (and grows with it) against 2.7 ms
        # here. Same client, retries, errors and stream parsing; the messages
        # are plain dicts built by to_openai_messages.
        #
        # Chunks come as the plain dicts the SSE events carry (Stream[object]):
        # building a ChatCompletionChunk model per chunk was two thirds of a
        # 40-token turn's CPU (typing introspection in the SDK's construct).
        # The SDK still parses the SSE, raises on in-stream errors and maps
        # HTTP errors, timeouts and retries as before.
        response = self._client.post(
            "/chat/completions",
            body={"model": self.name, "messages": messages, "stream": True,
                  **({"stream_options": {"include_usage": True}} if on_usage is not None else {}),
                  **({"max_tokens": limit} if limit else {})},
            cast_to=ChatCompletion,
            stream=True,
            stream_cls=openai.Stream[object],
        )
        # A read blocked on a quiet upstream only wakes when its socket is shut
        # down (closing the response from another thread waits for the read).
        # Leaving the `with` closes the response in any case, so a stopped
        # reply stops costing tokens upstream at once.
        stop_watching = cancel.on_cancel(lambda: _shut_down_socket(response))
        try:
            with response:
                for chunk in response:
                    if cancel.is_set():
                        raise ReplyCancelled()
                    text = _delta_text(chunk)
                    if text:
                        yield text
                    elif on_usage is not None and isinstance(chunk, dict) and chunk.get("usage"):
                        usage = usage_from_openai(self.name, chunk["usage"])
                        if usage is not None:
                            on_usage(usage)
        except Exception:
            if cancel.is_set():
                raise ReplyCancelled() from None
            raise
        finally:
            stop_watching()


def _delta_text(chunk: Any) -> str | None:
    """The text of one streamed chat.completion.chunk (a dict), if it has any."""
    choices = chunk.get("choices") if isinstance(chunk, dict) else None
    if not choices or not isinstance(choices[0], dict):
        return None
    content = (choices[0].get("delta") or {}).get("content")
    return content if isinstance(content, str) else None


def _shut_down_socket(response: Any) -> None:
    """Wake a read blocked on this streamed response; never blocks itself."""
    shut_down(socket_of(getattr(getattr(response, "response", None), "extensions", {}).get("network_stream")))


class OfflineChatModel:
    """Deterministic answers for running without any model configured. It says so."""

    name = OFFLINE_MODEL_NAME

    def stream(self, messages: list[dict[str, Any]], cancel: CancelSignal) -> Iterator[str]:
        question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        turns = sum(1 for m in messages if m["role"] == "user")
        preview = " ".join(question.split())[:200]
        text = (
            "[offline model] No language model is configured (set OPENAI_API_KEY or OPENAI_BASE_URL), "
            f"so this is a canned reply to message {turns} of this chat. You said: {preview}"
        )
        for word in text.split(" "):
            if cancel.is_set():
                raise ReplyCancelled()
            yield word + " "
