"""Usage (issue 30): a ledger row per model call, priced; totals; quotas that hold, also for
concurrent turns; the period's reset with the clock injected; isolation; lifecycle; the CLI."""

from __future__ import annotations

import json
import math
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest

from backend.services import services_of
from backend.usage.prices import Prices, parse_prices
from llm.usage import CallUsage
from tests.chat_support import named_session, parse_sse, reply_text, send, turn
from tests.helpers import User, client_for, unique_session_id

PRICES = {"currency": "EUR", "version": "v1",
          "models": {"fake-chat": {"input": 2.0, "cached_input": 0.5, "output": 8.0},
                     "fake-naming": {"input": 1.0, "output": 1.0}}}


def words(text: str) -> int:
    return len(text.split())


@pytest.fixture(scope="module")
def prices_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prices") / "prices.json"
    path.write_text(json.dumps(PRICES))
    return path


@pytest.fixture(scope="module")
def usage_app(module_make_app, fake_model, prices_file):
    return module_make_app(
        openai_base_url=fake_model.base_url, openai_api_key="test-key", openai_model="fake-chat",
        naming_model="fake-naming", openai_timeout_seconds=5, openai_max_retries=0, naming_timeout_seconds=2,
        model_prices_file=prices_file, chat_max_concurrent_per_user=64, db_pool_max_size=12,
    )


@pytest.fixture
def usage(usage_app, prices_file):
    service = services_of(usage_app).usage
    yield service
    service.clock = None
    prices_file.write_text(json.dumps(PRICES))


@pytest.fixture
def client(usage_app, alice):
    return client_for(usage_app, alice)


def ledger(pool, user_id: str) -> list[dict]:
    with pool.connection() as conn:
        return conn.execute("select * from usage_ledger where user_id = %s order by id", (user_id,)).fetchall()


@pytest.fixture
def pool(usage_app):
    return services_of(usage_app).db.pool


def chat_rows(pool, user_id):
    return [r for r in ledger(pool, user_id) if r["kind"] == "chat"]


def test_a_turn_records_the_usage_the_upstream_reports_at_its_price(client, fake, alice, pool):
    sid = named_session(client)
    fake.cached_tokens = 1
    events = turn(client, sid, "how much does this cost")
    assert events[-1].event == "done"
    request = fake.chat_requests[-1].json
    assert request["stream_options"] == {"include_usage": True}
    [row] = chat_rows(pool, alice.id)
    prompt = sum(words(m["content"]) for m in request["messages"])
    pieces = len([e for e in events if e.event == "token"])  # the fake sends a word per chunk
    assert (row["input_tokens"], row["cached_input_tokens"], row["source"]) == (prompt, 1, "reported")
    assert row["output_tokens"] == words(reply_text(events)) and pieces >= 1
    assert row["cost_micros"] == math.ceil((prompt - 1) * 2.0 + 1 * 0.5 + row["output_tokens"] * 8.0)
    assert (row["model"], row["currency"], row["price_version"]) == ("fake-chat", "EUR", "v1")
    assert (row["session_id"], str(row["run_id"]), row["business_id"]) == (sid, events[-1].data["run_id"], "biz-1")
    data = client.get(f"/api/llm/sessions/{sid}/usage").get_json()["data"]
    assert (data["calls"], data["input_tokens"], data["output_tokens"], data["cost_micros"], data["currency"]) == (
        1, row["input_tokens"], row["output_tokens"], row["cost_micros"], "EUR")


def test_an_upstream_that_reports_nothing_is_estimated_from_the_text(client, fake, alice, pool):
    sid = named_session(client)
    fake.report_usage = False
    events = turn(client, sid, "estimate me please")
    [row] = chat_rows(pool, alice.id)
    assert row["source"] == "estimated"
    assert row["output_tokens"] == math.ceil(len(reply_text(events)) / 4)
    assert row["input_tokens"] >= math.ceil(len("estimate me please") / 4)


def test_naming_calls_are_in_the_ledger(client, fake, alice, pool, usage_app):
    sid = unique_session_id()
    turn(client, sid, "name this conversation about gardening")
    assert services_of(usage_app).namer.wait_idle(10)
    naming = [r for r in ledger(pool, alice.id) if r["kind"] == "naming"]
    assert len(naming) == 1 and naming[0]["model"] == "fake-naming" and naming[0]["run_id"] is None
    assert naming[0]["source"] == "reported" and naming[0]["output_tokens"] > 0
    assert naming[0]["cost_micros"] == naming[0]["input_tokens"] + naming[0]["output_tokens"]  # 1.0 a million each
    data = client.get(f"/api/llm/sessions/{sid}/usage").get_json()["data"]
    assert data["calls"] == 2


def test_a_stopped_run_is_estimated_from_what_it_wrote(client, fake, alice, pool):
    from tests.test_runs import LONG_REPLY, start_held

    sid = named_session(client)
    fake.reply = lambda body: LONG_REPLY
    with fake.hold_streams() as gate:
        stream, run_id = start_held(client, sid, gate, "go")
        first = stream.next_event().data["content"]
        assert client.post(f"/api/llm/sessions/{sid}/runs/{run_id}/cancel").status_code == 200
        assert stream.rest()[-1].data["code"] == "cancelled"
    [row] = chat_rows(pool, alice.id)
    assert (str(row["run_id"]), row["source"]) == (run_id, "estimated")
    assert row["output_tokens"] == math.ceil(len(first) / 4)


