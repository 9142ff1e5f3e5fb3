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
