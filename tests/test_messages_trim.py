"""llm.messages.trim_to_budget: the history sent upstream is exactly LangChain's trim_messages'
choice, at a cost that does not grow with the part of a long history that is left out."""

from __future__ import annotations

import random

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.messages.utils import count_tokens_approximately, trim_messages

from llm.messages import _TRIM_CHUNK, trim_to_budget


def reference(messages, max_tokens):
    """The plain call (every message counted again on every try), with the same fallback."""
    kept = trim_messages(
        messages, max_tokens=max_tokens, token_counter=count_tokens_approximately, strategy="last",
        include_system=True, start_on="human", allow_partial=False,
    )
    if not kept or kept[-1] is not messages[-1]:
        kept = [m for m in messages if isinstance(m, SystemMessage)] + [messages[-1]]
    return kept


def random_history(rng: random.Random, n: int) -> list:
    messages = [SystemMessage(content="be brief " * rng.randint(1, 30))] if rng.random() < 0.5 else []
    for i in range(n):
        kind = rng.random()
        text = "word " * rng.randint(0, 120)
        if kind < 0.35:
            messages.append(HumanMessage(content=text, id=f"h{i}"))
        elif kind < 0.45:  # content in parts, as a multimodal client sends it
            messages.append(HumanMessage(content=[{"type": "text", "text": text}, {"type": "image_url", "image_url": {
                "url": "data:image/png;base64,AAAA"}}], id=f"p{i}"))
        elif kind < 0.85:
            messages.append(AIMessage(content=text, id=f"a{i}"))
        elif kind < 0.93:
            messages.append(SystemMessage(content=text, id=f"s{i}"))  # one further in, from a custom graph
        else:
            messages.append(ToolMessage(content=text, tool_call_id=f"call-{i}", id=f"t{i}"))
    return messages


@pytest.mark.parametrize("seed", range(300))
def test_the_trimmed_history_is_what_trim_messages_keeps(seed):
    rng = random.Random(seed)
    messages = random_history(rng, rng.randint(1, 80))
    budget = rng.choice([1, 10, 50, 200, 600, 2000, 100_000])
    got = trim_to_budget(messages, budget)
    assert [id(m) for m in got] == [id(m) for m in reference(messages, budget)]


def test_a_long_history_is_trimmed_without_estimating_what_is_left_out(monkeypatch):
    import llm.messages

    estimated = []

    def counting(batch, *args, **kwargs):
        estimated.extend(batch)
        return count_tokens_approximately(batch, *args, **kwargs)

    monkeypatch.setattr(llm.messages, "count_tokens_approximately", counting)
    messages = []
    for i in range(5000):
        messages += [HumanMessage(content=f"question {i} " * 10), AIMessage(content=f"answer {i} " * 10)]
    kept = trim_to_budget(messages, 2000)
    assert [id(m) for m in kept] == [id(m) for m in reference(messages, 2000)]
    assert 0 < len(kept) < 100
    # Only the newest messages are estimated, down to the chunk where the budget ran out: not
    # 10,000 messages a dozen times over, as a binary search over the whole history would.
    position = {id(m): i for i, m in enumerate(messages)}
    oldest_kept = position[id(kept[0])]
    assert min(position[id(m)] for m in estimated) >= oldest_kept - 2 * _TRIM_CHUNK
    assert len(estimated) <= 2 * (len(kept) + 2 * _TRIM_CHUNK)
