"""The stores and services of one app, built once by create_app and handed to the blueprints that use them."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flask import Flask

from backend.auth.service import AuthService
from backend.auth.store import UserStore
from backend.auth.tokens import TokenVerifier
from backend.chat.checkpointer import SessionCheckpointSaver
from backend.chat.counts import MessageCounts
from backend.chat.importer import SessionImporter
from backend.chat.maintenance import Maintenance
from backend.chat.namer import SessionNamer
from backend.chat.run_store import RunStore
from backend.chat.runs import ReplyControl, RunLeases
from backend.chat.follow import RunReaders
from backend.chat.service import ChatService
from backend.chat.unfinished import UnfinishedReplies
from backend.runs.service import RunService
from backend.search.service import SearchService
from backend.search.store import SearchStore
from backend.config import Settings
from backend.db import Database
from backend.events.hub import EventHub
from backend.events.service import EventService
from backend.events.store import EventStore
from backend.messages.service import MessageService
from backend.messages.store import MessageStore
from backend.sessions.cleanup import SessionCleanup
from backend.sessions.deletion_store import DeletionStore
from backend.sessions.service import SessionService
from backend.sessions.store import SessionStore
from backend.sessions.thread_store import ThreadStore
from backend.usage.prices import Prices
from backend.usage.service import UsageService, micros
from backend.usage.store import UsageStore
from llm.chat_model import ChatModel, OfflineChatModel, OpenAIChatModel
from llm.client import ModelSettings, make_async_client, make_client
from llm.graph import load_graph_factory, stream_modes_for

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    db: Database
    auth: AuthService
    sessions: SessionService
    cleanup: SessionCleanup
    chat: ChatService
    runs: RunService
    messages: MessageService
    search: SearchService
    usage: UsageService
    importer: SessionImporter
    leases: RunLeases
    namer: SessionNamer
    maintenance: Maintenance
    events: EventService | None
    event_hub: EventHub | None

    def close(self) -> None:
        self.maintenance.stop()
        self.leases.stop()
        if self.event_hub is not None:
            self.event_hub.stop()
        self.db.close()


def services_of(app: Flask) -> Services:
    """What create_app built for this app: for the CLI, a worker's exit and tests (routes receive theirs)."""
    return app.extensions["services"]


def model_settings(settings: Settings) -> ModelSettings:
    return ModelSettings(
        api_key=settings.openai_api_key,
        base_url=settings.openai_base_url,
        model=settings.openai_model,
        naming_model=settings.naming_model,
        timeout_seconds=settings.openai_timeout_seconds,
        connect_timeout_seconds=settings.openai_connect_timeout_seconds,
        max_retries=settings.openai_max_retries,
    )


def build_chat_model(settings: Settings) -> ChatModel:
    if settings.model_offline:
        log.warning(
            "no model configured: the built-in offline model answers (set OPENAI_API_KEY or OPENAI_BASE_URL)"
        )
        return OfflineChatModel()
    log.info("chat model", extra={"model": settings.openai_model, "base_url": settings.openai_base_url or "default"})
    return OpenAIChatModel(make_client(model_settings(settings)), settings.openai_model, settings.openai_max_tokens)


def build_usage(settings: Settings, db: Database) -> UsageService:
    return UsageService(
        UsageStore(db.pool), Prices(settings.model_prices_file),
        default_quotas={
            "day": {"tokens": settings.default_user_quota_day_tokens,
                    "cost_micros": micros(settings.default_user_quota_day_cost)},
            "month": {"tokens": settings.default_user_quota_month_tokens,
                      "cost_micros": micros(settings.default_user_quota_month_cost)},
        },
        max_output_tokens=settings.openai_max_tokens, context_tokens=settings.chat_context_max_tokens,
        # A running turn's reservation outlives any turn (CHAT_TURN_MAX_SECONDS) and its lease.
        reserve_seconds=settings.chat_turn_max_seconds + settings.run_lease_seconds,
        retention_days=settings.usage_retention_days,
    )


