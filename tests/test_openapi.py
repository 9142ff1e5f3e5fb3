"""The OpenAPI document: generated from the models that validate, and complete."""

from __future__ import annotations

EXPECTED_OPERATIONS = {
    ("/api/llm/sessions", "post"): {"200", "201", "400", "401", "403", "409", "413", "500", "503"},
    ("/api/llm/sessions", "get"): {"200", "400", "401", "500", "503"},
    ("/api/llm/sessions/{session_id}", "get"): {"200", "400", "401", "404", "500", "503"},
    ("/api/llm/sessions/{session_id}", "put"): {"200", "400", "401", "403", "404", "413", "500", "503"},
    ("/api/llm/sessions/{session_id}", "delete"): {"200", "400", "401", "403", "404", "409", "500", "503"},
    ("/api/auth/login", "post"): {"200", "400", "401", "403", "413", "429", "500", "503"},
    ("/api/auth/me", "get"): {"200", "401", "500", "503"},
    ("/api/llm/query/stream", "post"): {"200", "400", "401", "403", "404", "409", "413", "429", "500", "503"},
    ("/api/llm/sessions/{session_id}/runs", "get"): {"200", "400", "401", "404", "500", "503"},
    ("/api/llm/sessions/{session_id}/runs/{run_id}/stream", "get"): {"200", "400", "401", "404", "500", "503"},
    ("/api/llm/sessions/{session_id}/runs/{run_id}/cancel", "post"): {"200", "400", "401", "403", "404", "409", "500", "503"},
    ("/api/llm/sessions/{session_id}/messages/{message_id}/edit", "post"): {"200", "400", "401", "403", "404", "409", "413", "429", "500", "503"},
    ("/api/llm/sessions/{session_id}/messages/{message_id}/regenerate", "post"): {"200", "400", "401", "403", "404", "409", "413", "429", "500", "503"},
    ("/api/llm/sessions/{session_id}/messages/{message_id}/feedback", "put"): {"200", "400", "401", "403", "404", "413", "429", "500", "503"},
    ("/api/llm/sessions/{session_id}/branch", "put"): {"200", "400", "401", "403", "404", "409", "413", "429", "500", "503"},
    ("/api/llm/search", "get"): {"200", "400", "401", "500", "503"},
    ("/healthz", "get"): {"200"},
    ("/readyz", "get"): {"200", "503"},
}


def test_document_lists_every_operation_and_response(anon):
    doc = anon.get("/api/openapi.json").get_json()
    assert doc["openapi"].startswith("3.")
    for (path, method), statuses in EXPECTED_OPERATIONS.items():
        operation = doc["paths"][path][method]
        assert statuses <= set(operation["responses"]), (path, method)


def test_request_schemas_come_from_the_validating_models(anon):
    doc = anon.get("/api/openapi.json").get_json()
    schemas = doc["components"]["schemas"]
    create = schemas["CreateSessionBody"]
    assert create["additionalProperties"] is False
    from backend.sessions.models import SESSION_ID_PATTERN

    assert create["properties"]["session_id"]["pattern"] == SESSION_ID_PATTERN
    params = {p["name"]: p for p in doc["paths"]["/api/llm/sessions"]["get"]["parameters"]}
    assert params["limit"]["schema"]["maximum"] == 200 and params["limit"]["schema"]["minimum"] == 1
    assert params["offset"]["schema"]["minimum"] == 0
    error = schemas["ErrorResponse"]
    assert set(error["properties"]) == {"success", "error"}


def test_protected_operations_declare_security(anon):
    doc = anon.get("/api/openapi.json").get_json()
    assert set(doc["components"]["securitySchemes"]) == {"bearerAuth", "cookieAuth"}
    for method in ("get", "post"):
        assert doc["paths"]["/api/llm/sessions"][method]["security"]
    assert "security" not in doc["paths"]["/healthz"]["get"]


def test_interactive_docs_page(anon):
    assert anon.get("/api/docs/").status_code == 200
    swagger = anon.get("/api/docs/swagger")
    assert swagger.status_code == 200 and b"swagger" in swagger.data.lower()