def test_an_interrupted_run_and_the_message_that_interrupted_it_are_both_charged(client, fake, alice, pool):
    from tests.test_runs import LONG_REPLY, start_held

    sid = named_session(client)
    fake.reply = lambda body: LONG_REPLY
    with fake.hold_streams() as gate:
        stream, first_run = start_held(client, sid, gate, "go")
        fake.reply = lambda body: "short answer"
        second = {}
        waiter = threading.Thread(target=lambda: second.update(r=client.post(
            "/api/llm/query/stream", json={"session_id": sid, "query": "instead", "multitask_strategy": "interrupt"})))
        waiter.start()
        assert stream.rest()[-1].data["code"] == "cancelled"
        gate.release()
        waiter.join(10)
    assert second["r"].status_code == 200
    rows = chat_rows(pool, alice.id)
    assert [str(r["run_id"]) == first_run for r in rows] == [True, False]
    assert [r["source"] for r in rows] == ["estimated", "reported"]


def test_64_concurrent_turns_add_up_exactly(usage_app, fake, pool):
    users = [User() for _ in range(4)]
    clients = {u.id: client_for(usage_app, u) for u in users}
    sessions = [(u, named_session(clients[u.id])) for u in users for _ in range(16)]
    fake.token_delay = 0.005

    def one(item):
        user, sid = item
        return send(clients[user.id], sid, f"turn in {sid}").get_data(as_text=True)

    with ThreadPoolExecutor(64) as pool_:
        bodies = list(pool_.map(one, sessions))
    assert all(parse_sse(b)[0][-1].event == "done" for b in bodies)
    for user in users:
        rows = chat_rows(pool, user.id)
        assert len(rows) == 16 and all(r["source"] == "reported" for r in rows)
        body = clients[user.id].get("/api/llm/usage?group_by=session").get_json()
        assert body["total"]["calls"] == 16
        for key in ("input_tokens", "output_tokens", "cost_micros"):
            assert body["total"][key] == sum(r[key] for r in rows), key
        assert sorted(g["key"] for g in body["data"]) == sorted(sid for u, sid in sessions if u is user)


def test_a_price_change_charges_new_calls_only(client, fake, alice, pool, usage, prices_file):
    sid = named_session(client)
    turn(client, sid, "at the old price")
    prices_file.write_text(json.dumps({**PRICES, "version": "v2",
                                       "models": {"fake-chat": {"input": 4.0, "output": 16.0}}}))
    turn(client, sid, "at the new price")
    old, new = chat_rows(pool, alice.id)
    assert (old["price_version"], float(old["price_output"])) == ("v1", 8.0)
    assert (new["price_version"], float(new["price_output"])) == ("v2", 16.0)
    assert new["cost_micros"] == new["input_tokens"] * 4 + new["output_tokens"] * 16
    assert old["cost_micros"] == old["input_tokens"] * 2 + old["output_tokens"] * 8  # not rewritten
    total = client.get("/api/llm/usage?group_by=model").get_json()["total"]
    assert total["cost_micros"] == old["cost_micros"] + new["cost_micros"]


def _set_clock(usage, when: datetime):
    usage.clock = lambda: when


def test_a_quota_refuses_the_turn_until_its_period_resets(client, fake, alice, pool, usage):
    today = datetime.now(timezone.utc).date()
    late = datetime(today.year, today.month, today.day, 23, 59, 0, tzinfo=timezone.utc)
    _set_clock(usage, late)
    usage.set_quota(user_id=alice.id, business_id=None, period="day", max_tokens=40, max_cost=None)
    sid = named_session(client)
    fake.reply = lambda body: "one two three four five six seven eight nine ten"
    statuses = []
    for i in range(6):
        response = send(client, sid, f"turn {i}")
        statuses.append(response.status_code)
        if response.status_code == 429:
            break
    assert statuses[0] == 200 and statuses[-1] == 429
    body = response.get_json()
    assert body["success"] is False and body["error"]["code"] == "usage_limit_reached"
    assert response.headers["Retry-After"] == "60"  # the day ends a minute after the clock's 23:59
    assert response.headers["X-Quota-Remaining"].startswith("tokens=")
    used = sum(r["input_tokens"] + r["output_tokens"] for r in chat_rows(pool, alice.id))
    assert used <= 40
    quota = client.get("/api/llm/usage").get_json()["quotas"]
    assert [(q["scope"], q["period"], q["max_tokens"]) for q in quota] == [("user", "day", 40)]
    # A minute later it is another day: the quota holds again from zero.
    _set_clock(usage, late + timedelta(minutes=1))
    assert send(client, sid, "a new day").status_code == 200


def test_a_turn_gets_at_most_the_tokens_its_quota_leaves(client, fake, alice, pool, usage):
    usage.set_quota(user_id=alice.id, business_id=None, period="month", max_tokens=30, max_cost=None)
    sid = named_session(client)
    fake.reply = lambda body: " ".join(f"w{i}" for i in range(100))
    events = turn(client, sid, "long please")
    request = fake.chat_requests[-1].json
    assert request["max_tokens"] < 30  # not OPENAI_MAX_TOKENS: what the month leaves
    [row] = chat_rows(pool, alice.id)
    assert row["output_tokens"] == request["max_tokens"] == words(reply_text(events))
    assert row["input_tokens"] + row["output_tokens"] <= 30


