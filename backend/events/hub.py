"""One LISTEN connection per process, fanning wake-ups out to that process's subscribers.

PostgreSQL delivers `NOTIFY session_events, '<user id>'` only when the change
that sent it commits; the listener wakes that user's subscribers, which then
read what is new from the events table by their cursor. A wake-up carries no
event, so a lost or doubled one costs nothing: after every (re)connect the
listener wakes everyone, and whatever committed meanwhile is read then.

The listener is a daemon thread (a greenlet under the gevent server), started
when the worker starts (gunicorn.conf.py) or by the first subscriber, so each gunicorn worker
has its own after fork.
Subscribers hold no thread and no connection: an Event each.

The payload is '<event id> <user id>' (sql/016); the hub keeps the highest id
it has heard of (`latest_id`), read from the table at each (re)connect, after
LISTEN, so a stream that starts live needs no query of its own (see
EventService).
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict

import psycopg

from backend.events.store import LATEST_ID_SQL
from backend.process_thread import ProcessThread

log = logging.getLogger(__name__)

CHANNEL = "session_events"
LISTENER_NAME = "session-events listener"  # its application_name, as pg_stat_activity shows it


class Subscriber:
    __slots__ = ("user_id", "_woken")  # one per open stream: thousands per process

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        self._woken = threading.Event()

    def wake(self) -> None:
        self._woken.set()

    def wait(self, timeout: float) -> bool:
        """Until woken or `timeout`; True if woken. Clears the wake-up, so a
        later one (for a change committed after the caller reads) is kept."""
        woken = self._woken.wait(timeout)
        self._woken.clear()
        return woken


class EventHub:
    def __init__(self, conninfo: str, *, reconnect_seconds: float = 1.0) -> None:
        self._conninfo = conninfo
        self._reconnect = reconnect_seconds
        # A user's streams: a list, since they are few (EVENTS_MAX_STREAMS_PER_USER) and a set costs 3x as much.
        self._subscribers: dict[str, list[Subscriber]] = defaultdict(list)
        self._lock = threading.Lock()
        self._listener = ProcessThread(self._listen, "session-events")
        self._stopped = threading.Event()
        self._conn: psycopg.Connection | None = None
        self.connected = threading.Event()  # set while LISTEN is in place
        # The highest event id heard of; every event committed later has a higher one. Valid while connected.
        self.latest_id = 0
        self.reconnects = 0
        self.draining = False  # the process is stopping: streams end, clients reconnect elsewhere

    def start(self) -> None:
        """Listen from now on, not from the first subscriber: a gunicorn worker calls this
        when it starts, so its first stream finds LISTEN in place."""
        self._listener.ensure_running()

    def subscribe(self, user_id: str, limit: int | None = None) -> Subscriber | None:
        """A new subscriber of the user's wake-ups; None if the user has `limit` already
        (the check and the claim are one step under the lock: simultaneous opens cannot
        all see room for one more)."""
        subscriber = Subscriber(user_id)
        with self._lock:
            if limit is not None and len(self._subscribers.get(user_id, ())) >= limit:
                return None
            self._subscribers[user_id].append(subscriber)
        self._listener.ensure_running()
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        with self._lock:
            mine = self._subscribers.get(subscriber.user_id)
            if mine is not None and subscriber in mine:
                mine.remove(subscriber)
                if not mine:
                    del self._subscribers[subscriber.user_id]

    def subscribers_of(self, user_id: str) -> int:
        with self._lock:
            return len(self._subscribers.get(user_id, ()))

    def drain(self) -> None:
        """End every stream of this process (it is shutting down): each client
        reconnects, to another process, from its cursor, missing nothing."""
        self.draining = True
        self._wake(None)

    def stop(self) -> None:
        self._stopped.set()
        conn = self._conn
        if conn is not None:
            try:
                conn.cancel_safe()  # wakes notifies() so the thread sees the stop
            except Exception:  # noqa: BLE001 - closing anyway
                pass

    def _wake(self, user_id: str | None) -> None:
        with self._lock:
            if user_id is None:
                targets = [s for subs in self._subscribers.values() for s in subs]
            else:
                targets = list(self._subscribers.get(user_id, ()))
        for subscriber in targets:
            subscriber.wake()

    def _heard(self, event_id: int) -> None:
        # Before the wake-up: a stream that starts once woken must not begin below this event.
        if event_id > self.latest_id:
            self.latest_id = event_id

    def _listen(self) -> None:
        while not self._stopped.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True, application_name=LISTENER_NAME) as conn:
                    self._conn = conn
                    conn.execute(f"listen {CHANNEL}")
                    self._heard(conn.execute(LATEST_ID_SQL).fetchone()[0])
                    self.connected.set()
                    self._wake(None)  # catch up on whatever committed while not listening
                    while not self._stopped.is_set():
                        for notify in conn.notifies(timeout=5.0):
                            event_id, _, user_id = notify.payload.partition(" ")
                            if user_id and event_id.isdigit():
                                self._heard(int(event_id))
                                self._wake(user_id)
                            else:  # the payload of servers before sql/016: the user id alone
                                self._wake(notify.payload)
            except psycopg.Error as exc:
                if self._stopped.is_set():
                    break
                log.warning("events listener lost its connection; reconnecting",
                            extra={"error_class": type(exc).__name__})
            except Exception:  # noqa: BLE001 - the listener must outlive any one failure
                log.exception("events listener failed; reconnecting")
            finally:
                self.connected.clear()
                self._conn = None
            if self._stopped.wait(self._reconnect):
                break
            self.reconnects += 1
