"""Schema fuzzing: schemathesis drives every operation of the OpenAPI document of a live server.

The server is a real HTTP server on loopback (werkzeug, threaded) in front of an
app on the suite's PostgreSQL, its model the fake upstream; every request carries
a real bearer token. Generation is seeded and bounded, so CI runs the same cases
every time. schemathesis' own engine runs (as its CLI does): coverage and fuzzing
per operation, then stateful sequences across operations, with every built-in
check that applies: no 5xx, documented status codes, content types and headers,
bodies that match their schemas, schema-valid data accepted and invalid data
refused, auth enforced.

(Its pytest integration, `schemathesis.pytest.from_fixture`, does not work with
pytest 9 — it sets `Node._nodeid` — and its in-process WSGI transport passes
`max_redirects` to werkzeug; hence the engine, over HTTP.)
"""

from __future__ import annotations

import collections
import re
from dataclasses import dataclass

import jsonschema_rs
import pytest
import schemathesis
from hypothesis import given, settings
from hypothesis import strategies as st
from schemathesis.engine import Status, events, from_schema

from backend.sessions.models import SESSION_NAME_PATTERN, validate_session_name
from support.net import served_on_loopback
from tests.helpers import User, client_for

FUZZ_SEED = 20_241_122
EXAMPLES_PER_OPERATION = 20
OPERATIONS = [
    ("/api/auth/login", "post"), ("/api/auth/logout", "post"), ("/api/auth/me", "get"),
    ("/api/auth/logout-all", "post"),
    ("/api/llm/query/stream", "post"),
    ("/api/llm/sessions", "get"), ("/api/llm/sessions", "post"),
    ("/api/llm/sessions/{session_id}", "delete"), ("/api/llm/sessions/{session_id}", "get"),
    ("/api/llm/sessions/{session_id}", "put"), ("/api/llm/sessions/restore", "post"),
    ("/api/llm/sessions/import", "post"), ("/api/llm/sessions/{session_id}/export", "get"),
    ("/api/llm/sessions/bulk-delete", "post"), ("/api/llm/sessions/{session_id}/read", "post"),
    ("/api/llm/events", "get"),
    ("/api/llm/sessions/{session_id}/runs", "get"), ("/api/llm/sessions/{session_id}/runs/{run_id}/stream", "get"),
    ("/api/llm/sessions/{session_id}/runs/{run_id}/cancel", "post"),
    ("/api/llm/usage", "get"), ("/api/llm/sessions/{session_id}/usage", "get"),
    ("/api/llm/sessions/{session_id}/messages/{message_id}/edit", "post"),
    ("/api/llm/sessions/{session_id}/messages/{message_id}/regenerate", "post"),
    ("/api/llm/sessions/{session_id}/messages/{message_id}/feedback", "put"),
    ("/api/llm/sessions/{session_id}/branch", "put"),
    ("/api/llm/search", "get"),
    ("/healthz", "get"), ("/readyz", "get"),
]
STREAM = "POST /api/llm/query/stream"


@dataclass(frozen=True)
class Finding:
    operation: str
    check: str
    title: str
    message: str
    status: int | None
    body: str
    request: str

    def __str__(self) -> str:
        return (f"{self.operation}: {self.check}: {self.title}\n  {self.message[:400]}\n"
                f"  -> {self.status} {self.body[:300]}\n  {self.request[:600]}")


# Fixed action paths under /api/llm/sessions/ that are also a session's URL
# (a session may be called "restore"): OPTIONS there rightly allows GET, PUT
# and DELETE too, which the action's own path item does not list.
ACTION_PATHS = {"/api/llm/sessions/restore", "/api/llm/sessions/import", "/api/llm/sessions/bulk-delete"}


def filter_failure(context, failure, case, response):
    """Keep every failure but two kinds that no OpenAPI document can avoid.

    `cursor` is opaque: only values the server issued are valid, and it cannot be
    combined with `offset`; neither is expressible for query parameters. So a
    schema-valid list request refused *only* because of `cursor` is not a finding.
    And the Allow header of an action path that is also a session's URL.
    """
    if failure.checks == ("allow_header_conformance",) and case.operation.path in ACTION_PATHS:
        return False
    if failure.checks == ("positive_data_acceptance",) and case.operation.label == "POST /api/llm/sessions/import":
        # A chat-session/v2 document must be one tree (ids unique, each parent an earlier message,
        # active_message_id one of them, ratings on replies only): references JSON Schema cannot state.
        try:
            fields = response.json()["error"]["fields"]
        except (ValueError, KeyError, TypeError):
            return True
        return not (response.status_code == 400 and fields and all(
            re.fullmatch(r"messages\.\d+\.(id|parent_id|feedback)|active_message_id", name) for name in fields))
    # A search's `q` is a small language (words, "phrases", -excluded): one of only excluded
    # words, or of more than 12 terms, is schema-valid text that can be no search.
    refusable = {"GET /api/llm/sessions": {"cursor"}, "GET /api/llm/search": {"cursor", "q"}}
    if failure.checks != ("positive_data_acceptance",) or case.operation.label not in refusable:
        return True
    try:
        fields = response.json()["error"]["fields"]
    except (ValueError, KeyError, TypeError):
        return True
    return not (response.status_code == 400 and fields and set(fields) <= refusable[case.operation.label])


