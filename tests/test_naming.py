"""Session naming: the model path against FakeOpenAI, the cleaner, and the heuristic."""
from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from llm.naming import (
    DEFAULT_SESSION_NAME,
    MAX_INPUT_CHARS,
    MAX_NAME_CHARS,
    title_from_answer,
    generate_session_name,
    heuristic_session_name,
)

try:  # works whether or not tests/ is a package
    from tests.fake_openai import FakeOpenAI
except ImportError:
    from fake_openai import FakeOpenAI  # type: ignore[no-redef]

HIGHLAND = "What's the value of the Highland property?"


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(reply=lambda body: '"Highland Property Valuation."') as server:
        yield server


def name_via(base_url: str, message: str, **kwargs: Any) -> str:
    """generate_session_name with a real AsyncOpenAI client. The client's own
    max_retries is high on purpose: naming must switch SDK retries off."""
    async def run() -> str:
        async with openai.AsyncOpenAI(api_key="test-key", base_url=base_url, max_retries=5) as client:
            kwargs.setdefault("backoff_seconds", 0.01)
            return await generate_session_name(message, client=client, **kwargs)
    return asyncio.run(run())


# -- model path ---------------------------------------------------------------------

def test_model_answer_is_cleaned(fake: FakeOpenAI) -> None:
    assert name_via(fake.base_url, HIGHLAND) == "Highland Property Valuation"
    assert len(fake.chat_requests) == 1


def test_request_is_small_and_bounded(fake: FakeOpenAI) -> None:
    message = "Highland " + "".join(f"word{i} " for i in range(400))  # far beyond the bound
    assert len(message) > MAX_INPUT_CHARS + 100
    name_via(fake.base_url, message, model="naming-model")

    [request] = fake.chat_requests
    body = request.json
    assert body["model"] == "naming-model"
    assert 0 < body["max_tokens"] <= 16
    assert body["temperature"] == pytest.approx(0.2)
    assert body.get("stream") in (None, False)
    sent = "\n".join(m["content"] for m in body["messages"])
    assert message[:MAX_INPUT_CHARS] in sent
    assert message[:MAX_INPUT_CHARS + 1] not in sent
    assert len(sent) < MAX_INPUT_CHARS + 600  # the instructions stay small too
    assert request.headers["Authorization"] == "Bearer test-key"


def test_two_server_errors_then_success(fake: FakeOpenAI) -> None:
    fake.fail_next(status=500)
    fake.fail_next(status=429)
    assert name_via(fake.base_url, HIGHLAND) == "Highland Property Valuation"
    assert len(fake.chat_requests) == 3


def test_all_attempts_fail_gives_heuristic_with_exact_attempt_count(fake: FakeOpenAI) -> None:
    for _ in range(3):
        fake.fail_next(status=500)
    name = name_via(fake.base_url, HIGHLAND, retries=2)
    assert "Highland" in name
    assert name == heuristic_session_name(HIGHLAND)
    # 1 + 2 retries, none added by the SDK (its max_retries=5 would have succeeded on a 4th call).
    assert len(fake.chat_requests) == 3
    assert fake.faults_pending == 0


def test_unusable_answer_is_retried(fake: FakeOpenAI) -> None:
    answers = iter(['""', "...", "Bristol Comparable Sales"])
    fake.reply = lambda body: next(answers)
    assert name_via(fake.base_url, "Find comparable sales in Bristol") == "Bristol Comparable Sales"
    assert len(fake.chat_requests) == 3


def test_timeout_falls_back_to_heuristic(fake: FakeOpenAI) -> None:
    fake.hang_next(30)
    fake.hang_next(30)
    name = name_via(fake.base_url, HIGHLAND, timeout_seconds=0.2, retries=1)
    assert "Highland" in name
    assert len(fake.chat_requests) == 2


def test_connection_refused_falls_back_to_heuristic() -> None:
    with FakeOpenAI() as closed:
        base_url = closed.base_url
    # The server is stopped, so nothing listens on that port any more.
    assert "Bristol" in name_via(base_url, "Find me comparable properties in Bristol", retries=1)


def test_offline_uses_heuristic_without_a_client() -> None:
    assert asyncio.run(generate_session_name(HIGHLAND, client=None)) == heuristic_session_name(HIGHLAND)
    assert asyncio.run(generate_session_name("   ", client=None)) == DEFAULT_SESSION_NAME


def test_empty_message_makes_no_model_call(fake: FakeOpenAI) -> None:
    assert name_via(fake.base_url, "  \n ") == DEFAULT_SESSION_NAME
    assert fake.chat_requests == []


def test_cancellation_propagates(fake: FakeOpenAI) -> None:
    fake.hang_next(30)

    async def run() -> None:
        async with openai.AsyncOpenAI(api_key="k", base_url=fake.base_url) as client:
            task = asyncio.create_task(generate_session_name(HIGHLAND, client=client, timeout_seconds=20))
            assert await asyncio.to_thread(fake.wait_for_requests, 1, 5)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(run())
    assert len(fake.chat_requests) == 1  # no retry after cancellation


# -- title_from_answer ---------------------------------------------------------------

