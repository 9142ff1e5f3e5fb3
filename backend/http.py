"""HTTP plumbing shared by every blueprint: JSON bodies, response helpers, common models."""

from __future__ import annotations

import base64
import json
import re
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from flask import Request, current_app
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.json_schema import GenerateJsonSchema
from pydantic_core import core_schema

from backend.errors import ERROR_CODES, ApiError


class JsonRequest(Request):
    """Reads every body as JSON, whatever its Content-Type, and refuses bad ones clearly.

    `fetch` sends `text/plain` unless told otherwise, so the body is parsed
    regardless of the header. An empty body is an empty object (every body
    field is optional somewhere). Malformed JSON, or JSON that is not an
    object, is a 400 of its own instead of a vague validation error.
    """

    def get_json(self, force: bool = False, silent: bool = False, cache: bool = True) -> Any:
        data = self.get_data(cache=True)
        if not data.strip():
            return {}
        try:
            value = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "invalid_json", "The request body is not valid JSON") from None
        except RecursionError:  # [[[[… thousands deep: the parser's own limit, not a server fault
            raise ApiError(400, "invalid_json", "The request body is nested too deeply") from None
        if not isinstance(value, dict):
            raise ApiError(400, "invalid_body", "The request body must be a JSON object")
        # JSON may escape half of a UTF-16 pair alone ("\ud800"): not text, and no database stores it.
        if _SURROGATE_ESCAPE.search(data) and _has_lone_surrogate(value):
            raise ApiError(400, "invalid_json", "The request body has a lone surrogate escape (\\ud800-\\udfff), "
                                                "which is not text")
        return value


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _has_lone_surrogate(value: Any) -> bool:
    """Whether any string (or key) in a parsed JSON value holds a lone surrogate."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
    return False


# Text with no control characters (Unicode category Cc: C0, DEL, C1), as a JSON Schema
# pattern that pydantic enforces and the OpenAPI document shows.
NO_CONTROL_CHARS_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*$"


def encode_cursor_values(values: list) -> str:
    """An opaque page cursor holding `values` (JSON, base64url without its padding)."""
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


def decode_cursor_values(cursor: str) -> Any:
    """What encode_cursor_values held; ValueError (binascii's and JSON's errors are ones) if
    `cursor` is not one."""
    return json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))


def is_row_id(value: Any) -> bool:
    """A table's bigint id as a cursor holds it (anything else, PostgreSQL would refuse with a 500)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**63


def in_utc(value: datetime) -> datetime:
    return value if value.tzinfo is timezone.utc else value.astimezone(timezone.utc)


# Times leave the server as ISO 8601 in UTC with a Z, e.g. 2026-11-22T10:15:00.123456Z: made UTC
# when a response is built, then written by pydantic's own serializer (which writes UTC as Z), so
# a page of a thousand messages costs no Python call per time as it is written.
UtcDatetime = Annotated[datetime, AfterValidator(in_utc)]


class DocumentSchema(GenerateJsonSchema):
    """The JSON schema the OpenAPI document (and the TypeScript types made from it) shows.

    Two corrections to pydantic's defaults, so that generated clients get the
    types right (openapi-typescript reads `required`, and a `default`):

    - An optional field whose default is None (`session_name: SessionName = None`,
      or `x: int | None = None`) has no `default` in the document. When the type
      is not nullable, `default: null` would be invalid against the field's own
      schema; when it is, absence already means null. Either way such a field is
      simply not required; nullable ones stay nullable (anyOf with null).
    - In responses (serialization mode) a field with a non-None default is always
      sent, so it is required (`success`, `format`); one whose default is None may
      be left out (the routes exclude such fields), so it is optional.
    Request validation is unchanged: this only shapes the document.
    """

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> dict:
        json_schema = super().default_schema(schema)
        if "default" in json_schema and json_schema["default"] is None:
            json_schema = {k: v for k, v in json_schema.items() if k != "default"}
        return json_schema

    def field_is_required(self, field, total: bool) -> bool:
        if self.mode == "serialization" and field["type"] != "typed-dict-field":
            inner = field["schema"]
            if inner["type"] == "default":
                return "default_factory" in inner or inner.get("default") is not None
        return super().field_is_required(field, total)


