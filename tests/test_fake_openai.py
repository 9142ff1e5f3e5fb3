"""The real openai.OpenAI client against FakeOpenAI, over loopback."""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import openai
import pytest

try:  # works whether or not tests/ is a package
    from tests.fake_openai import FakeOpenAI
except ImportError:
    from fake_openai import FakeOpenAI  # type: ignore[no-redef]

# Mid-stream transport failures: wrapped by newer SDKs, raw httpx/httpx2 errors in older ones.
STREAM_CUT_ERRORS: tuple[type[BaseException], ...] = (openai.APIConnectionError,)
for _module in ("httpx", "httpx2"):
    try:
        STREAM_CUT_ERRORS += (__import__(_module).TransportError,)
    except ImportError:
        pass


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


def make_client(fake: FakeOpenAI, **kwargs: object) -> openai.OpenAI:
    options: dict = {"api_key": "test-key", "base_url": fake.base_url, "max_retries": 0, "timeout": 5.0}
    options.update(kwargs)
    return openai.OpenAI(**options)


def ask(client: openai.OpenAI, text: str, **kwargs: object):
    return client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": text}], **kwargs)


def test_non_streaming_completion_and_request_log(fake: FakeOpenAI) -> None:
    with make_client(fake) as client:
        completion = ask(client, "hello there", max_tokens=50)

    assert completion.choices[0].message.content == "Echo: hello there"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "gpt-test"
    assert completion.usage is not None and completion.usage.completion_tokens == 3
    [request] = fake.requests
    assert request.method == "POST" and request.path == "/v1/chat/completions"
    assert request.json["model"] == "gpt-test"
    assert request.json["max_tokens"] == 50
    assert request.json["messages"] == [{"role": "user", "content": "hello there"}]
    assert request.headers["Authorization"] == "Bearer test-key"
    assert request.headers["authorization"] == "Bearer test-key"


def test_max_tokens_truncates_with_length_finish_reason(fake: FakeOpenAI) -> None:
    fake.reply = lambda body: "one two three four five"
    with make_client(fake) as client:
        completion = ask(client, "x", max_tokens=2)
    assert completion.choices[0].message.content == "one two "
    assert completion.choices[0].finish_reason == "length"


def test_models_endpoint_lists_one_model(fake: FakeOpenAI) -> None:
    with make_client(fake) as client:
        models = list(client.models.list())
    assert [m.id for m in models] == ["fake-model"]
    assert fake.chat_requests == []


def test_streaming_delivers_token_by_token(fake: FakeOpenAI) -> None:
    fake.reply = lambda body: f"Hi {body['model']}, nice day"
    with make_client(fake) as client:
        chunks = list(ask(client, "x", stream=True, stream_options={"include_usage": True}))

    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert content == ["Hi ", "gpt-test, ", "nice ", "day"]
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes == [None, None, None, None, "stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    assert fake.stream_started.is_set()


def test_server_error_then_success_with_sdk_retries(fake: FakeOpenAI) -> None:
    fake.fail_next(status=500, retry_after=0.01)
    fake.fail_next(status=429, retry_after=0.01)
    with make_client(fake, max_retries=2) as client:
        completion = ask(client, "third time lucky")
    assert completion.choices[0].message.content == "Echo: third time lucky"
    assert len(fake.chat_requests) == 3
    assert fake.faults_pending == 0


def test_faults_are_fifo_and_surface_as_sdk_errors(fake: FakeOpenAI) -> None:
    fake.fail_next(status=429, retry_after=0.01)
    fake.fail_next(status=500)
    with make_client(fake) as client:
        with pytest.raises(openai.RateLimitError):
            ask(client, "a")
        with pytest.raises(openai.InternalServerError):
            ask(client, "b")
        assert ask(client, "c").choices[0].message.content == "Echo: c"


def test_cut_stream_raises_after_n_tokens(fake: FakeOpenAI) -> None:
    fake.reply = lambda body: "one two three four five"
    fake.cut_stream_next(after_tokens=2)
    received: list[str] = []
    with make_client(fake) as client:
        with pytest.raises(STREAM_CUT_ERRORS):
            for chunk in ask(client, "x", stream=True):
                received.append(chunk.choices[0].delta.content or "")
        # The connection drop did not break the server for the next request.
        assert ask(client, "after").choices[0].message.content == "one two three four five"
    assert received == ["one ", "two "]


def test_cut_non_streaming_raises_connection_error(fake: FakeOpenAI) -> None:
    fake.cut_stream_next()
    with make_client(fake) as client:
        with pytest.raises(openai.APIConnectionError):
            ask(client, "x")


def test_hang_triggers_client_timeout(fake: FakeOpenAI) -> None:
    fake.hang_next(30)
    with make_client(fake, timeout=0.3) as client:
        started = time.monotonic()
        with pytest.raises(openai.APITimeoutError):
            ask(client, "x")
        assert time.monotonic() - started < 5
        # The hang was consumed: the next request is answered at once.
        assert ask(client, "y").choices[0].message.content == "Echo: y"


def test_gate_holds_stream_until_released(fake: FakeOpenAI) -> None:
    fake.reply = lambda body: "alpha beta gamma"
    received: list[str] = []
    first_token = threading.Event()
    errors: list[BaseException] = []

    def consume(client: openai.OpenAI) -> None:
        try:
            for chunk in ask(client, "x", stream=True):
                if chunk.choices and chunk.choices[0].delta.content:
                    received.append(chunk.choices[0].delta.content)
                    first_token.set()
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    with make_client(fake) as client, fake.hold_streams() as gate:
        consumer = threading.Thread(target=consume, args=(client,), daemon=True)
        consumer.start()
        assert gate.wait_for_held(1, timeout=5)
        assert fake.stream_started.wait(5)
        assert first_token.wait(5)
        # The server is parked at the gate, so nothing more can have arrived.
        assert received == ["alpha "]
        assert consumer.is_alive()
        gate.release()
        consumer.join(5)
    assert not consumer.is_alive() and errors == []
    assert received == ["alpha ", "beta ", "gamma"]


def test_wait_for_requests(fake: FakeOpenAI) -> None:
    assert fake.wait_for_requests(1, timeout=0.05) is False
    with make_client(fake) as client:
        ask(client, "x")
    assert fake.wait_for_requests(1, timeout=0.05) is True


def test_client_disconnect_is_quiet(fake: FakeOpenAI, capfd: pytest.CaptureFixture[str]) -> None:
    fake.reply = lambda body: "word " * 500
    with make_client(fake) as client, fake.hold_streams() as gate:
        stream = ask(client, "x", stream=True)
        assert next(iter(stream)).choices[0].delta.content == "word "
        stream.close()  # the client walks away mid-stream
        gate.release()
        assert fake.client_disconnected.wait(5)
        # The server keeps serving after the disconnect.
        assert ask(client, "y").choices[0].message.content.startswith("word ")
    assert "Traceback" not in capfd.readouterr().err


def test_stop_interrupts_hanging_request() -> None:
    fake = FakeOpenAI().start()
    fake.hang_next(60)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            with make_client(fake, timeout=30) as client:
                ask(client, "x")
        except BaseException as exc:
            errors.append(exc)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    assert fake.wait_for_requests(1, timeout=5)
    started = time.monotonic()
    fake.stop()
    caller.join(10)
    assert time.monotonic() - started < 5
    assert not caller.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], openai.APIError)
