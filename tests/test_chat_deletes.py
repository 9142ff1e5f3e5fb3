"""Deletes and replies in progress: busy, force, the write fence, dead processes, orphans."""

from __future__ import annotations

import random
import threading
import uuid

import pytest
from langgraph.checkpoint.base import empty_checkpoint

from backend.chat.checkpointer import RunCheckpoints, SessionCheckpointSaver, SessionGone
from backend.chat.run_store import RunStore
from backend.db import apply_migrations
from backend.sessions.store import SessionStore
from backend.sessions.thread_store import ThreadStore
from tests.chat_support import named_session, parse_sse, send, state_of, turn, wait_until
from tests.checkpoints import NO_ROWS, seed_thread, session_row, thread_row_counts
from tests.helpers import client_for, database_before, unique_session_id




def test_delete_of_busy_session_is_409_then_force_cancels_and_deletes(chat_app, chat, fake, alice, pool):
    sid = named_session(chat)
    turn(chat, sid, "earlier turn")
    with fake.hold_streams() as gate:
        streaming = send(chat, sid, "a reply to be interrupted", buffered=False)
        assert gate.wait_for_held(1)

        refused = client_for(chat_app, alice).delete(f"/api/llm/sessions/{sid}")
        assert refused.status_code == 409
        err = refused.get_json()["error"]
        assert err["code"] == "session_busy" and "force=true" in err["message"]
        assert session_row(pool, alice.id, sid) is not None

        forced = client_for(chat_app, alice).delete(f"/api/llm/sessions/{sid}?force=true")
        assert forced.status_code == 200
        assert forced.get_json()["deleted"]["chat_sessions"] == 1
        events, _ = parse_sse(streaming.get_data(as_text=True))
    assert events[-1].event == "error" and events[-1].data["code"] in ("cancelled", "session_deleted")
    assert session_row(pool, alice.id, sid) is None
    assert thread_row_counts(pool, alice.thread_id(sid)) == NO_ROWS
    with pool.connection() as conn:
        audit = conn.execute(
            "select forced from session_deletions where user_id = %s and session_id = %s", (alice.id, sid)
        ).fetchone()
        assert audit["forced"] is True
        assert conn.execute(
            "select count(*) as n from chat_session_runs where user_id = %s and session_id = %s", (alice.id, sid)
        ).fetchone()["n"] == 0


def test_force_delete_of_idle_session_is_an_ordinary_delete(chat, fake, alice, pool):
    sid = named_session(chat)
    turn(chat, sid, "hello")
    r = chat.delete(f"/api/llm/sessions/{sid}?force=true")
    assert r.status_code == 200 and thread_row_counts(pool, alice.thread_id(sid)) == NO_ROWS


def test_another_users_force_delete_touches_nothing(chat_app, chat, fake, alice, bob, pool):
    sid = named_session(chat)
    with fake.hold_streams() as gate:
        streaming = send(chat, sid, "still mine", buffered=False)
        assert gate.wait_for_held(1)
        assert client_for(chat_app, bob).delete(f"/api/llm/sessions/{sid}?force=true").status_code == 404
        gate.release()
        events, _ = parse_sse(streaming.get_data(as_text=True))
    assert events[-1].event == "done"
    assert session_row(pool, alice.id, sid)["message_count"] == 2


# --- the write fence: no late checkpoint write brings a deleted session back ---------

def _write_checkpoint(saver, thread_id):
    config = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
    return saver.put(config, empty_checkpoint(), {"source": "input", "step": -1}, {})


def test_write_to_a_deleted_session_fails_and_leaves_nothing(chat, alice, pool):
    sid = named_session(chat)
    saver = SessionCheckpointSaver(pool)
    _write_checkpoint(saver, alice.thread_id(sid))
    assert chat.delete(f"/api/llm/sessions/{sid}").status_code == 200
    with pytest.raises(SessionGone):
        _write_checkpoint(saver, alice.thread_id(sid))
    assert thread_row_counts(pool, alice.thread_id(sid)) == NO_ROWS


