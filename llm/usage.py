"""What a model call used: the upstream's own numbers when it reports them, else an estimate. Flask-free.

An OpenAI-compatible server reports a streamed reply's usage in a last chunk when asked
(`stream_options.include_usage`); a server that sends none, or a reply stopped before
that chunk, is estimated from the text (about 4 characters a token) and says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # llm.chat_model reports through this module
    from llm.chat_model import CancelSignal, ChatModel

CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class CallUsage:
    model: str
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int = 0
    reasoning_tokens: int | None = None
    source: str = "reported"  # or "estimated"


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN) if text else 0


def estimate_input_tokens(messages: list[dict[str, Any]]) -> int:
    """The prompt's tokens, estimated: its text plus a few tokens of framing per message."""
    total = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):  # content parts
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        total += estimate_tokens(content if isinstance(content, str) else "") + 4
    return total


def usage_from_openai(model: str, usage: Any) -> CallUsage | None:
    """A CallUsage from an OpenAI `usage` object or dict; None if it has no token counts."""
    if usage is None:
        return None
    get = usage.get if isinstance(usage, dict) else (lambda key, default=None: getattr(usage, key, default))
    prompt, completion = get("prompt_tokens"), get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    details = get("prompt_tokens_details") or {}
    out_details = get("completion_tokens_details") or {}
    cached = details.get("cached_tokens") if isinstance(details, dict) else getattr(details, "cached_tokens", None)
    reasoning = (out_details.get("reasoning_tokens") if isinstance(out_details, dict)
                 else getattr(out_details, "reasoning_tokens", None))
    return CallUsage(model=model, input_tokens=max(0, prompt), output_tokens=max(0, completion),
                     cached_input_tokens=min(max(0, cached or 0), max(0, prompt)),
                     reasoning_tokens=reasoning if isinstance(reasoning, int) and reasoning >= 0 else None)


@dataclass
class _Call:
    model: str
    messages: list[dict[str, Any]]
    chars: int = 0
    reported: CallUsage | None = None

    def usage(self) -> CallUsage:
        if self.reported is not None:
            return self.reported
        return CallUsage(model=self.model, input_tokens=estimate_input_tokens(self.messages),
                         output_tokens=math.ceil(self.chars / CHARS_PER_TOKEN), source="estimated")


@dataclass
class MeteredModel:
    """A turn's view of its chat model: every call through it is counted as it goes (reported,
    or estimated when the upstream sent no usage, or the reply stopped before it came), so
    `calls` is right whenever it is read, even while an abandoned stream is not yet closed;
    each call is given at most `max_tokens` (what the caller's quotas leave) if that is set."""

    inner: ChatModel
    max_tokens: int | None = None
    _calls: list[_Call] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def calls(self) -> list[CallUsage]:
        return [call.usage() for call in self._calls]

    def stream(self, messages: list[dict[str, Any]], cancel: CancelSignal) -> Iterator[str]:
        call = _Call(self.inner.name, messages)
        self._calls.append(call)

        def reported(usage: CallUsage) -> None:
            call.reported = usage

        metered = getattr(self.inner, "stream_metered", None)
        pieces = (metered(messages, cancel, max_tokens=self.max_tokens, on_usage=reported)
                  if metered is not None else self.inner.stream(messages, cancel))
        for piece in pieces:
            call.chars += len(piece)
            yield piece


UsageSink = Callable[[CallUsage], None]
