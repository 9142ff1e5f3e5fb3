"""Search inside conversations: every query form against known messages, snippets as plain text with
offsets, isolation between users under any filter, and visibility that follows deletes, renames,
restores and branches in the same transaction. Real PostgreSQL (the embedded one has no pg_trgm: the
substring forms run without their index there, and with it under TEST_DATABASE_URL)."""

from __future__ import annotations

import pytest

from backend.services import services_of
from tests.chat_support import model_reply, named_session, parse_sse
from tests.helpers import User, client_for


@pytest.fixture
def client(chat_app, alice):
    return client_for(chat_app, alice)


def say(client, sid: str, query: str) -> dict:
    response = client.post("/api/llm/query/stream", json={"session_id": sid, "query": query})
    assert response.status_code == 200, response.get_data(as_text=True)
    events, _ = parse_sse(response.get_data(as_text=True))
    assert events[-1].event == "done", events[-1].data
    return events[-1].data


def search(client, q: str, **params) -> dict:
    response = client.get("/api/llm/search", query_string={"q": q, **params})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def texts(result: dict) -> list[str]:
    return [hit["snippet"] for hit in result["data"]]


@pytest.fixture
def library(client, fake):
    """Alice's conversations; the fake model echoes ("Echo: <question>")."""
    sid = named_session(client, "Garden notes")
    say(client, sid, "How deep should tomato seedlings be planted?")
    say(client, sid, "Is basil happy next to tomatoes?")
    other = named_session(client, "Travel")
    say(client, other, "The train from Lyon to Turin leaves at noon")
    say(client, other, "東京の天気はどうですか")
    return {"garden": sid, "travel": other}


def test_words_all_match_and_snippets_are_plain_text_with_offsets(client, library):
    result = search(client, "tomato seedlings")
    assert result["data"], result
    for hit in result["data"]:
        assert "<" not in hit["snippet"] and "\x01" not in hit["snippet"]
        marked = [hit["snippet"][a:b].lower() for a, b in hit["highlights"]]
        assert "tomato" in marked and "seedlings" in marked
        assert hit["session_id"] == library["garden"] and hit["session_name"] == "Garden notes"
    assert {hit["role"] for hit in result["data"]} == {"user", "assistant"}
    assert search(client, "tomato train")["data"] == []


def test_phrases_and_excluded_words(client, library):
    assert [h["role"] for h in search(client, '"from Lyon to Turin"', role="user")["data"]] == ["user"]
    assert search(client, '"Turin to Lyon"')["data"] == []
    only_questions = search(client, "tomato -echo")["data"]
    assert only_questions and all(h["role"] == "user" for h in only_questions)
    assert search(client, "basil", role="assistant")["data"][0]["snippet"].startswith("Echo:")


def test_substrings_for_scripts_without_spaces_and_fragments(client, library):
    hits = search(client, "天気")["data"]
    assert hits and all(h["session_id"] == library["travel"] for h in hits)
    hit = hits[0]
    assert [hit["snippet"][a:b] for a, b in hit["highlights"]] == ["天気"]
    # A lone word that is no word of any message is looked for as a substring.
    fragment = search(client, "eedling")["data"]
    assert fragment and all("eedling" in h["snippet"] for h in fragment)


def test_filters_session_role_time_and_archived(client, library):
    garden = search(client, "tomato", session_id=library["travel"])
    assert garden["data"] == []
    assert all(h["role"] == "user" for h in search(client, "tomato", role="user")["data"])
    assert search(client, "tomato", until="2000-01-01T00:00:00Z")["data"] == []
    assert search(client, "tomato", since="2000-01-01T00:00:00Z")["data"]
    assert client.put(f"/api/llm/sessions/{library['garden']}", json={"is_archived": True}).status_code == 200
    assert search(client, "tomato")["data"] == []
    assert search(client, "tomato", include_archived="true")["data"]


def test_pages_by_keyset_without_repeats(client, fake):
    sid = named_session(client, "Many")
    for i in range(5):
        say(client, sid, f"pagination marker {i}")
    for order in ("recent", "rank"):
        seen, cursor = [], None
        while True:
            params = {"limit": 3, "order": order, **({"cursor": cursor} if cursor else {})}
            page = search(client, "pagination marker", **params)
            seen += [h["message_id"] for h in page["data"]]
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert len(seen) == len(set(seen)) == 10, order
    recent = search(client, "pagination marker", order="recent", limit=10)["data"]
    stamps = [h["created_at"] for h in recent]
    assert stamps == sorted(stamps, reverse=True)