def test_a_checkpoint_read_with_the_lease_serves_one_load_of_its_thread_only(chat, alice, pool):
    sid = named_session(chat)
    thread_id = alice.thread_id(sid)
    saver = SessionCheckpointSaver(pool)
    written = _write_checkpoint(saver, thread_id)
    with pool.connection() as conn, conn.cursor(binary=True) as cur:
        row = cur.execute(*saver.latest_checkpoint_query(thread_id)).fetchone()
    assert row["checkpoint_id"] == written["configurable"]["checkpoint_id"]
    config = {"configurable": {"thread_id": thread_id}}
    with saver.for_run(RunCheckpoints(thread_id, row)):
        newer = _write_checkpoint(saver, thread_id)  # after the lease's read: only a second load sees it
        first, second = saver.get_tuple(config), saver.get_tuple(config)
    assert first.config["configurable"]["checkpoint_id"] == written["configurable"]["checkpoint_id"]
    assert second.config["configurable"]["checkpoint_id"] == newer["configurable"]["checkpoint_id"]
    assert saver.get_tuple(config).config == second.config  # outside the block: the table
    other = alice.thread_id(named_session(chat))
    with saver.for_run(RunCheckpoints(thread_id, row)):
        assert saver.get_tuple({"configurable": {"thread_id": other}}) is None  # another thread: the table
        assert saver.get_tuple(config).config["configurable"]["checkpoint_id"] == written["configurable"]["checkpoint_id"]
    with saver.for_run(RunCheckpoints(thread_id, None)):  # the thread had no checkpoint yet
        assert saver.get_tuple(config) is None


def test_write_racing_a_delete_waits_then_fails(chat, alice, pool):
    """A write that arrives while a delete holds the row waits for it, then finds the session gone."""
    sid = named_session(chat)
    thread_id = alice.thread_id(sid)
    saver = SessionCheckpointSaver(pool)
    outcome: list[object] = []
    with pool.connection() as conn, conn.transaction():
        conn.execute("select 1 from chat_sessions where thread_id = %s for update", (thread_id,))
        writer = threading.Thread(target=lambda: outcome.append(_try(lambda: _write_checkpoint(saver, thread_id))))
        writer.start()
        # the writer is blocked on our row lock: wait until PostgreSQL says so
        assert wait_until(lambda: _waiting_on_lock(pool))
        for table in NO_ROWS:
            conn.execute(f"delete from {table} where thread_id = %s", (thread_id,))
        conn.execute("delete from chat_sessions where thread_id = %s", (thread_id,))
    writer.join(5)
    assert isinstance(outcome[0], SessionGone)
    assert thread_row_counts(pool, thread_id) == NO_ROWS


def test_a_turn_end_that_reads_the_history_holds_checkpoint_writes_off(chat, alice, pool):
    """The slow way to end a turn counts the history under the session's lock: no write lands meanwhile."""
    sid = named_session(chat)
    saver = SessionCheckpointSaver(pool)
    written: list[object] = []
    with pool.connection() as conn, conn.transaction():
        assert SessionStore.lock_and_flag_unread(conn, alice.id, sid, unread=False) is not None
        writer = threading.Thread(target=lambda: written.append(_write_checkpoint(saver, alice.thread_id(sid))))
        writer.start()
        assert wait_until(lambda: _waiting_on_lock(pool))
        assert written == []
    writer.join(5)
    assert len(written) == 1


def _try(fn):
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - returned for the assertion
        return exc


def _waiting_on_lock(pool) -> bool:
    with pool.connection() as conn:
        return conn.execute(
            "select count(*) as n from pg_stat_activity where wait_event_type = 'Lock' and datname = current_database()"
        ).fetchone()["n"] > 0