def test_concurrent_turns_cannot_together_overrun_a_quota(usage_app, fake, pool, usage):
    user = User()
    client = client_for(usage_app, user)
    usage.set_quota(user_id=user.id, business_id=None, period="day", max_tokens=120, max_cost=None)
    sessions = [named_session(client) for _ in range(20)]
    fake.reply = lambda body: " ".join(f"w{i}" for i in range(20))
    fake.token_delay = 0.005
    with ThreadPoolExecutor(20) as pool_:
        responses = list(pool_.map(lambda sid: send(client, sid, "hi"), sessions))
    codes = sorted(r.status_code for r in responses)
    assert 200 in codes and 429 in codes and set(codes) == {200, 429}
    rows = chat_rows(pool, user.id)
    assert len(rows) == codes.count(200)
    assert sum(r["input_tokens"] + r["output_tokens"] for r in rows) <= 120


def test_a_business_quota_in_cost_holds_for_every_user_of_it(usage_app, fake, pool, usage):
    first, second = User(business_id="biz-quota"), User(business_id="biz-quota")
    usage.set_quota(user_id=None, business_id="biz-quota", period="month", max_tokens=None, max_cost=0.0002)
    a, b = client_for(usage_app, first), client_for(usage_app, second)
    fake.reply = lambda body: "five words of reply here"
    assert send(a, named_session(a), "hello").status_code == 200  # ~ 2 * 2 + 5 * 8 = 44 micros
    statuses = [send(b, named_session(b), "hello").status_code for _ in range(6)]
    assert statuses[-1] == 429
    spent = sum(r["cost_micros"] for u in (first, second) for r in chat_rows(pool, u.id))
    assert spent <= 200


def test_usage_updated_reaches_the_events_of_the_session(client, fake, alice, pool):
    sid = named_session(client)
    turn(client, sid, "tell my tabs")
    with pool.connection() as conn:
        [event] = conn.execute("select payload from session_events where user_id = %s and type = 'usage.updated'",
                               (alice.id,)).fetchall()
    [row] = chat_rows(pool, alice.id)
    assert event["payload"]["usage"]["cost_micros"] == row["cost_micros"]
    assert event["payload"]["run_id"] == str(row["run_id"]) and event["payload"]["kind"] == "chat"


def test_a_deleted_session_keeps_its_ledger_and_a_new_one_with_its_id_starts_at_zero(client, fake, alice, pool):
    sid = named_session(client)
    turn(client, sid, "bill me")
    assert client.delete(f"/api/llm/sessions/{sid}").status_code == 200
    assert len(chat_rows(pool, alice.id)) == 1  # billing outlives the chat
    assert client.get(f"/api/llm/sessions/{sid}/usage").status_code == 404
    assert client.get("/api/llm/usage?group_by=session").get_json()["total"]["calls"] == 1
    assert client.post("/api/llm/sessions", json={"session_id": sid, "session_name": "again"}).status_code == 201
    assert client.get(f"/api/llm/sessions/{sid}/usage").get_json()["data"]["calls"] == 0


def test_usage_of_other_users_is_invisible(usage_app, client, fake, alice, bob):
    sid = named_session(client)
    turn(client, sid, "mine")
    other = client_for(usage_app, bob)
    missing = other.get(f"/api/llm/sessions/{sid}/usage")
    assert missing.status_code == 404 and missing.get_json()["error"]["code"] == "not_found"
    body = other.get("/api/llm/usage?group_by=session").get_json()
    assert body["data"] == [] and body["total"]["calls"] == 0


@pytest.mark.parametrize("query, field", [
    ("group_by=week", "group_by"), ("since=yesterday", "since"), ("since=2026-02-30", "since"),
    ("until=0", "until"), ("until=20260101", "until"), ("limit=0", "limit"), ("limit=4001", "limit"),
])
def test_bad_usage_queries_are_400_naming_the_field(client, query, field):
    response = client.get(f"/api/llm/usage?{query}")
    assert response.status_code == 400
    body = response.get_json()
    assert body["success"] is False and field in body["error"]["fields"]


def test_usage_needs_a_caller_before_anything_else(usage_app):
    anonymous = usage_app.test_client()
    for path in ("/api/llm/usage", "/api/llm/sessions/x/usage"):
        response = anonymous.get(path)
        assert response.status_code == 401 and response.get_json()["error"]["code"] == "unauthorized"


def test_the_retention_removes_old_ledger_rows_only(usage, pool, alice):
    old = datetime.now(timezone.utc) - timedelta(days=40)
    _set_clock(usage, old)
    session = {"user_id": alice.id, "business_id": "biz-1", "session_id": "gone", "id": None}
    usage.record_naming(session, [CallUsage("fake-naming", 10, 2)])
    usage.clock = None
    usage.record_naming(session, [CallUsage("fake-naming", 20, 3)])
    usage._retention_days = 30
    try:
        assert usage.purge() >= 1
    finally:
        usage._retention_days = None
    assert [r["input_tokens"] for r in ledger(pool, alice.id)] == [20]


def test_set_quota_from_the_command_line(usage_app, pool, alice):
    runner = usage_app.test_cli_runner()
    result = runner.invoke(args=["set-quota", "--user-id", alice.id, "--period", "day", "--max-cost", "1.5"])
    assert result.exit_code == 0, result.output
    with pool.connection() as conn:
        row = conn.execute("select * from usage_quotas where scope_id = %s", (alice.id,)).fetchone()
    assert (row["scope"], row["period"], row["max_cost_micros"], row["max_tokens"]) == ("user", "day", 1_500_000, None)
    refused = runner.invoke(args=["set-quota", "--user-id", alice.id, "--business-id", "b", "--period", "day",
                                  "--max-tokens", "5"])
    assert refused.exit_code != 0