def test_stream_is_documented_as_server_sent_events(anon):
    operation = anon.get("/api/openapi.json").get_json()["paths"]["/api/llm/query/stream"]["post"]
    assert set(operation["responses"]["200"]["content"]) == {"text/event-stream"}
    for word in ("event: token", "event: done", "event: error", "heartbeats"):
        assert word in operation["description"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].split("/")[-1]
    schema = anon.get("/api/openapi.json").get_json()["components"]["schemas"][body]
    assert schema["properties"]["query"]["maxLength"] == 32000
    assert schema["properties"]["multitask_strategy"]["enum"] == ["reject", "enqueue", "interrupt", "rollback"]
    for path, method in (("/api/llm/query/stream", "post"), ("/api/llm/sessions/{session_id}/runs/{run_id}/stream", "get")):
        events = anon.get("/api/openapi.json").get_json()["paths"][path][method]["responses"]["200"]["content"][
            "text/event-stream"]["itemSchema"]["oneOf"]
        assert [e["properties"]["event"]["const"] for e in events] == ["run", "token", "done", "error"], path


# --- what generated clients (openapi-typescript) read: defaults, required, nullable ---

_JSON_TYPES = {
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
    "null": lambda v: v is None,
}


def _resolve(doc, schema):
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].split("/")[-1]]
    return schema


def _value_fits(doc, schema, value) -> bool:
    """Enough of JSON Schema to judge a default: types, anyOf/oneOf/allOf, const, enum, bounds."""
    schema = _resolve(doc, schema)
    if "anyOf" in schema or "oneOf" in schema:
        return any(_value_fits(doc, s, value) for s in schema.get("anyOf", schema.get("oneOf")))
    if not all(_value_fits(doc, s, value) for s in schema.get("allOf", [])):
        return False
    if "const" in schema and value != schema["const"]:
        return False
    if "enum" in schema and value not in schema["enum"]:
        return False
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        if not any(_JSON_TYPES[t](value) for t in types):
            return False
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"] or "maximum" in schema and value > schema["maximum"]:
            return False
    if isinstance(value, str) and len(value) < schema.get("minLength", 0):
        return False
    return True


def _schemas_with_defaults(node, where=""):
    """Every (location, schema) in the document that carries a default."""
    if isinstance(node, dict):
        if "default" in node and isinstance(node.get("default"), (str, int, float, bool, list, dict, type(None))) \
                and not where.endswith("/properties"):  # a property *named* default would not count
            yield where, node
        for key, value in node.items():
            yield from _schemas_with_defaults(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _schemas_with_defaults(value, f"{where}/{i}")


def test_every_default_is_valid_for_its_own_schema(anon):
    doc = anon.get("/api/openapi.json").get_json()
    seen = list(_schemas_with_defaults(doc))
    assert seen, "the document has defaults (include_archived=false, limit=50...)"
    bad = [where for where, schema in seen if not _value_fits(doc, {k: v for k, v in schema.items() if k != "default"},
                                                              schema["default"])]
    assert bad == []
    # The shape the issue found: an optional string documented as `type: string, default: null`.
    assert not [w for w, s in seen if s["default"] is None and s.get("type") not in (None, "null")]


def test_optional_request_fields_are_not_required_and_nullable_ones_say_null(anon):
    doc = anon.get("/api/openapi.json").get_json()
    schemas = doc["components"]["schemas"]
    for name in ("CreateSessionBody", "UpdateSessionBody"):
        assert schemas[name].get("required", []) == [], name
        for prop in schemas[name]["properties"].values():
            assert "default" not in prop  # openapi-typescript would make a field with a default required
    bulk = schemas["BulkDeleteBody"]
    assert bulk.get("required", []) == [] and {"backup", "force"} <= set(bulk["properties"])
    assert schemas["QueryBody"]["required"] == ["session_id", "query"]
    # Nullable stays nullable: an imported message's time may be null, and is optional.
    created = schemas["ImportedMessage"]["properties"]["created_at"]
    assert {"type": "null"} in created["anyOf"] and "created_at" not in schemas["ImportedMessage"]["required"]


def test_response_fields_always_sent_are_required_and_left_out_ones_optional(anon):
    doc = anon.get("/api/openapi.json").get_json()
    schemas = doc["components"]["schemas"]
    for name in ("SessionCreatedResponse", "SessionListResponse", "SessionResponse", "SessionDetailResponse",
                 "SessionDeletedResponse", "BulkDeleteResponse", "ErrorResponse"):
        assert "success" in schemas[name]["required"], name
    # usage: only with include_usage (absent otherwise), so optional; everything else always sent.
    assert set(schemas["SessionOut"]["required"]) == set(schemas["SessionOut"]["properties"]) - {"usage"}
    assert {"type": "null"} in schemas["SessionOut"]["properties"]["last_message_at"]["anyOf"]
    assert "next_cursor" in schemas["SessionListResponse"]["required"]  # always sent, null on the last page
    # Sent only when asked for: optional, so a client must check before use.
    assert not {"messages", "messages_start", "has_more_messages"} & set(schemas["SessionDetailResponse"]["required"])
    assert "backup" not in schemas["SessionDeletedResponse"]["required"]
    assert not {"deleted", "backup"} & set(schemas["BulkDeleteResult"]["required"])
    assert "fields" not in schemas["ErrorDetail"]["required"]
    assert schemas["SessionExport"]["required"] == ["format", "session", "messages"]


def test_the_web_app_routes_are_not_api_operations(anon):
    paths = anon.get("/api/openapi.json").get_json()["paths"]
    assert "/" not in paths and not [p for p in paths if p.startswith("/assets")]
    assert not [p for p in paths if p.startswith("/c/")]


# --- what the typed client can check at compile time (issue: a typo in a body compiled) ---


def _request_body_schemas(doc):
    for path, path_item in doc["paths"].items():
        for method, operation in path_item.items():
            ref = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
            if "$ref" in ref:
                yield f"{method} {path}", _resolve(doc, ref)


def test_every_request_body_is_a_closed_object(anon):
    """additionalProperties: false on every body, so a misspelt field is a type error in the client."""
    doc = anon.get("/api/openapi.json").get_json()
    bodies = dict(_request_body_schemas(doc))
    assert {"post /api/llm/sessions", "put /api/llm/sessions/{session_id}", "post /api/llm/query/stream"} <= set(bodies)
    assert {where: s.get("additionalProperties") for where, s in bodies.items() if s.get("additionalProperties") is not False} == {}


def test_error_codes_are_an_enum_holding_every_code_the_server_raises(anon):
    """`error.code` lists the documented codes; every code a route can raise is among them (an AST scan of
    backend/: ApiError(status, "code", ...) and error_response(status, "code", ...))."""
    import ast
    from pathlib import Path

    codes = anon.get("/api/openapi.json").get_json()["components"]["schemas"]["ErrorDetail"]["properties"]["code"]["enum"]
    raised = set()
    for source in (Path(__file__).resolve().parent.parent / "backend").rglob("*.py"):
        if "mcp_server" in source.parts:  # MCP's own results, not the HTTP API's
            continue
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) in (
                    "ApiError", "error_response") and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant):
                raised.add(node.args[1].value)
    assert {"session_busy", "validation_error", "csrf_failed", "run_finished"} <= raised
    assert raised - set(codes) == set()
    r = anon.get("/api/llm/sessions")
    assert r.get_json()["error"]["code"] in codes


