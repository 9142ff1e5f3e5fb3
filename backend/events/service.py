"""A user's event stream: catch up from a cursor, then live, with nothing missed or doubled.

Each stream reads `session_events` rows after its cursor (the last id it
sent), then waits for the process's listener to wake it (EventHub). Ids grow
in commit order per user (sql/009), so "after the cursor" is exactly "not
sent yet". A cursor the table can no longer vouch for (purged past it,
unknown, from elsewhere) gets one `reset` event: the client reloads its list.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator

import psycopg
from psycopg_pool import PoolTimeout

from backend.events.hub import EventHub, Subscriber
from backend.events.store import EventStore
from backend.sessions.models import SessionOut

log = logging.getLogger(__name__)

READ_BATCH = 200
MAX_CURSOR_DIGITS = 19  # a bigint


def _iso(value) -> str:
    return value.isoformat().replace("+00:00", "Z")


def render_event(row: dict) -> str:
    """One SSE event: `id:` (the cursor), `event:` (the type), `data:` JSON."""
    payload = row["payload"] or {}
    data: dict = {"type": row["type"], "session_id": row["session_id"], "at": _iso(row["created_at"])}
    session = payload if row["type"] in ("session.created", "session.updated") else payload.get("session")
    if session:
        data["session"] = SessionOut.model_validate(session).model_dump(mode="json")
    for key in ("deleted", "forced", "outcome", "run_id", "kind", "usage"):
        if key in payload:
            data[key] = payload[key]
    return f"id: {row['id']}\nevent: {row['type']}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


class EventStream:
    """A stream's body that gives its place back when the server closes it, even if it
    was never iterated (a client gone before the first byte): a generator that never
    started runs no `finally`."""

    __slots__ = ("_body", "_hub", "_subscriber")

    def __init__(self, body: Iterator[bytes], hub: EventHub, subscriber: Subscriber) -> None:
        self._body = body
        self._hub = hub
        self._subscriber = subscriber

    def __iter__(self) -> Iterator[bytes]:
        return self._body

    def close(self) -> None:
        try:
            self._body.close()
        finally:
            self._hub.unsubscribe(self._subscriber)


class EventService:
    def __init__(
        self, store: EventStore, hub: EventHub, *, heartbeat_seconds: float, retention_seconds: float,
        max_stream_seconds: float = 3600, max_streams_per_user: int = 10,
    ) -> None:
        self._store = store
        self._hub = hub
        self._heartbeat = heartbeat_seconds
        self.retention_seconds = retention_seconds
        self._max_stream = max_stream_seconds
        self._max_per_user = max_streams_per_user

    def open_stream(
        self, user_id: str, last_event_id: str | None, valid_until: Callable[[], float | None] | None = None,
    ) -> EventStream | None:
        """The SSE body for one client (see `stream`), its place among the user's
        EVENTS_MAX_STREAMS_PER_USER streams in this process already taken; None when
        they are all taken. Checking and taking the place is one step (the hub's
        lock), before anything else runs (a cookie sign-in's database read above
        all), so simultaneous opens cannot all find room for one more."""
        subscriber = self._hub.subscribe(user_id, limit=self._max_per_user)
        if subscriber is None:
            return None
        try:
            return EventStream(self.stream(user_id, last_event_id, valid_until, subscriber), self._hub, subscriber)
        except BaseException:
            self._hub.unsubscribe(subscriber)
            raise

    def stream(
        self, user_id: str, last_event_id: str | None, valid_until: Callable[[], float | None] | None = None,
        subscriber: Subscriber | None = None,
    ) -> Iterator[bytes]:
        """The SSE body for one client, as bytes.

        `valid_until()` says until when (epoch seconds) the client's credentials
        hold, None once they do not (signed out): asked at the start, when that
        time comes, and when the stream is woken with nothing new to send (a
        sign-out wakes the user's streams). `subscriber`: the place `open_stream`
        took (without one, one is taken here, with no cap).
        """
        # Subscribed before the first read: a change committed after that read wakes us.
        if subscriber is None:
            subscriber = self._hub.subscribe(user_id)
        # Streams are renewed now and then (the client reconnects from its
        # cursor), so connections rebalance over processes as they come and go.
        ends_at = time.monotonic() + self._max_stream
        try:
            expires_at = valid_until() if valid_until else None
            cursor, reset, first = self._start(user_id, last_event_id)
            yield b"retry: 2000\n: stream open\n\n"
            if reset:
                yield f"id: {cursor}\nevent: reset\ndata: {json.dumps({'type': 'reset'})}\n\n".encode()
            # Read only when there may be something new: after each wake-up (a resuming client's
            # first events came with the check of its cursor). A stream that starts live from the
            # latest id has nothing to read until woken, and an idle stream none at its heartbeats
            # (2,000 streams would read 130 times a second for nothing). A missed wake-up cannot
            # strand events: the listener wakes every stream whenever it (re)connects.
            must_read = len(first) == READ_BATCH
            woken = False
            while True:
                rows, first = first, []
                if must_read and not rows:
                    try:
                        rows = self._store.read_after(user_id, cursor, READ_BATCH)
                        must_read = len(rows) == READ_BATCH
                    except (psycopg.Error, PoolTimeout) as exc:
                        # The database is away (a restart, a failover): keep the
                        # stream and try again after the next wake-up or heartbeat.
                        log.info("events read failed; retrying", extra={"error_class": type(exc).__name__})
                for row in rows:
                    cursor = row["id"]
                    yield render_event(row).encode()
                if len(rows) == READ_BATCH:
                    continue
                wait = min(self._heartbeat, ends_at - time.monotonic())
                if wait <= 0:
                    return
                if valid_until is not None and ((woken and not rows) or (expires_at or 0) <= time.time()):
                    expires_at = valid_until()
                    if expires_at is None or expires_at <= time.time():
                        yield f"event: auth_expired\ndata: {json.dumps({'type': 'auth_expired'})}\n\n".encode()
                        return
                if expires_at is not None:
                    wait = min(wait, expires_at - time.time())
                woken = subscriber.wait(wait)
                if woken:
                    must_read = True
                else:
                    yield b": keep-alive\n\n"
                if self._hub.draining:
                    return  # the client reconnects (retry:) to a process that is not stopping
        finally:
            self._hub.unsubscribe(subscriber)

    def purge_expired(self) -> int:
        purged = self._store.purge_older_than(self.retention_seconds)
        if purged:
            log.info("old session events purged", extra={"events": purged})
        return purged

    def _start(self, user_id: str, last_event_id: str | None) -> tuple[int, bool, list[dict]]:
        """Where the stream starts, whether the client must reload (reset), and a resuming
        client's first events (read with the check of its cursor)."""
        if last_event_id is None or last_event_id == "":
            return self._live_from(user_id), False, []  # a new client: live from now
        # ASCII digits only: str.isdigit() also takes '²', which int() refuses.
        if not (last_event_id.isascii() and last_event_id.isdigit()) or len(last_event_id) > MAX_CURSOR_DIGITS:
            return self._live_from(user_id), True, []
        cursor = int(last_event_id)
        first = self._store.resume(user_id, cursor, READ_BATCH)
        if first is None:
            return self._live_from(user_id), True, []
        return cursor, False, first

    def _live_from(self, user_id: str) -> int:
        """A cursor at or past every event of the user committed so far (called after subscribing).

        The hub's latest id, with no query, while it listens: an event it has
        not heard of yet has a higher id and will wake this stream, which then
        sends it (a client may so see one change it already loaded: events
        carry the final state, so that is harmless). Not listening: the table.
        """
        if self._hub.connected.is_set():
            return self._hub.latest_id
        return self._store.latest_id_for(user_id)
