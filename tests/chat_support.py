"""Helpers for chat tests: reading Server-Sent Events, waiting on a condition, the fake model."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import pytest

from backend.services import services_of
from tests.fake_openai import FakeOpenAI, echo_reply

NAMING_ANSWER = "Highland Property Valuation"


@dataclass
class SseEvent:
    event: str
    data: dict
    id: str | None = None


def parse_sse(text: str) -> tuple[list[SseEvent], list[str]]:
    """Events and comment lines (heartbeats) of an SSE body."""
    events, comments = [], []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        name, data, event_id = "message", [], None
        for line in block.split("\n"):
            if line.startswith(":"):
                comments.append(line[1:].strip())
            elif line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
            elif line.startswith("id:"):
                event_id = line[3:].strip()
        if data:
            events.append(SseEvent(name, json.loads("\n".join(data)), event_id))
    return events, comments


def reply_text(events: Iterable[SseEvent]) -> str:
    return "".join(e.data["content"] for e in events if e.event == "token")


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll a condition that has no event to wait on (rows in another process, say)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def model_reply(body: dict) -> str:
    """The fake upstream: naming requests (not streamed) get a title, chat gets an echo."""
    if not body.get("stream"):
        return NAMING_ANSWER
    return echo_reply(body)


def state_of(app):
    return services_of(app)


def named_session(client, name: str = "Named by the user") -> str:
    """A session the user named, so it is never auto-named (the fake sees chat requests only)."""
    from tests.helpers import unique_session_id

    sid = unique_session_id()
    assert client.post("/api/llm/sessions", json={"session_id": sid, "session_name": name}).status_code == 201
    return sid


def send(client, session_id: str, query: str, **kwargs):
    return client.post("/api/llm/query/stream", json={"session_id": session_id, "query": query}, **kwargs)


def turn(client, session_id: str, query: str) -> list[SseEvent]:
    """One whole turn; asserts it streamed."""
    response = send(client, session_id, query)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/event-stream"
    events, _ = parse_sse(response.get_data(as_text=True))
    return events


@pytest.fixture(scope="session")
def fake_model():
    with FakeOpenAI(reply=model_reply) as fake:
        yield fake


@pytest.fixture
def fake(fake_model):
    """The shared fake upstream, reset to its defaults for each test."""
    fake_model.reply = model_reply
    fake_model.token_delay = 0.0
    fake_model.first_token_delay = 0.0
    fake_model.report_usage = True
    fake_model.cached_tokens = 0
    yield fake_model
    assert fake_model.faults_pending == 0, "a test left scripted faults unused"
