"""The request that asks the model to summarize a pruned span, and the message it becomes.

A provider sees an ordinary chat request. The scripted test model recognises it by
:data:`SUMMARY_MARKER`, the fixed start of its system message, and answers with a fixed summary.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from codingjob_agent.context.journal import render_message
from codingjob_agent.context.tokens import REPLY_PRIMING_TOKENS, TokenCounter

#: Fixed start of the system message of every summary request.
SUMMARY_MARKER = "CodingJob context summary request."

SUMMARY_INSTRUCTION = (
    f"{SUMMARY_MARKER} You compress the earlier part of a coding agent's conversation so that "
    "the agent can continue without it. Write a concise summary: progress on the task, files "
    "created or changed, commands run and what they showed, errors met and how they were "
    "handled, and what remains to do. Keep exact file names, commands and error messages. "
    "Reply with the summary only."
)

#: Start of the summary message that replaces the pruned span in the window.
SUMMARY_HEADER = "Summary of earlier steps, which were removed to fit the context window:"


def summary_request(
    counter: TokenCounter,
    *,
    task: Mapping[str, Any],
    previous: Mapping[str, Any] | None,
    span: Sequence[Mapping[str, Any]],
    budget: int,
) -> list[dict[str, Any]]:
    """Messages asking for a summary of ``span`` (and of ``previous``), within ``budget``."""
    system = {"role": "system", "content": SUMMARY_INSTRUCTION}
    task_text = render_message(task)
    parts = [f"The task:\n{task_text}"]
    if previous is not None:
        parts.append(f"Summary of the steps before these:\n{previous.get('content')}")
    head = "\n\n".join(parts) + f"\n\nThe {len(span)} messages to summarize:\n"
    transcript = "\n\n".join(render_message(m) for m in span)
    skeleton = [system, {"role": "user", "content": head}]
    room = budget - counter.request(skeleton) - REPLY_PRIMING_TOKENS
    if room <= 0:
        # The task alone is too large for a summary request; keep its start only.
        head = counter.truncate(head, budget // 2)
        room = budget - counter.request([system, {"role": "user", "content": head}])
    # Keep the end of the span (the most recent steps matter most) when it does not all fit.
    if counter.text(transcript) > room:
        tail = counter.encoding.encode_ordinary(transcript)[-max(room, 0) :] if room > 0 else []
        transcript = "[...]\n" + counter.encoding.decode(tail)
        while (
            transcript
            and counter.request([system, {"role": "user", "content": head + transcript}]) > budget
        ):
            transcript = transcript[max(1, len(transcript) // 10) :]
    return [system, {"role": "user", "content": head + transcript}]


def summary_message(text: str, pruned: int) -> dict[str, Any]:
    """The user message standing in for ``pruned`` messages in the window."""
    return {
        "role": "user",
        "content": f"{SUMMARY_HEADER} ({pruned} messages)\n{text.strip()}",
    }