def test_prices_files_in_toml_and_what_a_bad_one_says(tmp_path, caplog):
    currency, version, prices = parse_prices(
        'currency = "USD"\n[models.m]\ninput = 1.5\noutput = 3\n', ".toml")
    assert (currency, prices["m"].input, prices["m"].cached_input, prices["m"].output) == ("USD", 1.5, 1.5, 3.0)
    assert len(version) == 12  # the content's hash when the file names no version
    with pytest.raises(ValueError, match="needs input and output"):
        parse_prices('{"models": {"m": {"input": 1}}}', ".json")
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_prices("{", ".json")
    unknown = Prices(None)
    with caplog.at_level("WARNING", logger="backend.usage.prices"):
        assert unknown.price_of("nobody-priced-this") is None
        assert unknown.price_of("nobody-priced-this") is None
    assert [r.getMessage() for r in caplog.records] == ["no price for this model: its calls cost 0"]  # once
    bad = tmp_path / "prices.toml"
    bad.write_text("models = 3")
    with pytest.raises(ValueError, match="must have a `models` table"):
        Prices(bad)  # a bad file fails the start, not a turn


@pytest.mark.parametrize("raw, status", [
    ("x" * 10_000, 400), ("x'%20OR%20'1'%3D'1", 400), ("a%00b", 400), ("%252e%252e", 400), ("%FF", 400),
    ("..", 400), ("_", 404), ("{sid}%2F..%2F{sid}", 404), ("{sid}%20", 400),
])
def test_hostile_session_ids_in_the_usage_path(usage_app, client, alice, bob, raw, status):
    sid = named_session(client)
    response = client_for(usage_app, bob).get("/api/llm/sessions/" + raw.format(sid=sid) + "/usage")
    assert response.status_code == status
    body = response.get_json()
    assert body["success"] is False and body["error"]["code"] == ("validation_error" if status == 400 else "not_found")
    assert client_for(usage_app, bob).get(f"/api/llm/sessions/{sid}/usage").status_code == 404


def test_usage_groups_are_limited_and_the_total_still_counts_them_all(usage, alice, pool, client):
    for i in range(5):
        session = {"user_id": alice.id, "business_id": "biz-1", "session_id": f"s{i}", "id": None}
        usage.record_naming(session, [CallUsage("fake-naming", 10 * (i + 1), 1)])
    body = client.get("/api/llm/usage?group_by=session&limit=2").get_json()
    assert [g["key"] for g in body["data"]] == ["s4", "s3"] and body["more"] is True  # most costly first
    assert body["total"]["calls"] == 5 and body["total"]["input_tokens"] == 150
    days = client.get("/api/llm/usage?group_by=day").get_json()
    assert days["more"] is False and [g["calls"] for g in days["data"]] == [5]


def test_a_run_whose_process_died_is_charged_an_estimate_by_upkeep(usage_app, client, alice, pool):
    from backend.chat.run_store import RunStore

    sid = named_session(client)
    run_id = RunStore(pool).start_run_in_session(alice.id, sid, "dead-host:1", 60, max_messages=10**6,
                                                 max_bytes=10**12, max_runs=100, query="what did it cost")[1]
    with pool.connection() as conn:
        conn.execute("update chat_session_runs set reply = %s, lease_expires_at = now() - interval '1 second' "
                     "where run_id = %s", ("x" * 41, run_id))
    assert services_of(usage_app).maintenance.reconcile_runs() >= 1
    [row] = chat_rows(pool, alice.id)
    assert (row["run_id"], row["source"], row["model"]) == (run_id, "estimated", "fake-chat")
    assert row["output_tokens"] == 11 and row["input_tokens"] == math.ceil(len("what did it cost") / 4) + 4
    assert row["cost_micros"] == row["input_tokens"] * 2 + row["output_tokens"] * 8


def test_an_export_says_what_the_session_cost_and_an_import_of_it_starts_at_nothing(client, fake, alice, pool):
    sid = named_session(client)
    turn(client, sid, "worth exporting")
    [row] = chat_rows(pool, alice.id)
    document = client.get(f"/api/llm/sessions/{sid}/export").get_json()
    assert document["session"]["usage"] == {"calls": 1, "input_tokens": row["input_tokens"],
                                            "output_tokens": row["output_tokens"], "cost_micros": row["cost_micros"],
                                            "currency": "EUR"}
    copy = unique_session_id()
    imported = client.post("/api/llm/sessions/import", json={**document, "session_id": copy})
    assert imported.status_code == 201, imported.get_json()
    assert client.get(f"/api/llm/sessions/{copy}/usage").get_json()["data"]["calls"] == 0


def test_a_custom_graph_answering_without_the_configured_model_is_charged_an_estimate(make_app, alice, prices_file):
    app = make_app(chat_graph_factory="tests.custom_graphs:without_streaming", model_prices_file=prices_file,
                   openai_base_url="http://127.0.0.1:9/v1", openai_api_key="k", openai_model="fake-chat")
    client = client_for(app, alice)
    sid = named_session(client)
    reply = reply_text(turn(client, sid, "one"))
    [row] = chat_rows(services_of(app).db.pool, alice.id)
    assert (row["source"], row["model"], row["output_tokens"]) == ("estimated", "fake-chat", math.ceil(len(reply) / 4))


