"""Model client construction, kept Flask-free so workers, scripts and tests can share it."""
from __future__ import annotations

from dataclasses import dataclass, field

import openai

from llm.transport import ReusableStreamsTransport, ShardedPool

# Local OpenAI-compatible servers (Ollama, vLLM, LM Studio) ignore the key, but the SDK
# refuses to start without one.
PLACEHOLDER_API_KEY = "not-needed"


class OfflineModelError(RuntimeError):
    """Raised when a client is requested but no model endpoint is configured."""


@dataclass(frozen=True)
class ModelSettings:
    api_key: str | None = field(repr=False)  # never print the key
    base_url: str | None
    model: str = "gpt-4o-mini"
    naming_model: str = "gpt-4o-mini"
    # Per-operation limit (read/write/pool), not a whole-request deadline: a long stream
    # is fine as long as chunks keep arriving within it.
    timeout_seconds: float = 60.0
    connect_timeout_seconds: float = 10.0
    max_retries: int = 2

    def __post_init__(self) -> None:
        if self.timeout_seconds <= 0 or self.connect_timeout_seconds <= 0:
            raise ValueError("timeouts must be positive")
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")

    @property
    def offline(self) -> bool:
        """No endpoint configured: callers fall back to canned/heuristic behaviour."""
        return not self.api_key and not self.base_url


def _client_options(settings: ModelSettings) -> dict[str, object]:
    if settings.offline:
        raise OfflineModelError(
            "No model endpoint configured: set an API key (OpenAI) or a base URL "
            "(an OpenAI-compatible server such as Ollama, vLLM or LM Studio)."
        )
    return {
        "api_key": settings.api_key or PLACEHOLDER_API_KEY,
        "base_url": settings.base_url or None,  # None: the SDK default (OPENAI_BASE_URL or api.openai.com)
        # openai.Timeout is the httpx Timeout class the installed SDK uses.
        "timeout": openai.Timeout(settings.timeout_seconds, connect=settings.connect_timeout_seconds),
        "max_retries": settings.max_retries,
    }


def make_client(settings: ModelSettings) -> openai.OpenAI:
    """A sync client with deliberate timeouts and retries. Raises OfflineModelError when offline.

    Its transport is the SDK's default (same connection limits in all), split
    in shards, and wrapped so a streamed reply's connection is used again
    (llm/transport.py)."""
    options = _client_options(settings)
    transport = ReusableStreamsTransport(ShardedPool(openai.DEFAULT_CONNECTION_LIMITS))
    http_client = openai.DefaultHttpxClient(transport=transport, timeout=options["timeout"])
    return openai.OpenAI(**options, http_client=http_client)  # type: ignore[arg-type]


def make_async_client(settings: ModelSettings) -> openai.AsyncOpenAI:
    """An async client with deliberate timeouts and retries. Raises OfflineModelError when offline."""
    return openai.AsyncOpenAI(**_client_options(settings))  # type: ignore[arg-type]