@pytest.fixture(scope="module")
def fuzz_app(module_make_app, fake_model):
    """Like chat_app, but its own; rate limits off, or sign-in would answer 429 after ten cases."""
    return module_make_app(
        openai_base_url=fake_model.base_url, openai_api_key="test-key", openai_model="fake-chat",
        naming_model="fake-naming", openai_timeout_seconds=2, openai_max_retries=1, naming_timeout_seconds=2,
        rate_limits_enabled=False, events_max_stream_seconds=0.3,  # each events request ends, so it can be fuzzed
    )


@pytest.fixture(scope="module")
def live_url(fuzz_app):
    with served_on_loopback(fuzz_app) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def fuzz_user() -> User:
    return User()


def load_schema(live_url: str, user: User, *, stateful: bool):
    unit_phases = not stateful
    config = schemathesis.Config.from_dict({
        "seed": FUZZ_SEED,
        "headers": {"Authorization": f"Bearer {user.token}"},
        "continue-on-failure": True,
        "request-timeout": 10,
        "generation": {"max-examples": EXAMPLES_PER_OPERATION, "database": "none"},
        "phases": {
            "examples": {"enabled": unit_phases}, "coverage": {"enabled": unit_phases},
            "fuzzing": {"enabled": unit_phases}, "stateful": {"enabled": stateful},
        },
        "output": {"sanitization": {"enabled": False}},  # findings show the real input
    })
    schema = schemathesis.openapi.from_url(f"{live_url}/api/openapi.json", config=config)
    schema.hook(filter_failure)
    return schema


def run(schema) -> tuple[list[Finding], collections.Counter]:
    """Run schemathesis' engine; return what failed and how many cases ran per operation."""
    findings, tested = [], collections.Counter()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            if event.status in (Status.SUCCESS, Status.FAILURE):
                for node in event.recorder.cases.values():
                    tested[node.value.operation.label] += 1
            for case_id, checks in event.recorder.checks.items():
                for check in checks:
                    if check.status == Status.FAILURE:
                        findings.append(_finding(event.recorder, case_id, check))
        elif isinstance(event, (events.NonFatalError, events.FatalError)):
            error = getattr(event, "value", None) or getattr(event, "exception", None)
            findings.append(Finding(getattr(event, "label", "engine"), "engine error", type(error).__name__,
                                    str(error), None, "", ""))
        elif isinstance(event, events.EngineFinished):
            findings += [Finding(f.operation or "", "after run", f.title, f.message, None, "", "") for f in event.failures]
    return findings, tested


def _finding(recorder, case_id, check) -> Finding:
    interaction = recorder.interactions.get(case_id)
    response = interaction.response if interaction else None
    failure = check.failure_info.failure
    return Finding(
        operation=recorder.cases[case_id].value.operation.label if case_id in recorder.cases else recorder.label,
        check=check.name, title=failure.title, message=failure.message,
        status=response.status_code if response else None,
        body=response.content.decode("utf-8", "replace") if response else "",
        request=check.failure_info.code_sample,
    )


def documented_operations(app) -> set[tuple[str, str]]:
    """Every operation of the app's live OpenAPI document, as (path, method)."""
    doc = app.test_client().get("/api/openapi.json").get_json()
    return {(path, method) for path, ops in doc["paths"].items() for method in ops}


def test_document_has_exactly_the_fuzzed_operations(live_url, fuzz_app):
    assert documented_operations(fuzz_app) == set(OPERATIONS), "a new operation: add it to OPERATIONS, so it is fuzzed"


def test_operations_missing_from_the_list_are_fuzzed_all_the_same(live_url, fuzz_app, fuzz_user, fake):
    """Derived from the live document: an operation not (yet) in OPERATIONS is fuzzed here, so a new
    route cannot go unfuzzed (and the test above says to list it, for a test of its own)."""
    findings = []
    for path, method in sorted(documented_operations(fuzz_app) - set(OPERATIONS)):
        schema = load_schema(live_url, fuzz_user, stateful=False).include(path=path, method=method.upper())
        found, tested = run(schema)
        assert tested[f"{method.upper()} {path}"] > 0, f"{method.upper()} {path} was not exercised"
        findings += found
    assert not findings, "\n\n".join(map(str, findings))