def test_reported_details_cached_and_reasoning_tokens_are_kept():
    from llm.usage import usage_from_openai

    usage = usage_from_openai("m", {"prompt_tokens": 100, "completion_tokens": 40,
                                    "prompt_tokens_details": {"cached_tokens": 64},
                                    "completion_tokens_details": {"reasoning_tokens": 30}})
    assert (usage.input_tokens, usage.cached_input_tokens, usage.output_tokens, usage.reasoning_tokens) == (
        100, 64, 40, 30)
    assert usage_from_openai("m", {"prompt_tokens": "many"}) is None  # not numbers: estimated instead
    price = parse_prices('{"models": {"m": {"input": 1, "cached_input": 0.25, "output": 4}}}', ".json")[2]["m"]
    assert price.cost_micros(usage) == 36 * 1 + 64 * 0.25 + 40 * 4


def test_a_range_that_ends_before_it_starts_is_empty(client, usage, alice):
    usage.record_naming({"user_id": alice.id, "business_id": "biz-1", "session_id": "s", "id": None},
                        [CallUsage("fake-naming", 10, 1)])
    today = datetime.now(timezone.utc).date()
    body = client.get(f"/api/llm/usage?since={today}&until={today - timedelta(days=1)}").get_json()
    assert body["data"] == [] and body["total"]["calls"] == 0
    assert client.get(f"/api/llm/usage?until=0001-01-02").get_json()["since"] == "0001-01-01"


def test_a_queued_message_over_quota_ends_with_usage_limit_reached(client, fake, alice, pool, usage):
    from tests.test_runs import Stream, send_with, start_held

    sid = named_session(client)
    with fake.hold_streams() as gate:
        first, _ = start_held(client, sid, gate, "first")
        queued = Stream(send_with(client, sid, "second", "enqueue", buffered=False))
        assert queued.next_event().data["status"] == "queued"
        # The quota comes while the message waits; the first reply uses it up.
        usage.set_quota(user_id=alice.id, business_id=None, period="month", max_tokens=3, max_cost=None)
        gate.release()
        assert first.rest()[-1].event == "done"
        end = queued.rest()[-1]
    assert end.event == "error" and end.data["code"] == "usage_limit_reached"
    assert len(chat_rows(pool, alice.id)) == 1  # the queued message never reached the model


def test_default_quotas_hold_for_every_user_until_set_quota_gives_one_their_own(make_app, fake, fake_model):
    app = make_app(openai_base_url=fake_model.base_url, openai_api_key="k", openai_model="fake-chat",
                   default_user_quota_day_tokens=5)
    users = User(), User()
    first, second = (client_for(app, u) for u in users)
    for client in (first, second):
        refused = send(client, named_session(client), "a question that needs more than five tokens to answer")
        assert refused.status_code == 429 and refused.get_json()["error"]["code"] == "usage_limit_reached"
    services_of(app).usage.set_quota(user_id=users[0].id, business_id=None, period="day", max_tokens=10_000,
                                     max_cost=None)
    assert send(first, named_session(first), "now I may").status_code == 200
    assert send(second, named_session(second), "still a question needing more than five").status_code == 429
    state = first.get("/api/llm/usage").get_json()["quotas"]
    assert [(q["period"], q["max_tokens"]) for q in state] == [("day", 10_000)]


def test_a_monthly_quota_resets_when_the_month_turns(client, fake, alice, usage):
    end_of_month = datetime(2026, 12, 31, 23, 59, 30, tzinfo=timezone.utc)
    _set_clock(usage, end_of_month)
    usage.set_quota(user_id=alice.id, business_id=None, period="month", max_tokens=100, max_cost=None)
    usage.record_naming({"user_id": alice.id, "business_id": "biz-1", "session_id": "s", "id": None},
                        [CallUsage("fake-naming", 90, 10)])
    sid = named_session(client)
    refused = send(client, sid, "one more")
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "30"
    assert refused.headers["X-Quota-Remaining"] == "tokens=0"
    _set_clock(usage, end_of_month + timedelta(seconds=31))  # January
    assert send(client, sid, "one more").status_code == 200



# --- a session's usage on the session objects (include_usage) --------------------------------


def test_sessions_carry_their_usage_only_when_asked_read_once_for_the_page(usage_app, client, fake, alice, bob, pool,
                                                                           monkeypatch):
    spent, idle = named_session(client), named_session(client)
    turn(client, spent, "what did this cost")
    [row] = chat_rows(pool, alice.id)
    expected = {"calls": 1, "input_tokens": row["input_tokens"], "output_tokens": row["output_tokens"],
                "cost_micros": row["cost_micros"], "currency": "EUR"}
    zero = {"calls": 0, "input_tokens": 0, "output_tokens": 0, "cost_micros": 0, "currency": "EUR"}

    # Without the flag nothing says usage: absent, not null.
    assert all("usage" not in s for s in client.get("/api/llm/sessions").get_json()["data"])
    assert "usage" not in client.get(f"/api/llm/sessions/{spent}").get_json()["data"]
    assert "usage" not in client.get(f"/api/llm/sessions/{spent}?include_messages=true").get_json()["data"]

    store = services_of(usage_app).usage._store
    reads = []
    real = store.sessions_totals
    monkeypatch.setattr(store, "sessions_totals", lambda ids: reads.append(list(ids)) or real(ids))
    listed = client.get("/api/llm/sessions?include_usage=true").get_json()["data"]
    assert {s["session_id"]: s["usage"] for s in listed} == {spent: expected, idle: zero}
    assert len(reads) == 1 and len(reads[0]) == 2  # one read for the whole page
    page = client.get("/api/llm/sessions?include_usage=true&limit=1").get_json()
    rest = client.get(f"/api/llm/sessions?include_usage=true&limit=1&cursor={page['next_cursor']}").get_json()
    assert [s["usage"] for s in page["data"] + rest["data"]] == [expected, zero]  # the turn was the last activity
    found = client.get("/api/llm/sessions?include_usage=true&q=Named").get_json()["data"]
    assert {s["session_id"]: s["usage"] for s in found} == {spent: expected, idle: zero}

    detail = client.get(f"/api/llm/sessions/{spent}?include_usage=true&include_messages=true").get_json()
    assert detail["data"]["usage"] == expected and len(detail["messages"]) == 2
    assert client.get(f"/api/llm/sessions/{spent}/usage").get_json()["data"]["cost_micros"] == expected["cost_micros"]

    # Another user's list says nothing of these; a session id used again starts at zero.
    assert client_for(usage_app, bob).get("/api/llm/sessions?include_usage=true").get_json()["data"] == []
    assert client.delete(f"/api/llm/sessions/{spent}").status_code == 200
    assert client.post("/api/llm/sessions", json={"session_id": spent, "session_name": "again"}).status_code == 201
    assert client.get(f"/api/llm/sessions/{spent}?include_usage=true").get_json()["data"]["usage"] == zero


