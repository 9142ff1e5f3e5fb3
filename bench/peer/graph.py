"""The peer's graph: trivial, since the CRUD mix only uses the Threads API."""

from typing import Annotated, TypedDict

from langgraph.graph import START, StateGraph
from langgraph.graph.message import add_messages


class State(TypedDict):
    messages: Annotated[list, add_messages]


def reply(state: State) -> dict:
    return {"messages": [{"role": "assistant", "content": "ok"}]}


builder = StateGraph(State)
builder.add_node("reply", reply)
builder.add_edge(START, "reply")
graph = builder.compile()