def build_services(settings: Settings, db: Database) -> Services:
    checkpointer = SessionCheckpointSaver(db.pool)
    sessions_store, run_store, thread_store = SessionStore(db.pool), RunStore(db.pool), ThreadStore(db.pool)
    counts = MessageCounts(db.pool, sessions_store, run_store, thread_store)
    leases = RunLeases(run_store, lease_seconds=settings.run_lease_seconds, renew_seconds=settings.run_renew_seconds,
                       turn_max_seconds=settings.chat_turn_max_seconds, connect=db.dedicated_connection)
    offline = settings.model_offline
    usage = build_usage(settings, db)
    namer = SessionNamer(
        sessions_store,
        thread_store,
        lambda: None if offline else make_async_client(model_settings(settings)),
        model=settings.naming_model,
        timeout_seconds=settings.naming_timeout_seconds,
        usage=usage,
    )
    deletions = DeletionStore(db.pool)
    messages = MessageService(MessageStore(db.pool), index_thread=checkpointer.index_thread)
    search = SearchService(SearchStore(db.pool), language=settings.search_language)
    sessions = SessionService(
        db.pool,
        sessions_store,
        deletions,
        replies=ReplyControl(run_store, stop_wait_seconds=settings.force_delete_wait_seconds),
        history=messages,
        backup_retention_seconds=settings.backup_retention_seconds,
        max_sessions_per_user=settings.max_sessions_per_user,
        usage_of=usage.usage_of_session,
        usage_of_sessions=usage.usage_of_sessions,
    )
    chat_model = build_chat_model(settings)
    chat_model_name = chat_model.name
    graph_factory = load_graph_factory(settings.chat_graph_factory)
    graph = graph_factory().compile(checkpointer=checkpointer)
    readers = RunReaders(runs=run_store, leases=leases, replay_seconds=settings.run_replay_seconds,
                         poll_seconds=settings.run_poll_seconds, heartbeat_seconds=settings.sse_heartbeat_seconds)
    chat = ChatService(
        sessions=sessions,
        runs=run_store,
        counts=counts,
        leases=leases,
        namer=namer,
        graph=graph,
        stream_modes=stream_modes_for(graph_factory),
        model=chat_model,
        system_prompt=settings.system_prompt,
        heartbeat_seconds=settings.sse_heartbeat_seconds,
        stream_buffer_chars=settings.stream_buffer_chars,
        max_context_tokens=settings.chat_context_max_tokens,
        max_history_messages=settings.chat_history_max_messages,
        max_history_bytes=settings.chat_history_max_bytes,
        max_replies_per_user=settings.chat_max_concurrent_per_user,
        prune_history=settings.checkpoint_history == "latest",
        cancel_on_disconnect=settings.run_on_disconnect == "cancel",
        readers=readers,
        max_queued_per_session=settings.run_queue_max_per_session,
        stop_wait_seconds=settings.force_delete_wait_seconds,
        usage=usage,
        messages=messages,
    )
    verifier = TokenVerifier(
        jwt_secret=settings.supabase_jwt_secret,
        supabase_url=settings.supabase_url,
        audience=settings.jwt_audience,
        jwks_cache_seconds=settings.jwks_cache_seconds,
    )
    event_hub = events = None
    if settings.events_enabled:
        event_hub = EventHub(settings.database_direct_url or db.pool.conninfo)
        events = EventService(
            EventStore(db.pool), event_hub, heartbeat_seconds=settings.events_heartbeat_seconds,
            retention_seconds=settings.events_retention_seconds,
            max_stream_seconds=settings.events_max_stream_seconds,
            max_streams_per_user=settings.events_max_streams_per_user,
        )
    auth = AuthService(
        UserStore(db.pool), verifier, settings.default_business_id,
        session_max_age_seconds=settings.session_max_age_seconds,
        session_idle_seconds=settings.session_idle_timeout_seconds,
    )
    cleanup = SessionCleanup(sessions, deletions)
    maintenance = Maintenance(
        session_store=sessions_store,
        runs=run_store,
        threads=thread_store,
        counts=counts,
        namer=namer,
        sessions=sessions,
        cleanup=cleanup,
        interval_seconds=settings.maintenance_interval_seconds,
        sweep_interval_seconds=settings.orphan_sweep_interval_seconds,
        orphan_min_age_seconds=settings.orphan_min_age_seconds,
        retention_inactive_days=settings.retention_inactive_days,
        retention_archived_only=settings.retention_archived_only,
        audit_retention_days=settings.audit_retention_days,
        purge_events=events.purge_expired if events else None,
        purge_usage=usage.purge,
        interrupted_usage=lambda run, claimed: usage.interrupted_run_rows(run, claimed, chat_model_name),
        purge_sign_ins=auth.purge_ended_sign_ins,
        run_replay_seconds=settings.run_replay_seconds,
        keep_interrupted_run=UnfinishedReplies(graph).keep_interrupted,
        start_queued=chat.start_queued,
        owner=leases.owner,
        claim_seconds=settings.run_lease_seconds,
    )
    return Services(
        settings=settings,
        db=db,
        auth=auth,
        sessions=sessions,
        cleanup=cleanup,
        chat=chat,
        runs=RunService(
            sessions=sessions, runs=run_store, readers=readers, chat=chat, replay_seconds=settings.run_replay_seconds,
            stop_wait_seconds=settings.force_delete_wait_seconds,
        ),
        messages=messages,
        search=search,
        usage=usage,
        importer=SessionImporter(
            db.pool, sessions_store, graph, max_messages=settings.import_max_messages,
            max_history_messages=settings.chat_history_max_messages, max_history_bytes=settings.chat_history_max_bytes,
            max_sessions_per_user=settings.max_sessions_per_user,
        ),
        leases=leases,
        namer=namer,
        maintenance=maintenance,
        events=events,
        event_hub=event_hub,
    )