@pytest.mark.parametrize("value", ["maybe", "2"])
def test_a_bad_include_usage_is_400(client, value):
    sid = named_session(client)
    for path in ("/api/llm/sessions", f"/api/llm/sessions/{sid}"):
        response = client.get(f"{path}?include_usage={value}")
        assert response.status_code == 400 and "include_usage" in response.get_json()["error"]["fields"]


# --- naming calls within quotas --------------------------------------------------------------


def naming_requests_about(fake, text: str) -> list:
    return [r for r in fake.chat_requests if not r.json.get("stream") and text in r.json["messages"][-1]["content"]]


@pytest.mark.parametrize("scope", ["user", "business"])
def test_naming_over_quota_uses_the_heuristic_without_a_model_call_or_a_ledger_row(usage_app, fake, usage, pool,
                                                                                   scope):
    from llm.naming import heuristic_session_name

    user = User(business_id=f"biz-naming-{unique_session_id()}")
    client = client_for(usage_app, user)
    # The turn is given what the quota leaves (its reservation holds it while it runs), so the
    # naming call, which starts with the turn, finds nothing left.
    usage.set_quota(user_id=user.id if scope == "user" else None, business_id=None if scope == "user" else
                    user.business_id, period="day", max_tokens=60, max_cost=None)
    message = f"Comparable properties in Bristol {scope}"
    sid = unique_session_id()
    events = turn(client, sid, message)
    assert events[-1].event == "done"
    assert services_of(usage_app).namer.wait_idle(10)
    assert naming_requests_about(fake, message) == []  # the model was never asked
    assert [r["kind"] for r in ledger(pool, user.id)] == ["chat"]
    name = client.get(f"/api/llm/sessions/{sid}").get_json()["data"]["session_name"]
    assert name == heuristic_session_name(message) and "Bristol" in name


def test_naming_within_a_quota_still_asks_the_model(usage_app, fake, usage, pool):
    user = User()
    client = client_for(usage_app, user)
    usage.set_quota(user_id=user.id, business_id=None, period="month", max_tokens=1_000_000, max_cost=None)
    message = "name this conversation about tomatoes"
    turn(client, unique_session_id(), message)
    assert services_of(usage_app).namer.wait_idle(10)
    assert len(naming_requests_about(fake, message)) == 1
    assert sorted(r["kind"] for r in ledger(pool, user.id)) == ["chat", "naming"]


def test_the_naming_check_is_one_read_without_a_quota(usage, alice, pool):
    session = {"user_id": alice.id, "business_id": "biz-1"}
    assert usage.call_fits(session, "fake-naming", 100, 16) is True
    usage.set_quota(user_id=alice.id, business_id=None, period="day", max_tokens=None, max_cost=0.0001)  # 100 micros
    assert usage.call_fits(session, "fake-naming", 80, 16) is True  # 96 micros at 1.0 a million each
    assert usage.call_fits(session, "fake-naming", 90, 16) is False
    # Without a quota the check reads usage_quotas by its key and nothing else (counted in the transaction).
    from backend.usage.store import QUOTA_STATE_SQL

    def counts(conn):  # this backend's reads not yet reported: they only grow within a transaction
        return {r["relname"]: (r["seq_scan"], r["idx_scan"]) for r in conn.execute(
            "select relname, seq_scan, coalesce(idx_scan, 0) as idx_scan from pg_stat_xact_user_tables "
            "where relname like 'usage%%'").fetchall()}

    with pool.connection() as conn, conn.transaction():
        before = counts(conn)
        assert conn.execute(QUOTA_STATE_SQL, ("nobody", "no-business", None, "{}")).fetchall() == []
        after = counts(conn)
    reads = {name: (after[name][0] - before[name][0], after[name][1] - before[name][1]) for name in after}
    assert reads.pop("usage_quotas")[0] == 0  # by its key, not a scan
    assert all(n == (0, 0) for n in reads.values()), reads


# --- a business's quota reads the business's own days (sql/028) ------------------------------------


def business_days(pool, business_id: str) -> dict:
    """{day: (tokens, cost_micros, calls)} of usage_business_days, and the same summed from usage_user_days."""
    with pool.connection() as conn:
        kept = conn.execute("select day, input_tokens + output_tokens as tokens, cost_micros, calls "
                            "from usage_business_days where business_id = %s", (business_id,)).fetchall()
        summed = conn.execute("select day, sum(input_tokens + output_tokens) as tokens, "
                              "sum(cost_micros) as cost_micros, sum(calls) as calls from usage_user_days "
                              "where business_id = %s group by day",
                              (business_id,)).fetchall()
    return ({r["day"]: (r["tokens"], r["cost_micros"], r["calls"]) for r in kept},
            {r["day"]: (r["tokens"], r["cost_micros"], r["calls"]) for r in summed})


