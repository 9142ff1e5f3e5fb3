"""The LangGraph graph behind chat turns, and how a custom one is plugged in.

A graph factory is any `module:callable` returning an *uncompiled* `StateGraph`
whose state has a `messages` channel with the `add_messages` reducer. The
backend compiles it with its checkpointer and runs it with a `ChatContext`:
nodes reach the configured model as `runtime.context.model` and should stop
when `runtime.context.cancel` is set. Tokens reach the client from
`runtime.context.emit(text)` (the fast path: straight to the client, no
per-token work in LangGraph's stream loop), `runtime.stream_writer({"token": text})`,
or from LangChain chat models streaming (LangGraph's "messages" mode).

LangGraph's own streaming costs a thread per node (of a pool made for each run)
so its stream can be read while the node runs. A factory whose graph streams
only through `emit`, like the built-in one, says so with
`factory.streams_only_through_emit = True`; its nodes then run inline, in the
turn's own thread, and `stream_writer` writes go nowhere.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypedDict

from langchain_core.messages import AnyMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.runtime import Runtime

from llm.chat_model import CancelSignal, ChatModel
from llm.messages import assistant_message, to_openai_messages, trim_to_budget


@dataclass
class ChatContext:
    model: ChatModel
    cancel: CancelSignal
    system_prompt: str | None = None
    # The most (estimated) tokens of history sent upstream; older messages are
    # left out of the request (never out of the stored history).
    max_context_tokens: int | None = None
    # Where reply text goes as it is written. Going through LangGraph's
    # stream_writer instead costs a wake-up of its stream loop per token
    # (a task submitted and awaited), most of a long reply's CPU.
    emit: Callable[[str], None] | None = None


class ChatState(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


def call_model(state: ChatState, runtime: Runtime[ChatContext]) -> dict[str, Any]:
    context = runtime.context
    emit = context.emit or (lambda piece: runtime.stream_writer({"token": piece}))
    pieces: list[str] = []
    history = trim_to_budget(state["messages"], context.max_context_tokens)
    for piece in context.model.stream(to_openai_messages(history, context.system_prompt), context.cancel):
        pieces.append(piece)
        emit(piece)
    return {"messages": [assistant_message("".join(pieces))]}


def build_chat_graph() -> StateGraph:
    """The default graph: one node that calls the chat model."""
    builder = StateGraph(ChatState, context_schema=ChatContext)
    builder.add_node("model", call_model)
    builder.add_edge(START, "model")
    builder.add_edge("model", END)
    return builder


build_chat_graph.streams_only_through_emit = True  # type: ignore[attr-defined]


def stream_modes_for(factory: Callable[[], StateGraph]) -> list[str]:
    """The LangGraph stream modes a turn asks for: none that needs a thread per node
    when the graph's tokens all go through ChatContext.emit."""
    return ["updates"] if getattr(factory, "streams_only_through_emit", False) else ["custom", "messages"]


def load_graph_factory(spec: str) -> Callable[[], StateGraph]:
    """Resolve 'package.module:callable'; errors name the setting's value."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"CHAT_GRAPH_FACTORY must look like 'package.module:callable', got {spec!r}")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"CHAT_GRAPH_FACTORY {spec!r} cannot be loaded: {exc}") from exc
    if not callable(factory):
        raise ValueError(f"CHAT_GRAPH_FACTORY {spec!r} is not callable")
    return factory