class DocumentedModel(BaseModel):
    """A model the OpenAPI document shows through DocumentSchema (flask-openapi3 asks each
    top-level model for its schema; nested models are drawn by their parent's generator)."""

    @classmethod
    def model_json_schema(cls, *args: Any, schema_generator: type[GenerateJsonSchema] = DocumentSchema,
                          **kwargs: Any) -> dict[str, Any]:
        return super().model_json_schema(*args, schema_generator=schema_generator, **kwargs)


class ApiModel(DocumentedModel):
    model_config = ConfigDict(extra="forbid")


class QueryModel(DocumentedModel):
    """Query-string parameters. Unknown ones (cache busters) are ignored.

    flask-openapi3 asks a query model for its JSON schema on every request (to
    see which fields are lists), and pydantic builds it afresh each time: half
    a millisecond per request. It never changes, so the plain call is cached
    (callers only read it; the OpenAPI document asks with arguments).
    """

    model_config = ConfigDict(extra="ignore")

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if args or kwargs:
            return super().model_json_schema(*args, **kwargs)
        schema = _QUERY_SCHEMAS.get(cls)
        if schema is None:
            schema = _QUERY_SCHEMAS[cls] = super().model_json_schema()
        return schema


_QUERY_SCHEMAS: dict[type, dict[str, Any]] = {}


class SuccessModel(DocumentedModel):
    success: Literal[True] = True


class ErrorDetail(BaseModel):
    code: str = Field(json_schema_extra={"enum": list(ERROR_CODES)})
    message: str
    fields: dict[str, str] | None = None


class ErrorResponse(DocumentedModel):
    # Documented as the validation-error model too (validation mode): `success` is always sent.
    model_config = ConfigDict(json_schema_extra={"required": ["success", "error"]})

    success: Literal[False] = False
    error: ErrorDetail


def ok(model: BaseModel, status: int = 200, exclude: set[str] | None = None, exclude_none: bool = False):
    """Serialise a response model; `success` is its first field, so it comes first."""
    # pydantic writes the JSON itself (in Rust): a dump to Python objects and json.dumps of them
    # cost twice as much for a page of messages.
    body = model.model_dump_json(exclude=exclude, exclude_none=exclude_none)
    return current_app.response_class(body, status=status, mimetype="application/json")


def error_responses(*statuses: int) -> dict[int, type[BaseModel]]:
    """OpenAPI entries for the error statuses an operation can answer with."""
    return {status: ErrorResponse for status in statuses}


# --- documenting Server-Sent Events (OpenAPI itemSchema: one schema per event) ---

def sse_event_schema(name: str, data: dict) -> dict:
    """One SSE event: its name, and a JSON `data` line of the given shape."""
    return {
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"const": name},
            "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": data},
        },
    }


def json_object(**properties: dict) -> dict:
    return {"type": "object", "required": list(properties), "properties": properties}


def document_stream_events(app) -> None:
    """Name each Server-Sent Event's `data` in the OpenAPI document's components, so generated
    clients get a type per event (`ChatStreamTokenEvent`, `SessionDeletedEvent`, ...), and the
    operations' `itemSchema` refers to them. The events stream's `type` field is the event's
    name (a const, which lets a client tell the events apart by it)."""
    generate = app.generate_spec_json

    def generate_spec_json() -> None:
        generate()
        schemas = app.spec_json.setdefault("components", {}).setdefault("schemas", {})
        for path, path_item in app.spec_json.get("paths", {}).items():
            prefix = "" if path.endswith("/events") else "ChatStream"
            for operation in path_item.values():
                if not isinstance(operation, dict):
                    continue
                for response in operation.get("responses", {}).values():
                    stream = response.get("content", {}).get("text/event-stream", {})
                    for event in stream.get("itemSchema", {}).get("oneOf", []):
                        name = event["properties"]["event"]["const"]
                        data = event["properties"]["data"]
                        schema = data["contentSchema"]
                        if "$ref" in schema:
                            continue  # named already (the same document, generated again)
                        schema = dict(schema)
                        if schema.get("properties", {}).get("type") == {"type": "string"}:
                            schema["properties"] = {**schema["properties"], "type": {"type": "string", "const": name}}
                        component = prefix + "".join(part.capitalize() for part in re.split(r"[._]", name)) + "Event"
                        if schemas.get(component, schema) != schema:
                            raise ValueError(f"two different events would be named {component} in the document")
                        schemas[component] = schema
                        data["contentSchema"] = {"$ref": f"#/components/schemas/{component}"}

    app.generate_spec_json = generate_spec_json
