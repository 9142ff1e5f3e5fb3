"""How a reply reaches the client: queued tokens share an event, a stalled reader is cut off,
and requests past the per-process connection limit get a clean 503."""

from __future__ import annotations

from tests.chat_support import named_session, parse_sse, reply_text, send, wait_until
from tests.helpers import client_for


def run_is_over(pool, session_id: str) -> bool:
    with pool.connection() as conn:
        return conn.execute("select 1 from chat_session_runs where session_id = %s", (session_id,)).fetchone() is None


def test_tokens_queued_while_the_client_is_not_reading_go_out_as_one_event(chat, fake, pool):
    sid = named_session(chat)
    fake.reply = lambda body: "alpha beta gamma delta epsilon"
    response = send(chat, sid, "go", buffered=False)
    assert wait_until(lambda: run_is_over(pool, sid))  # the whole reply is queued, nothing read yet
    events, _ = parse_sse(response.get_data(as_text=True))
    response.close()
    assert [e.event for e in events] == ["run", "token", "done"]
    assert reply_text(events) == "alpha beta gamma delta epsilon"
    assert events[-1].data["message_count"] == 2


def test_tokens_that_arrive_apart_are_sent_apart(chat, fake):
    sid = named_session(chat)
    fake.reply = lambda body: "one two three four"
    fake.token_delay = 0.05
    events, _ = parse_sse(send(chat, sid, "go").get_data(as_text=True))
    assert [e.data["content"] for e in events if e.event == "token"] == ["one ", "two ", "three ", "four"]
    assert events[-1].event == "done"


def test_a_client_that_stops_reading_ends_the_reply_and_frees_the_session(make_app, fake, alice, pool):
    # Only where a client going away stops its reply: otherwise the reply goes on for other readers.
    app = make_app(openai_base_url=fake.base_url, openai_api_key="k", stream_buffer_chars=1024,
                   run_on_disconnect="cancel")
    client = client_for(app, alice)
    sid = named_session(client)
    long_reply = " ".join(f"word{i}" for i in range(2000))  # ~14,000 characters
    fake.reply = lambda body: long_reply
    fake.token_delay = 0.001
    response = send(client, sid, "talk a lot", buffered=False)
    assert wait_until(lambda: run_is_over(pool, sid))  # stopped long before the reply's 2 s
    events, _ = parse_sse(response.get_data(as_text=True))
    response.close()
    assert events[-1].event == "error" and events[-1].data["code"] == "slow_client"
    assert len(reply_text(events)) <= 1024 + 20  # the bound, plus the token that crossed it
    body = client.get(f"/api/llm/sessions/{sid}?include_messages=true").get_json()
    assert [m["role"] for m in body["messages"]] == ["user"]  # the stopped reply is not kept
    assert body["data"]["message_count"] == 1
    assert fake.client_disconnected.wait(5)  # and the upstream was told to stop


def test_requests_past_the_connection_limit_get_503_until_one_finishes(make_app, fake, alice):
    app = make_app(openai_base_url=fake.base_url, openai_api_key="k", max_connections_per_worker=1)
    client = client_for(app, alice)
    sid = named_session(client)
    with fake.hold_streams() as gate:
        streaming = send(client, sid, "hold on", buffered=False)  # open until closed below
        assert gate.wait_for_held(1)
        refused = client.get("/api/llm/sessions", headers={"Origin": "http://localhost:5173"})
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "2"
        assert refused.get_json() == {
            "success": False,
            "error": {"code": "overloaded", "message": "The server is at capacity; try again shortly"},
        }
        # readable by a browser on an allowed origin
        assert refused.headers["Access-Control-Allow-Origin"] == "http://localhost:5173"
        assert client.get("/api/llm/sessions", headers={"Origin": "https://evil.example"}).headers.get(
            "Access-Control-Allow-Origin") is None
        gate.release()
        events, _ = parse_sse(streaming.get_data(as_text=True))
        streaming.close()
    assert events[-1].event == "done"
    assert client.get("/api/llm/sessions").status_code == 200
