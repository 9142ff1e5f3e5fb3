"""Conversation messages: what a client sees, and what a model is sent.

The checkpointed state holds LangChain messages; a custom graph may add tool
calls, tool results or system messages. Clients see only the user's messages
and the assistant's replies with text, and `message_count` counts exactly those.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.messages.utils import count_tokens_approximately

CREATED_AT_KEY = "created_at"
_TRIM_CHUNK = 32  # messages estimated per call while trimming (each call has a fixed cost)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


def text_of(message: BaseMessage) -> str:
    """Message content as plain text (content can be a list of typed parts)."""
    content = message.content
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if isinstance(part, str):
            parts.append(part)
        elif isinstance(part, dict) and part.get("type") == "text":
            parts.append(str(part.get("text", "")))
    return "".join(parts)


def user_message(text: str, created_at: datetime | None = None, message_id: str | None = None) -> HumanMessage:
    stamp = created_at.isoformat() if created_at else now_iso()
    return HumanMessage(content=text, additional_kwargs={CREATED_AT_KEY: stamp}, id=message_id)


def assistant_message(text: str, created_at: datetime | None = None, message_id: str | None = None) -> AIMessage:
    stamp = created_at.isoformat() if created_at else now_iso()
    return AIMessage(content=text, additional_kwargs={CREATED_AT_KEY: stamp}, id=message_id)


# A reply that did not finish (Stop): kept as written, marked, and told to the model as such.
STATUS_KEY = "status"
UNFINISHED_NOTES = {
    "stopped": "[This reply was stopped by the user before it was finished.]",
    "interrupted": "[This reply was cut off by a server failure before it was finished.]",
}


def stopped_message(text: str, status: str = "stopped") -> AIMessage:
    """A reply that did not finish: `stopped` (Stop) or `interrupted` (its server died)."""
    message = assistant_message(text)
    message.additional_kwargs[STATUS_KEY] = status
    return message


def message_of(
    role: str, text: str, created_at: datetime | None = None, status: str | None = None, message_id: str | None = None,
) -> BaseMessage:
    """A message as a client sees it ({id?, role, content, created_at, status?}), back into the history."""
    if role == "user":
        return user_message(text, created_at, message_id)
    message = assistant_message(text, created_at, message_id)
    if status:
        message.additional_kwargs[STATUS_KEY] = status
    return message


def created_at_of(message: BaseMessage) -> datetime | None:
    """When the message was written (its created_at), or None."""
    stamp = message.additional_kwargs.get(CREATED_AT_KEY)
    try:
        when = datetime.fromisoformat(stamp) if isinstance(stamp, str) else None
        if when is not None and when.tzinfo is not None:
            when.astimezone(timezone.utc)  # times are shown in UTC: one past its range (year 10,000) has none
        return when
    except (ValueError, OverflowError):
        return None


def with_ids(messages: list[BaseMessage]) -> list[BaseMessage]:
    """The messages, each with an id: one written without (a history from before messages had
    ids) gets one from its place, the same on every load, so its branches can name it."""
    for index, message in enumerate(messages):
        if message.id is None:
            message.id = f"m{index}"
    return messages


def visible_messages(messages: list[BaseMessage]) -> list[dict[str, Any]]:
    """[{id, role, content, created_at, status?}] for the user's messages and the assistant's text replies."""
    out: list[dict[str, Any]] = []
    for message in messages:
        if isinstance(message, HumanMessage):
            role = "user"
        elif isinstance(message, AIMessage):
            role = "assistant"
        else:
            continue
        text = text_of(message)
        if role == "assistant" and not text:
            continue  # a tool call without words is not a reply
        entry = {"id": message.id, "role": role, "content": text, "created_at": created_at_of(message)}
        status = message.additional_kwargs.get(STATUS_KEY)
        if role == "assistant" and status in ("stopped", "interrupted"):
            entry["status"] = status
        out.append(entry)
    return out


def path_messages(current: list[BaseMessage], path: list[dict]) -> list[BaseMessage]:
    """The history for a branch: `path` ([{id, role, content, status, created_at}], a path of
    the conversation's tree), taking from `current` (the checkpoint's messages) the part both
    share as it is there, with whatever a custom graph kept between (tool calls, results), and
    the rest from `path`."""
    kept: list[BaseMessage] = []
    shared = 0
    for message in current:
        if shared == len(path):
            break
        visible = visible_messages([message])
        if visible:
            if visible[0]["id"] != path[shared]["id"]:
                break
            shared += 1
        kept.append(message)
    while shared and not visible_messages([kept[-1]]):
        kept.pop()  # what followed the last shared message belongs to the branch left
    return kept + [message_of(m["role"], m["content"], m["created_at"], m["status"], m["id"]) for m in path[shared:]]


def to_openai_messages(messages: list[BaseMessage], system_prompt: str | None = None) -> list[dict[str, Any]]:
    """The chat-completions `messages` for a plain conversation (text turns only)."""
    out: list[dict[str, Any]] = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for message in messages:
        if isinstance(message, SystemMessage):
            out.append({"role": "system", "content": text_of(message)})
        elif isinstance(message, HumanMessage):
            out.append({"role": "user", "content": text_of(message)})
        elif isinstance(message, AIMessage) and text_of(message):
            text = text_of(message)
            status = message.additional_kwargs.get(STATUS_KEY)
            if status in UNFINISHED_NOTES:
                text = f"{text}\n\n{UNFINISHED_NOTES[status]}"
            out.append({"role": "assistant", "content": text})
        elif isinstance(message, ToolMessage):
            continue  # the default graph has no tools; a custom graph formats its own
    return out


def checkpoint_messages(checkpoint: dict | None) -> list[BaseMessage] | None:
    """The messages of a checkpoint (none: no checkpoint), each with its id (with_ids: the objects
    themselves get it); None when it keeps no message list (a custom channel type)."""
    messages = checkpoint.get("channel_values", {}).get("messages") if checkpoint is not None else []
    return with_ids([m for m in messages if isinstance(m, BaseMessage)]) if isinstance(messages, list) else None


def load_thread_messages(checkpointer: Any, thread_id: str) -> list[BaseMessage]:
    """The messages of a thread's latest checkpoint, each with its id (none for an unknown thread).

    `checkpointer` is any LangGraph saver; pass one built on a connection to
    read inside that connection's transaction.
    """
    saved = checkpointer.get_tuple({"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}})
    return checkpoint_messages(saved.checkpoint if saved is not None else None) or []


def trim_to_budget(messages: list[BaseMessage], max_tokens: int | None) -> list[BaseMessage]:
    """The newest messages that fit `max_tokens` (estimated), for what goes upstream.

    What LangChain's trim_messages keeps (strategy "last", the leading system
    message kept, starting on a user message, no partial messages; estimated
    by count_tokens_approximately); the newest message is always kept, even
    alone over the budget. The stored history is untouched: only what the
    model is sent is bounded.

    Not trim_messages itself: it estimates whole runs of the history again and
    again (a binary search), 16 ms a turn for 1,000 messages. The estimate adds
    up (it rounds each message), so here the newest messages are estimated once,
    in chunks, until the budget is spent: the history left out is never looked at.
    """
    if not max_tokens or not messages:
        return messages
    system = [messages[0]] if isinstance(messages[0], SystemMessage) else []
    budget = max(0, max_tokens - count_tokens_approximately(system)) if system else max_tokens
    rest = messages[len(system):]
    start, used = len(rest), 0
    while start > 0:
        chunk = rest[max(0, start - _TRIM_CHUNK):start]
        tokens = count_tokens_approximately(chunk)
        if used + tokens <= budget:
            used, start = used + tokens, start - len(chunk)
            continue
        for message in reversed(chunk):  # the chunk that does not fit whole: message by message
            tokens = count_tokens_approximately([message])
            if used + tokens > budget:
                break
            used, start = used + tokens, start - 1
        break
    while start < len(rest) and not isinstance(rest[start], HumanMessage):
        start += 1  # start on a user message
    kept = system + rest[start:]
    if not kept or kept[-1] is not messages[-1]:
        kept = [m for m in messages if isinstance(m, SystemMessage)] + [messages[-1]]
    return kept