def test_another_users_messages_never_appear(chat_app, client, library):
    bob = client_for(chat_app, User())
    bob_sid = named_session(bob, "Bob's garden")
    say(bob, bob_sid, "tomato seedlings for bob")
    for params in ({}, {"session_id": library["garden"]}, {"include_archived": "true"}, {"role": "user"},
                   {"branch": "active"}, {"order": "recent"}):
        assert all(h["session_id"] == bob_sid for h in search(bob, "tomato", **params)["data"])
        assert all(h["session_id"] != bob_sid for h in search(client, "tomato", **params)["data"])
    assert search(bob, "basil")["data"] == [] and search(bob, "天気")["data"] == []


def test_delete_rename_and_restore_show_at_once(client, library):
    assert client.put(f"/api/llm/sessions/{library['travel']}", json={"session_name": "Italy"}).status_code == 200
    assert {h["session_name"] for h in search(client, "Turin")["data"]} == {"Italy"}
    deleted = client.delete(f"/api/llm/sessions/{library['travel']}?backup=true").get_json()
    assert search(client, "Turin")["data"] == []
    restored = client.post("/api/llm/sessions/restore", json={"backup_id": deleted["backup"]["backup_id"]})
    assert restored.status_code == 201
    assert search(client, "Turin")["data"]


def test_every_branch_or_the_active_one(client, fake):
    sid = named_session(client, "Branchy")
    done = say(client, sid, "original wording about zebras")
    response = client.post(f"/api/llm/sessions/{sid}/messages/{done['user_message_id']}/edit",
                           json={"query": "new wording about giraffes"})
    assert response.status_code == 200
    response.get_data()
    everywhere = search(client, "zebras")["data"]
    assert everywhere and not any(h["on_active_branch"] for h in everywhere)
    assert search(client, "zebras", branch="active")["data"] == []
    assert all(h["on_active_branch"] for h in search(client, "giraffes", branch="active")["data"])


@pytest.mark.parametrize("q", ['"unbalanced', "a & b | !c", "(tomato)", "tomato:*", "\\", "'", "-", "\"\"",
                               "*", "%", "_", "tomato) OR (1=1"])
def test_hostile_queries_are_answered_not_failed(client, library, q):
    response = client.get("/api/llm/search", query_string={"q": q})
    assert response.status_code in (200, 400), response.get_json()
    if response.status_code == 400:
        assert response.get_json()["error"]["code"] == "validation_error"


@pytest.mark.parametrize("q", ["x" * 10_000, "-tomato", "-\"a phrase\"", " ", "a\x00b",
                               " ".join(f"w{i}" for i in range(13))])
def test_queries_that_cannot_be_a_search_are_400(client, q):
    response = client.get("/api/llm/search", query_string={"q": q})
    assert response.status_code == 400, response.get_json()


def test_a_cursor_from_elsewhere_is_400(client, library):
    for cursor in ("nope", "eyJ4IjoxfQ", "W10"):
        response = client.get("/api/llm/search", query_string={"q": "tomato", "cursor": cursor})
        assert response.status_code == 400 and response.get_json()["error"]["fields"] == {"cursor": "not a cursor from this search"}


def test_only_stop_words_is_an_empty_result(module_make_app, fake_model):
    app = module_make_app(openai_base_url=fake_model.base_url, openai_api_key="k", openai_model="fake-chat",
                          search_language="english")
    try:
        client = client_for(app, User())
        sid = named_session(client, "Runs")
        say(client, sid, "I was running all morning")
        assert search(client, "the and of")["data"] == []
        assert search(client, "runs")["data"]  # stemmed: runs ~ running
    finally:
        services_of(app).search.configure("simple")


def test_reindex_finds_messages_from_before_the_index(chat_app, client, library):
    pool = services_of(chat_app).db.pool
    with pool.connection() as conn:
        conn.execute("update chat_messages set search_vector = null where session_row_id = "
                     "(select id from chat_sessions where session_id = %s)", (library["garden"],))
    assert search(client, "basil happy")["data"] == []  # two words: no substring fallback
    result = chat_app.test_cli_runner().invoke(args=["reindex-search"])
    assert result.exit_code == 0, result.output
    assert "indexed" in result.output
    assert search(client, "basil happy")["data"]
