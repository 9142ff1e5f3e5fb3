"""What a reply that did not finish leaves in its thread.

- Stopped (Stop, or a new message sent with `interrupt`): the text written so far
  is kept as the reply, marked `stopped`; the next turn's model is told.
- Rolled back (a new message sent with `rollback`): the run's own message goes too.
- Interrupted (its process died): upkeep keeps the user's message if the turn
  wrote nothing, and the text the process had written, marked `interrupted`.

Every write is LangGraph's own (`update_state`), made while the run still holds
its lease, so no other turn writes the thread meanwhile.
"""

from __future__ import annotations

import logging
import uuid

from langchain_core.messages import AIMessage, HumanMessage, RemoveMessage
from langgraph.graph.state import CompiledStateGraph

from backend.chat.checkpointer import RunCheckpoints
from llm.messages import created_at_of, stopped_message, user_message, visible_messages

log = logging.getLogger(__name__)


def user_message_id(run_id: uuid.UUID) -> str:
    """The id of the message a run answers (a rollback removes it by this id)."""
    return f"run-{run_id}"


class UnfinishedReplies:
    def __init__(self, graph: CompiledStateGraph) -> None:
        self._graph = graph
        # Written as the output of the graph's one node (a graph of several: LangGraph picks).
        nodes = list(getattr(getattr(graph, "builder", None), "nodes", None) or [])
        self._node = nodes[0] if len(nodes) == 1 else None

    def _write(self, thread_id: str, checkpoints: RunCheckpoints | None, messages: list) -> None:
        config = {"configurable": {"thread_id": thread_id}}
        with self._graph.checkpointer.for_run(checkpoints):
            self._graph.update_state(config, {"messages": messages}, as_node=self._node)

    def keep_stopped(self, thread_id: str, checkpoints: RunCheckpoints | None, text: str) -> None:
        try:
            self._write(thread_id, checkpoints, [stopped_message(text)])
        except Exception:  # noqa: BLE001 - the session may be gone; the run still ends
            log.warning("keeping a stopped reply failed", exc_info=True)

    def roll_back(self, thread_id: str, checkpoints: RunCheckpoints | None, message_id: str) -> None:
        try:
            self._write(thread_id, checkpoints, [RemoveMessage(id=message_id)])
            forget = getattr(self._graph.checkpointer, "forget_message", None)
            if forget is not None:
                forget(thread_id, message_id)  # no branch of its own: it is withdrawn
        except Exception:  # noqa: BLE001 - nothing was written (or the session is gone): nothing to remove
            log.info("rolling back a run's message found nothing to remove")

    def keep_interrupted(self, run: dict) -> None:
        """`run`: RunStore.claim_expired_run's row (the lease now upkeep's)."""
        config = {"configurable": {"thread_id": run["thread_id"]}}
        try:
            messages = self._graph.get_state(config).values.get("messages") or []
            last = messages[-1] if messages else None
            missing = []
            if isinstance(last, HumanMessage):
                pass  # the run's question is saved (a branch writes it first), its reply is not
            elif isinstance(last, AIMessage) and (
                    len(visible_messages(messages)) > run["message_count"]
                    or _written_since(last, run["started_at"])):
                return  # the reply was saved before its process died (a branch's may leave the count as it was)
            elif run["query"]:  # the turn wrote nothing
                missing.append(user_message(run["query"], run["started_at"]))
            if run["reply"]:
                missing.append(stopped_message(run["reply"], "interrupted"))
            if missing:
                self._write(run["thread_id"], None, missing)
        except Exception:  # noqa: BLE001 - the session may be gone; the run still ends
            log.warning("keeping an interrupted reply failed", exc_info=True)


def _written_since(message, started_at) -> bool:
    written = created_at_of(message)
    return written is not None and written.tzinfo is not None and written >= started_at