def test_a_business_quota_in_tokens_refuses_at_its_limit_with_turns_of_several_users(usage_app, fake, pool, usage):
    business = f"biz-tokens-{unique_session_id()}"
    users = [User(business_id=business) for _ in range(3)]
    clients = [client_for(usage_app, u) for u in users]
    usage.set_quota(user_id=None, business_id=business, period="day", max_tokens=100, max_cost=None)
    fake.reply = lambda body: "one two three four five six seven eight"
    statuses = []
    for i in range(12):  # the users in turn, until the business's day is spent
        c = clients[i % 3]
        statuses.append(send(c, named_session(c), f"turn {i}").status_code)
        if statuses[-1] == 429:
            break
    assert statuses[0] == 200 and statuses[-1] == 429 and len({i % 3 for i in range(len(statuses))}) == 3
    rows = [r for u in users for r in chat_rows(pool, u.id)]
    assert sum(r["input_tokens"] + r["output_tokens"] for r in rows) <= 100
    kept, summed = business_days(pool, business)
    assert kept == summed and len(kept) == 1  # the business's day, exactly its users' days
    quota = clients[0].get("/api/llm/usage").get_json()["quotas"]
    assert [(q["scope"], q["tokens_left"]) for q in quota] == [
        ("business", 100 - sum(r["input_tokens"] + r["output_tokens"] for r in rows))]


def test_a_business_quota_set_mid_month_counts_what_its_users_already_spent(usage_app, fake, pool, usage):
    business = f"biz-mid-{unique_session_id()}"
    first, second = User(business_id=business), User(business_id=business)
    call = CallUsage(model="fake-naming", input_tokens=100, output_tokens=20)
    for user, when in ((first, datetime(2026, 2, 27, 12, tzinfo=timezone.utc)),  # the month before: not counted
                       (first, datetime(2026, 3, 3, 9, tzinfo=timezone.utc)),
                       (second, datetime(2026, 3, 3, 18, tzinfo=timezone.utc)),
                       (second, datetime(2026, 3, 10, 8, tzinfo=timezone.utc))):
        _set_clock(usage, when)
        usage.record_naming({"user_id": user.id, "business_id": business, "session_id": "s", "id": None}, [call])
    assert business_days(pool, business)[0] == {}  # no quota yet: the business's days are not kept
    _set_clock(usage, datetime(2026, 3, 10, 12, tzinfo=timezone.utc))
    usage.set_quota(user_id=None, business_id=business, period="month", max_tokens=1000, max_cost=None)
    usage.set_quota(user_id=None, business_id=business, period="day", max_tokens=500, max_cost=None)
    kept, summed = business_days(pool, business)
    assert kept == {day: v for day, v in summed.items() if day.month == 3}
    assert sorted((d.day, v[0]) for d, v in kept.items()) == [(3, 240), (10, 120)]
    a = client_for(usage_app, first)
    quotas = {q["period"]: q["tokens_left"] for q in a.get("/api/llm/usage").get_json()["quotas"]}
    assert quotas == {"day": 500 - 120, "month": 1000 - 360}
    # A turn now adds to what was filled; a quota at what was spent refuses the next turn.
    fake.reply = lambda body: "three more words"
    assert send(a, named_session(a), "hello").status_code == 200
    kept, summed = business_days(pool, business)
    assert kept == {day: v for day, v in summed.items() if day.month == 3}
    spent = sum(v[0] for v in kept.values())
    usage.set_quota(user_id=None, business_id=business, period="month", max_tokens=spent, max_cost=None)
    b = client_for(usage_app, second)
    assert send(b, named_session(b), "hello").status_code == 429


def test_a_business_without_a_quota_writes_no_business_days(usage_app, fake, pool, usage):
    business = f"biz-free-{unique_session_id()}"
    users = [User(business_id=business) for _ in range(2)]
    fake.reply = lambda body: "a reply"
    for user in users:
        c = client_for(usage_app, user)
        assert send(c, named_session(c), "hello").status_code == 200
    assert all(chat_rows(pool, u.id) for u in users)
    kept, summed = business_days(pool, business)
    assert kept == {} and summed
    # With a quota its days are kept; cleared, no longer (the rows may stay: nothing reads them).
    usage.set_quota(user_id=None, business_id=business, period="day", max_tokens=10**6, max_cost=None)
    c = client_for(usage_app, users[0])
    assert send(c, named_session(c), "again").status_code == 200
    kept, summed = business_days(pool, business)
    assert kept == summed
    usage.set_quota(user_id=None, business_id=business, period="day", max_tokens=None, max_cost=None)
    assert send(c, named_session(c), "once more").status_code == 200
    assert business_days(pool, business)[0] == kept


def test_concurrent_turns_of_20_users_cannot_together_overrun_a_business_quota(usage_app, fake, pool, usage):
    business = f"biz-many-{unique_session_id()}"
    users = [User(business_id=business) for _ in range(20)]
    clients = [client_for(usage_app, u) for u in users]
    usage.set_quota(user_id=None, business_id=business, period="day", max_tokens=120, max_cost=None)
    sessions = [named_session(c) for c in clients]
    fake.reply = lambda body: " ".join(f"w{i}" for i in range(20))
    fake.token_delay = 0.005
    with ThreadPoolExecutor(20) as pool_:
        responses = list(pool_.map(lambda pair: send(pair[0], pair[1], "hi"), zip(clients, sessions)))
    codes = sorted(r.status_code for r in responses)
    assert 200 in codes and 429 in codes and set(codes) == {200, 429}
    rows = [r for u in users for r in chat_rows(pool, u.id)]
    assert len(rows) == codes.count(200)
    assert sum(r["input_tokens"] + r["output_tokens"] for r in rows) <= 120
    kept, summed = business_days(pool, business)
    assert kept == summed  # every turn end counted once