@pytest.mark.parametrize("path, method", OPERATIONS, ids=[f"{m.upper()} {p}" for p, m in OPERATIONS])
def test_operation_conforms_to_the_document(live_url, fuzz_user, fake, path, method):
    schema = load_schema(live_url, fuzz_user, stateful=False).include(path=path, method=method.upper())
    findings, tested = run(schema)
    label = f"{method.upper()} {path}"
    assert tested[label] > 0, f"{label} was not exercised"
    assert not findings, "\n\n".join(map(str, findings))


def test_stateful_sequences_conform_to_the_document(live_url, fuzz_user, fake):
    # Sequences over a session's own operations (the sequence budget is spent on these, not on
    # the messages, runs and usage routes under the same path, each fuzzed on its own above).
    schema = load_schema(live_url, fuzz_user, stateful=True).include(
        path=["/api/llm/sessions", "/api/llm/sessions/{session_id}", "/api/llm/query/stream",
              "/api/llm/sessions/{session_id}/export", "/api/llm/sessions/{session_id}/read"])
    findings, tested = run(schema)
    # Sequences that link a created session to get, update, delete and chat.
    assert {"POST /api/llm/sessions", "GET /api/llm/sessions/{session_id}"} <= set(tested)
    assert not findings, "\n\n".join(map(str, findings))


# --- the document's input rules agree with the server's ---------------------------------------

def _doc_validator(app, schema_name: str):
    doc = app.test_client().get("/api/openapi.json").get_json()
    return jsonschema_rs.validator_for({**doc["components"]["schemas"][schema_name], "components": doc["components"]})


NAMES = ["ok", "  padded  ", " ", "", "\u3000", "\ufeff", "a\u2028b", "\u200fשלום", "Rocket 🚀", "tab\tname",
         "nul\x00", "c1\x85", "del\x7f", "evil\u202eoverride", "iso\u2066late", "x" * 200, "x" * 201,
         " " + "x" * 200 + " ", "\u2028" + "x" * 199, "日本語"]


@pytest.mark.parametrize("name", NAMES, ids=range(len(NAMES)))
def test_session_name_rules_are_the_documents(fuzz_app, fuzz_user, name):
    doc_accepts = _doc_validator(fuzz_app, "CreateSessionBody").is_valid({"session_name": name})
    status = client_for(fuzz_app, fuzz_user).post("/api/llm/sessions", json={"session_name": name}).status_code
    assert (doc_accepts, status) in ((True, 201), (False, 400))


_EDGE_CHARS = " \t\n\x00\x1f\x7f\x85\x9f\xa0\u1680\u2000\u200a\u200f\u2028\u2029\u202a\u202e\u202f\u205f\u2066\u2069\u3000\ufeffa日😀"


@settings(max_examples=400, derandomize=True, deadline=None)
@given(st.one_of(
    st.text(st.sampled_from(_EDGE_CHARS), max_size=8),
    st.text(max_size=12),
    st.builds(lambda pad, core, end: pad + core + end, st.text(" \u3000\xa0", max_size=3),
              st.text("xy \u2028", min_size=197, max_size=203), st.text(" \u3000\x85", max_size=3)),
))
def test_session_name_pattern_matches_the_validator(name):
    def server_accepts(value):
        try:
            validate_session_name(value)
            return True
        except ValueError:
            return False

    documented = jsonschema_rs.validator_for({"type": "string", "pattern": SESSION_NAME_PATTERN}).is_valid(name)
    assert documented == server_accepts(name) == bool(re.fullmatch(SESSION_NAME_PATTERN, name)), repr(name)


# --- known findings, pinned: each passes once the document is fixed --------------------------

def test_stream_document_describes_each_event(live_url, fuzz_user, fake):
    schema = load_schema(live_url, fuzz_user, stateful=False)
    case = schema["/api/llm/query/stream"]["POST"].Case(body={"session_id": "fuzz-sse", "query": "hello"})
    response = case.call(headers={"Authorization": f"Bearer {fuzz_user.token}"})
    assert response.status_code == 200
    case.validate_response(response, checks=[schemathesis.checks.response_schema_conformance])


@pytest.mark.parametrize("query", ["   ", "nul\x00byte", "\x1b[31m"])
def test_query_rules_are_the_documents(fuzz_app, fuzz_user, fake, query):
    doc_accepts = _doc_validator(fuzz_app, "QueryBody").is_valid({"session_id": "s1", "query": query})
    r = client_for(fuzz_app, fuzz_user).post("/api/llm/query/stream", json={"session_id": "s1", "query": query})
    assert r.status_code == 400
    assert doc_accepts is False