@pytest.mark.parametrize(("raw", "expected"), [
    ('"Highland Property Valuation."', "Highland Property Valuation"),
    ("'Bristol Comparable Sales'", "Bristol Comparable Sales"),
    ("`Roman Empire History`", "Roman Empire History"),
    ("Title: the value of highland property", "The Value of Highland Property"),
    ("**Budget Planning for 2025**", "Budget Planning for 2025"),
    ("Cooking Tips!!!", "Cooking Tips"),
    ("one two three four five six seven", "One Two Three Four Five"),
    ("NASA API usage with gpt-4o", "NASA API Usage with gpt-4o"),
    ("Tips for the", "Tips"),
    ("Hello\x00World\x07 Test", "Hello World Test"),
    ("Paris\n\nThis title captures the topic.", "Paris"),
    ("<think>short</think>Travel Plans", "Travel Plans"),
    # Markdown never stays in a name, balanced or cut off by max_tokens.
    ("Here Is a **Plan** for Q3", "Here Is a Plan"),
    ("Here Is a **Plan", "Here Is a Plan"),
    ("_Tax_ `return` ~~draft~~", "Tax Return Draft"),
    ("[Bristol Sales](https://example.com) Notes", "Bristol Sales Notes"),
    ("## Garden Design", "Garden Design"),
    ("snake_case Migration", "Snake_case Migration"),  # an underscore inside a word is not markdown
])
def test_clean_session_name(raw: str, expected: str) -> None:
    assert title_from_answer(raw) == expected


def test_clean_session_name_limits_length_at_word_boundary() -> None:
    raw = "Extraordinarily Comprehensive Intercontinental Telecommunications Infrastructure"
    name = title_from_answer(raw)
    assert name is not None and len(name) <= MAX_NAME_CHARS
    assert raw.startswith(name) and raw[len(name)] == " "  # cut between words
    assert len(title_from_answer("A" * 200) or "") == MAX_NAME_CHARS


@pytest.mark.parametrize("raw", ["", "   ", "...", '""', "\x00\x01", "<think>unfinished reasoning"])
def test_clean_session_name_rejects_unusable(raw: str) -> None:
    assert title_from_answer(raw) is None


def test_clean_session_name_has_no_control_characters() -> None:
    name = title_from_answer("Budget\tPlan\u200b\r\nsecond line")
    assert name == "Budget Plan"
    assert all(ch.isprintable() for ch in name)


# -- heuristic_session_name -----------------------------------------------------------

@pytest.mark.parametrize(("message", "must_contain"), [
    (HIGHLAND, "Highland"),
    ("Find me comparable properties in Bristol", "Bristol"),
    ("Qu'est-ce que la Tour Eiffel?", "Tour Eiffel"),
    ("¿Cuál es la capital de España?", "España"),
    ("Help me debug my Python code", "Python"),
    ("埃菲尔铁塔有多高", "埃菲尔铁塔"),
])
def test_heuristic_keeps_key_words(message: str, must_contain: str) -> None:
    name = heuristic_session_name(message)
    assert must_contain in name
    assert name != DEFAULT_SESSION_NAME
    assert 1 <= len(name.split()) <= 5 and len(name) <= MAX_NAME_CHARS


def test_heuristic_drops_stopwords_and_title_cases() -> None:
    assert heuristic_session_name(HIGHLAND) == "Highland Property Value"
    assert heuristic_session_name("Find me comparable properties in Bristol") == "Comparable Properties in Bristol"
    name = heuristic_session_name("can you please compare the average rent prices for small family flats near Denver")
    words = name.split()
    assert "Denver" in words  # proper nouns win a place even late in a long message
    assert words == ["Compare", "Average", "Rent", "Prices", "Denver"]  # message order is kept
    assert not {"can", "you", "please", "the"} & {w.lower() for w in words}


def test_heuristic_is_bounded_and_deterministic() -> None:
    message = "Compare Lisbon Porto Madrid Seville Valencia Barcelona Bilbao housing markets " * 50
    name = heuristic_session_name(message)
    assert name == heuristic_session_name(message)
    assert len(name.split()) <= 5 and len(name) <= MAX_NAME_CHARS
    assert heuristic_session_name("x" * 500) == "X" + "x" * (MAX_NAME_CHARS - 1)


@pytest.mark.parametrize("message", ["", "   \n\t", "???", "😀", "😀 🎉 !!!", "What is it?", "Hello", "can you help me?"])
def test_heuristic_default_only_when_nothing_usable(message: str) -> None:
    assert heuristic_session_name(message) == DEFAULT_SESSION_NAME


def test_logs_never_contain_message_content(fake: FakeOpenAI, caplog: pytest.LogCaptureFixture) -> None:
    secret = "Confidential Zanzibar acquisition memo"
    fake.fail_next(status=500)
    fake.reply = lambda body: ""  # then an unusable answer, then more of the same
    caplog.set_level("DEBUG", logger="llm.naming")
    name = name_via(fake.base_url, secret, retries=2)
    assert "Zanzibar" in name  # heuristic fallback after 3 failed attempts
    naming_logs = [r.getMessage() for r in caplog.records if r.name == "llm.naming"]
    assert any("InternalServerError" in m for m in naming_logs)
    assert any("unusable" in m for m in naming_logs)
    assert not any(word in m for m in naming_logs for word in ("Zanzibar", "Confidential", "memo"))