@pytest.mark.parametrize("quota_before", [False, True])
def test_a_turn_ending_while_a_business_quota_is_set_is_counted_once(usage_app, pool, usage, quota_before):
    """The set waits for a turn end of the business under way (the lock its ledger rows' trigger takes
    shared): filled before it commits, the turn would be lost (its user days not yet visible, and no
    quota when it looked), or its addition to the business's day overwritten."""
    from backend.usage.store import RECORD_SQL, ledger_json

    business = f"biz-race-{unique_session_id()}"
    user = User(business_id=business)
    session = {"user_id": user.id, "business_id": business, "session_id": "s", "id": None}
    usage.record_naming(session, [CallUsage(model="fake-naming", input_tokens=10, output_tokens=5)])
    if quota_before:
        usage.set_quota(user_id=None, business_id=business, period="day", max_tokens=10**6, max_cost=None)
    rows = usage.ledger_rows([CallUsage(model="fake-naming", input_tokens=1000, output_tokens=7)], kind="naming",
                             user_id=user.id, business_id=business, session_id="s", session_row_id=None, run_id=None)
    with pool.connection() as conn:
        with conn.transaction():
            conn.execute(RECORD_SQL, {"usage": ledger_json(rows), "run_id": None})  # a turn's end, not committed
            setter = threading.Thread(target=usage.set_quota, kwargs=dict(
                user_id=None, business_id=business, period="month", max_tokens=10**7, max_cost=None))
            setter.start()
            setter.join(0.5)
            assert setter.is_alive()  # waiting for the turn's end
        setter.join(10)
    assert not setter.is_alive()
    kept, summed = business_days(pool, business)
    assert kept == summed and sum(v[0] for v in kept.values()) == 15 + 1007


def test_the_business_quota_check_reads_usage_business_days_by_its_key(usage_app, usage, pool):
    """However many users a business has, its check reads its own day and month rows by their key,
    never its users' days."""
    from backend.chat.run_store import START_RUN_IN_SESSION_SQL
    from backend.usage.store import QUOTA_STATE_SQL

    business = f"biz-read-{unique_session_id()}"
    user = User(business_id=business)
    client = client_for(usage_app, user)
    sid = named_session(client)
    today = datetime.now(timezone.utc).date()
    with pool.connection() as conn:
        # 200 users' days this month, and other businesses' days, so a scan would cost more than the key.
        conn.execute("insert into usage_user_days (user_id, day, business_id, calls, input_tokens, output_tokens, "
                     "cost_micros) select %s || u, %s - d, %s, 1, 10, 2, 30 from generate_series(1, 200) u, "
                     "generate_series(0, extract(day from %s::date)::int - 1) d",
                     (f"{business}-u", today, business, today))
        conn.execute("insert into usage_business_days (business_id, day, calls) select %s || b, %s - d, 1 "
                     "from generate_series(1, 300) b, generate_series(0, 30) d", (f"{business}-other-", today))
    usage.set_quota(user_id=None, business_id=business, period="month", max_tokens=10**9, max_cost=None)
    usage.set_quota(user_id=None, business_id=business, period="day", max_tokens=10**9, max_cost=None)
    with pool.connection() as conn:
        conn.execute("analyze usage_business_days")
        conn.execute("analyze usage_user_days")

    def counts(conn):  # this backend's reads not yet reported: they only grow within a transaction
        return {r["relname"]: (r["seq_scan"], r["idx_scan"], r["idx_tup_fetch"]) for r in conn.execute(
            "select relname, seq_scan, coalesce(idx_scan, 0) as idx_scan, coalesce(idx_tup_fetch, 0) as idx_tup_fetch "
            "from pg_stat_xact_user_tables where relname like 'usage%%'").fetchall()}

    params = {"user_id": user.id, "session_id": sid, "run_id": None, "owner": "test:1", "lease_seconds": 60.0,
              "max_messages": 10**6, "max_bytes": 10**12, "max_runs": 100, "query": "hi", "now": None,
              "defaults": None, "want_tokens": 2048, "context_tokens": None, "price_input": 2.0,
              "price_output": 8.0, "reserve_seconds": 60.0}
    for statement, args in ((START_RUN_IN_SESSION_SQL, {**params, "run_id": uuid.uuid4()}),
                            (QUOTA_STATE_SQL, (user.id, business, None, "{}"))):
        with pool.connection() as conn, conn.transaction(force_rollback=True):  # the run not started after all
            before = counts(conn)
            rows = conn.execute(statement, args).fetchall()
            after = counts(conn)
        assert rows and all(r.get("blocked") is not True for r in rows)
        reads = {name: tuple(a - b for a, b in zip(after[name], before.get(name, (0, 0, 0)))) for name in after}
        seq, idx, fetched = reads.get("usage_business_days", (0, 0, 0))
        # start_chat_turn: the month's rows, at most today's day of the month; usage_quota_state: those and the day's.
        assert seq == 0 and idx >= 1 and fetched <= today.day + (statement is QUOTA_STATE_SQL), reads
        assert reads.get("usage_user_days", (0, 0, 0)) == (0, 0, 0), reads  # no user's days read
