"""Real LangGraph checkpoints for tests: a tiny graph run through PostgresSaver."""

from __future__ import annotations

from typing import Annotated, TypedDict

from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.graph import START, StateGraph
from langgraph.graph.message import add_messages

from backend.sessions.thread_store import CHECKPOINT_TABLES


class _State(TypedDict):
    messages: Annotated[list, add_messages]


def _reply(state: _State) -> dict:
    return {"messages": [AIMessage(content=f"reply {len(state['messages'])}")]}


def seed_thread(pool, thread_id: str, turns: int = 2) -> dict[str, int]:
    """Run `turns` user turns through a one-node graph; return rows per table."""
    builder = StateGraph(_State)
    builder.add_node("reply", _reply)
    builder.add_edge(START, "reply")
    graph = builder.compile(checkpointer=PostgresSaver(pool))
    config = {"configurable": {"thread_id": thread_id}}
    for i in range(turns):
        graph.invoke({"messages": [HumanMessage(content=f"question {i}")]}, config)
    return thread_row_counts(pool, thread_id)


def thread_row_counts(pool, thread_id: str) -> dict[str, int]:
    with pool.connection() as conn:
        return {
            table: conn.execute(f"select count(*) as n from {table} where thread_id = %s", (thread_id,)).fetchone()["n"]
            for table in CHECKPOINT_TABLES
        }


NO_ROWS = {table: 0 for table in CHECKPOINT_TABLES}


def rows_digest(conn, sql: str, *params) -> dict:
    """How many rows a query returns and a hash of their full contents: equal digests, unchanged rows."""
    return conn.execute(
        f"select count(*) as n, md5(string_agg(t::text, '|' order by t::text)) as h from ({sql}) t", params
    ).fetchone()


def session_row(pool, user_id: str, session_id: str) -> dict | None:
    with pool.connection() as conn:
        return conn.execute(
            "select * from chat_sessions where user_id = %s and session_id = %s", (user_id, session_id)
        ).fetchone()