@pytest.mark.parametrize("seed", range(16))
def test_any_interleaving_of_sending_and_deleting_leaves_nothing(chat_app, fake, alice, pool, seed):
    """A slow upstream, a turn, and deletes (plain or forced) at a random moment."""
    rng = random.Random(seed)
    fake.token_delay = rng.choice([0.0, 0.002, 0.01])
    fake.first_token_delay = rng.choice([0.0, 0.01, 0.05])
    sid = named_session(client_for(chat_app, alice))
    thread_id = alice.thread_id(sid)
    delay = rng.uniform(0, 0.08)
    send_delay = rng.uniform(0, 0.03)
    force = rng.random() < 0.7
    statuses: list[int] = []

    def sender():
        threading.Event().wait(send_delay)
        r = send(client_for(chat_app, alice), sid, "tell me a long story " * rng.randint(1, 30))
        statuses.append(r.status_code)
        r.get_data()

    def deleter():
        threading.Event().wait(delay)  # a random moment, not a synchronisation
        c = client_for(chat_app, alice)
        while True:
            r = c.delete(f"/api/llm/sessions/{sid}" + ("?force=true" if force else ""))
            if r.status_code != 409:
                statuses.append(r.status_code)
                return
            threading.Event().wait(0.005)

    threads = [threading.Thread(target=sender), threading.Thread(target=deleter)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert 200 in statuses
    # The session either never got to exist again, or was deleted; nothing of it remains.
    if session_row(pool, alice.id, sid) is None:
        assert thread_row_counts(pool, thread_id) == NO_ROWS
    else:  # the send re-created it after the delete (first use): then it must be whole
        row = session_row(pool, alice.id, sid)
        history = client_for(chat_app, alice).get(f"/api/llm/sessions/{sid}?include_messages=true").get_json()
        assert row["message_count"] == len(history["messages"])
        assert client_for(chat_app, alice).delete(f"/api/llm/sessions/{sid}?force=true").status_code == 200
        assert thread_row_counts(pool, thread_id) == NO_ROWS


# --- runs whose process died -----------------------------------------------------------

def take_lease(store, user, sid, owner):
    """What another process's start does: the session's lease, held by `owner`; its run id."""
    return store.start_run_in_session(user.id, sid, owner, 60, max_messages=10**6, max_bytes=10**12, max_runs=100)[1]


def test_expired_run_is_reconciled_and_frees_the_session(chat_app, chat, fake, alice, pool):
    sid = named_session(chat)
    store = RunStore(pool)
    # A process took the session, wrote two turns of history, and died before counting.
    assert take_lease(store, alice, sid, "dead-host:1") is not None
    seed_thread(pool, alice.thread_id(sid), turns=2)
    assert send(chat, sid, "busy?").status_code == 409
    with pool.connection() as conn:
        conn.execute(
            "update chat_session_runs set lease_expires_at = now() - interval '1 second' where session_id = %s", (sid,)
        )
    assert state_of(chat_app).maintenance.reconcile_runs() >= 1
    row = session_row(pool, alice.id, sid)
    history = chat.get(f"/api/llm/sessions/{sid}?include_messages=true").get_json()["messages"]
    assert row["message_count"] == 4 == len(history)
    assert turn(chat, sid, "free again")[-1].event == "done"


def test_new_turn_takes_over_an_expired_lease_and_counts_exactly(chat_app, chat, fake, alice, pool):
    sid = named_session(chat)
    store = RunStore(pool)
    take_lease(store, alice, sid, "dead-host:2")
    seed_thread(pool, alice.thread_id(sid), turns=1)
    with pool.connection() as conn:
        conn.execute("update chat_session_runs set lease_expires_at = now() - interval '1 second' where session_id = %s", (sid,))
    events = turn(chat, sid, "after the crash")
    assert events[-1].event == "done" and events[-1].data["message_count"] == 4


def test_lost_lease_stops_the_reply(chat_app, chat, fake, alice, pool):
    sid = named_session(chat)
    with fake.hold_streams() as gate:
        streaming = send(chat, sid, "hello", buffered=False)
        assert gate.wait_for_held(1)
        with pool.connection() as conn:  # e.g. another process reconciled it after a long pause
            conn.execute("delete from chat_session_runs where session_id = %s and user_id = %s", (sid, alice.id))
        events, _ = parse_sse(streaming.get_data(as_text=True))
    assert events[-1].event == "error" and events[-1].data["code"] == "session_deleted"
    row = session_row(pool, alice.id, sid)
    assert row["message_count"] == len(chat.get(f"/api/llm/sessions/{sid}?include_messages=true").get_json()["messages"])


# --- orphaned LangGraph threads --------------------------------------------------------

def orphaned_thread(pool, client, user, turns: int = 1) -> tuple[str, str]:
    """A thread this backend made, whose session row then went (deleted by hand, as in the dashboard)."""
    sid = unique_session_id()
    for i in range(turns):
        turn(client, sid, f"question {i}")
    with pool.connection() as conn:
        conn.execute("delete from chat_sessions where user_id = %s and session_id = %s", (user.id, sid))
    return sid, user.thread_id(sid)


def test_orphan_sweep_removes_only_threads_it_made_whose_session_is_gone(chat_app, chat, fake, alice, pool):
    kept_sid = named_session(chat)
    turn(chat, kept_sid, "I have a session")
    kept_before = thread_row_counts(pool, alice.thread_id(kept_sid))
    orphans = [orphaned_thread(pool, chat, alice)[1] for _ in range(3)]
    foreign = f"some-other-app-{uuid.uuid4().hex}"
    foreign_before = seed_thread(pool, foreign, turns=1)
    # Shaped like ours but not made by this backend (another app, same tables): never touched.
    lookalike = alice.thread_id(unique_session_id())
    lookalike_before = seed_thread(pool, lookalike, turns=1)

    # quiet for less than the minimum age: kept
    assert state_of(chat_app).maintenance.sweep_orphans(min_age_seconds=3600)["threads"] == 0

    result = chat_app.test_cli_runner().invoke(args=["sweep-orphans", "--min-age-seconds", "0"])
    assert result.exit_code == 0, result.output
    assert "removed" in result.output
    removed = int(result.output.split("removed ")[1].split(" ")[0])
    assert removed >= 3
    for thread_id in orphans:
        assert thread_row_counts(pool, thread_id) == NO_ROWS
    assert thread_row_counts(pool, alice.thread_id(kept_sid)) == kept_before
    assert thread_row_counts(pool, foreign) == foreign_before
    assert thread_row_counts(pool, lookalike) == lookalike_before
    assert state_of(chat_app).maintenance.sweep_orphans(min_age_seconds=0)["threads"] == 0


def test_a_thread_with_no_checkpoint_row_is_as_old_as_its_registration(chat_app, chat, fake, alice, pool):
    sid, thread_id = orphaned_thread(pool, chat, alice)
    with pool.connection() as conn:  # a crash left only blobs and writes
        conn.execute("delete from checkpoints where thread_id = %s", (thread_id,))
    sweep = state_of(chat_app).maintenance.sweep_orphans
    assert sweep(min_age_seconds=3600)["threads"] == 0  # young: not "infinitely old"
    assert thread_row_counts(pool, thread_id)["checkpoint_blobs"] > 0
    with pool.connection() as conn:
        conn.execute("update chat_threads set created_at = now() - interval '2 hours' where thread_id = %s",
                     (thread_id,))
    assert sweep(min_age_seconds=3600)["threads"] >= 1
    assert thread_row_counts(pool, thread_id) == NO_ROWS


def test_orphan_sweep_spares_a_thread_whose_session_appears(chat_app, chat, fake, alice, pool):
    sid, thread_id = orphaned_thread(pool, chat, alice)
    before = thread_row_counts(pool, thread_id)
    store = ThreadStore(pool)
    assert thread_id in store.orphan_threads(0, 10_000)
    # the user comes back to the localStorage-only chat: its session row appears
    client_for(chat_app, alice).post("/api/llm/sessions", json={"session_id": sid})
    assert registration(pool, thread_id) == {"orphaned_at": None}  # no longer a candidate
    assert thread_id not in store.orphan_threads(0, 10_000)
    assert store.delete_orphan_thread(thread_id) == NO_ROWS
    assert thread_row_counts(pool, thread_id) == before


def registration(pool, thread_id: str) -> dict | None:
    """The thread's chat_threads row (its orphan mark), None when it is not registered."""
    with pool.connection() as conn:
        return conn.execute("select orphaned_at from chat_threads where thread_id = %s", (thread_id,)).fetchone()


def test_a_session_row_deleted_by_hand_marks_its_thread_for_the_sweep(chat_app, chat, fake, alice, pool):
    sid = named_session(chat)
    turn(chat, sid, "deleted through the app")
    assert registration(pool, alice.thread_id(sid)) == {"orphaned_at": None}
    assert chat.delete(f"/api/llm/sessions/{sid}").status_code == 200
    assert registration(pool, alice.thread_id(sid)) is None  # the app's delete unregisters: nothing to sweep

    single = orphaned_thread(pool, chat, alice)[1]
    pair = [alice.thread_id(named_session(chat)) for _ in range(2)]
    with pool.connection() as conn:  # two rows in one statement, as a dashboard's bulk delete does
        conn.execute("delete from chat_sessions where thread_id = any(%s)", (pair,))
    for thread_id in (single, *pair):
        assert registration(pool, thread_id)["orphaned_at"] is not None
    assert {single, *pair} <= set(ThreadStore(pool).orphan_threads(0, 10_000))


def test_the_upgrade_marks_threads_orphaned_before_it_and_a_truncate_marks_them_all(server_url, tmp_path):
    with database_before(server_url, tmp_path, "020") as pool:
        with pool.connection() as conn:
            conn.execute("insert into chat_sessions (user_id, business_id, session_id, thread_id) "
                         "select 'u', 'b', 's' || g, 't' || g from generate_series(1, 4) g")
            conn.execute("delete from chat_sessions where session_id = 's1'")  # before sql/020: unmarked
        applied = apply_migrations(pool)
        assert applied[0] == "020_chat_threads_orphaned_at" and "021_chat_threads_orphaned_on_truncate" in applied
        with pool.connection() as conn:  # registered, no session, never marked: the sweep does not look at it
            conn.execute("insert into chat_threads (thread_id) values ('t9')")
        store = ThreadStore(pool)
        assert store.orphan_threads(0, 100) == ["t1"]

        with pool.connection() as conn:
            conn.execute("truncate chat_sessions cascade")  # fires no delete trigger
        assert store.orphan_threads(0, 100) == ["t1", "t2", "t3", "t4", "t9"]
