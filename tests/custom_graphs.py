"""Graph factories a user might plug in with CHAT_GRAPH_FACTORY (used by tests)."""

from __future__ import annotations

import threading

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from llm.graph import ChatContext, ChatState, call_model
from llm.messages import assistant_message

NODE_THREADS: list[str] = []  # the thread each recording node ran in, in order


def with_retrieval() -> StateGraph:
    """Two nodes: a 'retrieval' step that streams a note, then the configured model."""

    def retrieve(state: ChatState, runtime: Runtime[ChatContext]) -> dict:
        NODE_THREADS.append(threading.current_thread().name)
        runtime.stream_writer({"token": "[found 2 documents] "})
        return {}

    builder = StateGraph(ChatState, context_schema=ChatContext)
    builder.add_node("retrieve", retrieve)
    builder.add_node("model", call_model)
    builder.add_edge(START, "retrieve")
    builder.add_edge("retrieve", "model")
    builder.add_edge("model", END)
    return builder


def without_streaming() -> StateGraph:
    """A node that answers in one piece and streams nothing."""

    def answer(state: ChatState) -> dict:
        return {"messages": [assistant_message(f"{len(state['messages'])} message(s) so far")]}

    builder = StateGraph(ChatState)
    builder.add_node("answer", answer)
    builder.add_edge(START, "answer")
    builder.add_edge("answer", END)
    return builder


def emitting_only() -> StateGraph:
    """A graph whose tokens all go through runtime.context.emit, and that says so."""

    def answer(state: ChatState, runtime: Runtime[ChatContext]) -> dict:
        NODE_THREADS.append(threading.current_thread().name)
        runtime.context.emit("emitted ")
        return call_model(state, runtime)

    builder = StateGraph(ChatState, context_schema=ChatContext)
    builder.add_node("answer", answer)
    builder.add_edge(START, "answer")
    builder.add_edge("answer", END)
    return builder


emitting_only.streams_only_through_emit = True  # type: ignore[attr-defined]
