"""One JSON error shape for every failure: {"success": false, "error": {code, message, fields?}}.

Routes and services raise `ApiError`; everything else (pydantic validation,
werkzeug HTTP errors, a lost database, bugs) is translated here, so a client
never sees HTML, a redirect or a stack trace.
"""

from __future__ import annotations

import logging

import psycopg
from flask import Flask, Response, jsonify
from psycopg_pool import PoolTimeout
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from backend.db import PoolBusy

log = logging.getLogger(__name__)

# Fields the server maintains; a client that sends one is told so plainly.
SERVER_OWNED_FIELDS = {
    "message_count": "message_count is maintained by the server and cannot be set",
    "thread_id": "thread_id is derived by the server and cannot be set",
    "created_at": "created_at is set by the server and cannot be changed",
    "updated_at": "updated_at is set by the server and cannot be changed",
    "last_message_at": "last_message_at is set by the server and cannot be changed",
}

# Every error code an HTTP response of the API can carry. The OpenAPI document lists them as the
# enum of `error.code` (the typed client gets a union), so a response with another one fails the
# tests' contract check: add a new code here.
ERROR_CODES = (
    "bad_request", "invalid_json", "invalid_body", "validation_error", "invalid_cursor",
    "unauthorized", "invalid_token", "invalid_credentials", "csrf_failed", "forbidden",
    "not_found", "run_not_found", "method_not_allowed", "request_timeout",
    "conflict", "email_taken", "session_busy", "session_archived", "session_full", "session_exists",
    "thread_conflict", "quota_exceeded", "queue_full", "run_finished",
    "payload_too_large", "unsupported_media_type",
    "rate_limited", "too_many_streams", "usage_limit_reached",
    "internal_error", "http_error", "events_disabled",
    "database_unavailable", "overloaded", "auth_unavailable", "rate_limit_unavailable",
)

# A pattern mismatch said in words: pydantic's own message quotes the regular expression.
PATTERN_MESSAGES = {
    "session_id": "must be 1-128 characters of A-Z a-z 0-9 _ . : - (and not '.' or '..')",
    "email": "must not contain control characters",
}

DATABASE_RETRY_AFTER_SECONDS = 5


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        fields: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields
        self.headers = headers or {}


class NotFound(ApiError):
    def __init__(self, message: str = "Session not found") -> None:
        super().__init__(404, "not_found", message)


def error_body(code: str, message: str, fields: dict[str, str] | None = None) -> dict:
    error: dict = {"code": code, "message": message}
    if fields:
        error["fields"] = fields
    return {"success": False, "error": error}


def error_response(
    status: int, code: str, message: str, fields: dict[str, str] | None = None, headers: dict | None = None
) -> Response:
    response = jsonify(error_body(code, message, fields))
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _field_name(loc: tuple) -> str:
    return ".".join(str(part) for part in loc) or "body"


def validation_fields(exc: ValidationError) -> dict[str, str]:
    """Turn pydantic's errors into {field: message}, one message per field."""
    fields: dict[str, str] = {}
    for err in exc.errors(include_url=False, include_input=False):
        name = _field_name(tuple(err.get("loc", ())))
        if err.get("type") == "extra_forbidden":
            message = SERVER_OWNED_FIELDS.get(name, f"{name} is not a known field")
        elif err.get("type") == "string_pattern_mismatch":
            message = PATTERN_MESSAGES.get(name.rsplit(".", 1)[-1], "is not in the expected format")
        else:
            message = err.get("msg", "invalid value")
            # pydantic prefixes custom errors with "Value error, "; clients need not see it
            message = message.removeprefix("Value error, ")
        fields.setdefault(name, message)
    return fields


def validation_error_response(exc: ValidationError) -> Response:
    """flask-openapi3's hook for request validation failures."""
    fields = validation_fields(exc)
    first = next(iter(fields.items()), ("body", "invalid"))
    return error_response(400, "validation_error", f"Invalid {first[0]}: {first[1]}", fields)


def database_failure(exc: Exception) -> tuple[str, str, str]:
    """(log event, error code, message) for a pool timeout or a lost database, over HTTP and MCP alike."""
    if isinstance(exc, PoolBusy):  # connections kept coming back, just not fast enough: at capacity
        return ("no database connection came free in time", "overloaded", "The server is too busy; try again shortly")
    return ("database unavailable", "database_unavailable", "The database is unavailable; try again shortly")


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.fields, exc.headers)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        # flask-openapi3 aborts with a ready response for validation errors.
        if exc.response is not None:
            return exc.response
        status = exc.code or 500
        code = {
            400: "bad_request",
            401: "unauthorized",
            403: "forbidden",
            404: "not_found",
            405: "method_not_allowed",
            413: "payload_too_large",
            415: "unsupported_media_type",
            429: "rate_limited",
        }.get(status, "http_error")
        message = exc.description or exc.name
        if status == 413:
            message = "The request body is larger than the server accepts"
        if status == 404:
            message = "No such endpoint"
        headers = {}
        if status == 405 and getattr(exc, "valid_methods", None):
            headers["Allow"] = ", ".join(exc.valid_methods)
        return error_response(status, code, message, headers=headers)

    @app.errorhandler(PoolTimeout)
    @app.errorhandler(psycopg.OperationalError)
    def _database_unavailable(exc: Exception):
        event, code, message = database_failure(exc)
        log.warning(event, extra={"error_class": type(exc).__name__})
        return error_response(503, code, message, headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)})

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error", extra={"error_class": type(exc).__name__})
        return error_response(500, "internal_error", "Something went wrong on our side")
