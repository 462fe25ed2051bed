"""Text and numbers that come from the sandbox, made inert before they reach the status, events
or logs.

The agent container's termination message, its logs (FallbackToLogsOnError), the result file and
the sidecar's ``/stats`` are written by code a model chose: they may carry terminal escape
sequences (which rewrite what an admin's terminal shows), control characters, bidi overrides,
megabytes of text, or numbers that overflow the status schema. Everything read from there goes
through these functions; they are pure and total (they never raise).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

#: The reasons the agent may report (``AgentReason`` of the agent image's protocol module; a
#: unit test pins the two together). Anything else becomes ``AgentError``.
AGENT_REASONS = frozenset(
    {
        "Completed",
        "AgentError",
        "MaxStepsExceeded",
        "DeadlineExceeded",
        "BudgetExceeded",
        "ContextOverflow",
        "ModelError",
        "Terminated",
        "InvalidEnvironment",
        "WorkspaceFull",
    }
)
#: Longest message kept from the sandbox.
MESSAGE_MAX = 1024
#: Largest count accepted from the sandbox (steps, tokens): far above any real run, far below
#: what the status schema's int64 or a JSON reader would choke on.
COUNT_MAX = 10**13

# ESC-introduced sequences: CSI (ESC [ ... final), OSC (ESC ] ... BEL or ST), and two-byte ESC
# sequences; plus the C1 CSI introducer U+009B.
_ANSI = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]?"
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"
    r"|\x1b[PX^_][^\x1b]*(?:\x1b\\)?"
    r"|\x1b[@-Z\\-_]?"
    r"|\x9b[0-?]*[ -/]*[@-~]?"
)
# C0 and C1 controls except tab and newline, DEL, and the invisible or direction-changing
# characters that make a message read differently from what it says.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]")
_BLANK_RUNS = re.compile(r"[ \t]*\n[ \t\n]*\n")


def clean_text(text: object, limit: int = MESSAGE_MAX) -> str:
    """``text`` without escape sequences or control characters, trimmed, at most ``limit``
    characters (cut with ``...``)."""
    if text is None:
        return ""
    value = text if isinstance(text, str) else str(text)
    # Bound the work before the regexes run: a multi-megabyte message costs nothing more.
    value = value[: limit * 8]
    value = _ANSI.sub("", value)
    value = _CONTROL.sub("", value)
    value = _BLANK_RUNS.sub("\n\n", value).strip()
    if len(value) > limit:
        value = value[: max(0, limit - 3)].rstrip() + "..."
    return value


def known_reason(
    value: object, known: Iterable[str] = AGENT_REASONS, default: str = "AgentError"
) -> str:
    """``value`` when it is one of ``known``, else ``default``: a reason is an enum, never text."""
    return value if isinstance(value, str) and value in frozenset(known) else default


def bounded_int(value: object, low: int = 0, high: int = COUNT_MAX) -> int:
    """``value`` as an int clamped to ``[low, high]``; anything that is not a number is ``low``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return low
    if value != value:  # NaN
        return low
    return int(min(max(value, low), high))