def test_a_deletes_counts_are_a_fixed_set_of_tables(api, anon):
    doc = anon.get("/api/openapi.json").get_json()
    deleted = doc["components"]["schemas"]["SessionDeletedResponse"]["properties"]["deleted"]
    tables = {"checkpoints", "checkpoint_blobs", "checkpoint_writes", "chat_sessions"}
    assert set(deleted["properties"]) == set(deleted["required"]) == tables and deleted["additionalProperties"] is False
    sid = api.post("/api/llm/sessions", json={}).get_json()["session_id"]
    assert set(api.delete(f"/api/llm/sessions/{sid}").get_json()["deleted"]) == tables  # and the server agrees


def test_every_streamed_event_has_a_named_schema(anon):
    """Both streams' events are components (ChatStreamTokenEvent, SessionDeletedEvent, ...), which the web
    app's SSE reader takes its types from; the events stream's `type` is each event's own name."""
    doc = anon.get("/api/openapi.json").get_json()
    schemas = doc["components"]["schemas"]
    for path, method in (("/api/llm/query/stream", "post"), ("/api/llm/sessions/{session_id}/runs/{run_id}/stream", "get"),
                         ("/api/llm/events", "get")):
        events = doc["paths"][path][method]["responses"]["200"]["content"]["text/event-stream"]["itemSchema"]["oneOf"]
        for event in events:
            ref = event["properties"]["data"]["contentSchema"]["$ref"]
            assert ref.split("/")[-1] in schemas, (path, event["properties"]["event"])
    assert schemas["ChatStreamTokenEvent"]["properties"] == {"content": {"type": "string"}}
    assert schemas["SessionDeletedEvent"]["properties"]["type"] == {"type": "string", "const": "session.deleted"}
    assert schemas["RunStartedEvent"]["properties"]["run_id"] == {"type": "string"}
