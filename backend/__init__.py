"""The Flask app: `create_app()` builds it (`flask --app backend run`)."""

from __future__ import annotations

import logging
import secrets

from flask_cors import CORS
from flask_openapi3 import Info, OpenAPI
from werkzeug.middleware.proxy_fix import ProxyFix

from backend.auth.routes import SECURITY_SCHEMES, auth_api, init_login
from backend.chat.routes import chat_api
from backend.config import Settings
from backend.csrf import install_csrf_protection
from backend.db import Database
from backend.errors import register_error_handlers, validation_error_response
from backend.events.routes import EVENTS_PATH, events_api
from backend.health import health_api
from backend.http import ErrorResponse, JsonRequest, document_stream_events
from backend.log_config import configure_logging, install_request_logging
from backend.messages.routes import messages_api
from backend.nosniff import NoSniff
from backend.overload import ConnectionLimit
from backend.rate_limits import init_rate_limits
from backend.request_body import BodyDeadline, document_body_timeout
from backend.runs.routes import runs_api
from backend.search.routes import search_api
from backend.usage.routes import usage_api
from backend.services import Services, build_services
from backend.sessions.routes import sessions_api
from backend.shallow_streams import ShallowStreams, under_gevent
from backend.web import install_web_app

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> OpenAPI:
    settings = settings or Settings()
    configure_logging(settings.log_level, settings.log_format)

    app = OpenAPI(
        __name__,
        info=Info(title="Chat sessions backend", version="0.1.0"),
        security_schemes=SECURITY_SCHEMES,
        validation_error_status=400,
        validation_error_model=ErrorResponse,
        validation_error_callback=validation_error_response,
        doc_prefix="/api/docs",
        doc_url="/openapi.json",
    )
    app.request_class = JsonRequest
    # '//' in a path would otherwise get werkzeug's 308 HTML redirect, not a JSON answer.
    app.url_map.merge_slashes = False
    app.json.sort_keys = False  # keep `success` first, as the models order it
    app.config.update(
        SECRET_KEY=settings.secret_key or _development_secret(settings),
        MAX_CONTENT_LENGTH=settings.max_request_bytes,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.cookie_secure,
        REMEMBER_COOKIE_HTTPONLY=True,
        REMEMBER_COOKIE_SAMESITE="Lax",
        REMEMBER_COOKIE_SECURE=settings.cookie_secure,
    )

    from backend.cli import asking_only_for_help, help_only_app

    if asking_only_for_help():  # `flask --help`: the commands' help, no database started for it
        return help_only_app(app)

    db = Database.connect(settings)
    log.info("database in use", extra={"database": db.description})
    try:
        if settings.run_migrations_on_start:
            db.prepare_schema()
        services = build_services(settings, db)
        if settings.run_migrations_on_start:
            services.search.configure()  # SEARCH_LANGUAGE, where the index and searches read it
    except BaseException:
        db.close()  # a failed start must not leave a pool (and its threads) behind
        raise
    app.extensions["services"] = services  # for the CLI, a worker's exit and tests: services_of(app)
    services.maintenance.start()

    CORS(
        app,
        resources={r"/api/*": {"origins": settings.cors_origin_list}},
        supports_credentials=True,
        allow_headers=["Content-Type", "Authorization", "X-Request-ID", "X-Requested-With"],
        expose_headers=["X-Request-ID", "Retry-After"],
        max_age=600,
        # Only in answer to an allowed Origin (flask-cors otherwise lists every origin to any caller).
        always_send=False,
    )
    if settings.trusted_proxies:
        app.wsgi_app = ProxyFix(
            app.wsgi_app, x_for=settings.trusted_proxies, x_proto=settings.trusted_proxies
        )
    # An idle event stream keeps only the stack it waits on (backend/shallow_streams.py).
    app.wsgi_app = ShallowStreams(app.wsgi_app, [EVENTS_PATH], enabled=under_gevent())
    # A body that never arrives holds its connection: 408 past REQUEST_BODY_TIMEOUT_SECONDS (backend/request_body.py).
    app.wsgi_app = BodyDeadline(app.wsgi_app, settings.request_body_timeout_seconds)
    # Outermost but for a header: a request over the cap costs nothing but the refusal.
    app.wsgi_app = ConnectionLimit(app.wsgi_app, settings.max_connections_per_worker, settings.cors_origin_list)
    app.wsgi_app = NoSniff(app.wsgi_app)  # every response, that refusal's too
    install_request_logging(app)
    register_error_handlers(app)
    install_csrf_protection(app, settings.cors_origin_list)
    init_login(app, services.auth)
    _register_blueprints(app, services)
    document_body_timeout(app)  # 408 on every operation that takes a body
    document_stream_events(app)  # each SSE event's data named in the document's components
    init_rate_limits(app, settings)  # applies each route's @rate_limited
    if settings.mcp_http_enabled:
        from backend.mcp_server.http import install_http

        install_http(app)  # MCP over streamable HTTP at /mcp (bearer tokens)

    from backend.cli import register_cli

    register_cli(app, services)
    return app


def _register_blueprints(app: OpenAPI, services: Services) -> None:
    """Each area's routes, handed the services they call."""
    app.register_api(health_api(services.db))
    app.register_api(auth_api(services.auth))
    app.register_api(sessions_api(services.sessions, services.cleanup))
    app.register_api(chat_api(services.chat, services.importer))
    app.register_api(runs_api(services.runs))
    app.register_api(messages_api(services.sessions, services.messages))
    app.register_api(search_api(services.search))
    app.register_api(usage_api(services.usage))
    app.register_api(events_api(services.events, services.auth))
    # The OpenAPI document at /api/openapi.json, as the frontend's contract.
    app.add_url_rule("/api/openapi.json", "openapi_json", lambda: app.api_doc)
    install_web_app(app)  # the React app at / when `make web` has built it


def _development_secret(settings: Settings) -> str:
    """A signing key kept beside the embedded database, so cookies survive restarts
    and every local worker process agrees. Production must set SECRET_KEY."""
    path = settings.embedded_db_dir.parent / "secret_key"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()
