"""Usage (issue 30): a ledger row per model call, priced; totals; quotas that hold, also for
concurrent turns; the period's reset with the clock injected; isolation; lifecycle; the CLI."""

from __future__ import annotations

import json
import math
import threading
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

