"""Benchmark of the context-manager sidecar at 1,000,000 tokens (``make bench-context``).

Prints, each against a baseline measured in the same run:
* appending a 1 KiB tool result (count + window update, and with the fsync'd journal write)
  vs counting the whole context again, as a store without per-message counts must (goal >= 200x);
* pruning at the limit with ``window`` and ``mask-observations`` (goal < 50 ms);
* resident memory of the sidecar process holding 1M tokens vs holding none (goal < 300 MiB).

``--quick`` runs the same code at 20,000 tokens with fewer repeats (a smoke test for CI).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from codingjob_agent.context.conversation import Conversation
from codingjob_agent.context.journal import Journal
from codingjob_agent.context.model import Completion
from codingjob_agent.context.service import ContextService
from codingjob_agent.context.settings import Settings, Strategy
from codingjob_agent.context.tokens import counter_for
from codingjob_agent.protocol import JOURNAL_PATH

TARGET_TOKENS = 1_000_000
QUICK_TOKENS = 20_000
COUNTER = counter_for("cl100k_base")
VOCABULARY = (
    "def return import self value result error file test assert path json print for in if "
    "else None True False class async await yield with open read write line list dict int "
    "str config build run make npm install src index html script function const let var"
)
WORDS = VOCABULARY.split(" ")
TOOLS = [{"type": "function", "function": {"name": "bash", "parameters": {"type": "object"}}}]


def kib_of_output(rng: random.Random) -> str:
    """1024 characters that look like command output: words, numbers, punctuation, lines."""
    text = ""
    while len(text) < 1024:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))
        text += f"{line} {rng.randint(0, 99999)}: ({rng.choice(WORDS)}).\n"
    return text[:1024]


def turn(n: int, rng: random.Random) -> list[dict[str, Any]]:
    call = {
        "id": f"call_{n}",
        "type": "function",
        "function": {"name": "bash", "arguments": f'{{"command": "make test-{n}"}}'},
    }
    return [
        {"role": "assistant", "content": f"Running step {n}.", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": f"call_{n}", "content": kib_of_output(rng)},
    ]


def fill(path: Path, tokens: int) -> Conversation:
    """A journal at ``path`` holding a conversation of about ``tokens`` tokens."""
    rng = random.Random(7)
    conversation = Conversation(COUNTER)
    journal = Journal(path)
    journal.load()
    first = [
        {"op": "tools", "tools": TOOLS},
        {
            "op": "messages",
            "messages": [
                {"role": "system", "content": "You are a coding agent."},
                {"role": "user", "content": "Build a todo app."},
            ],
        },
    ]
    journal.append(first)
    conversation.replay(first)
    n = 0
    batch: list[dict[str, Any]] = []
    while conversation.window_tokens < tokens:
        event = {"op": "messages", "messages": turn(n, rng)}
        conversation.apply(event)
        batch.append(event)
        n += 1
        if len(batch) == 200:
            journal.append(batch)
            batch = []
    journal.append(batch)
    journal.close()
    return conversation


def median_seconds(run: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


class NoModel:
    async def complete(self, *args: Any, **kwargs: Any) -> Completion:
        raise AssertionError("pruning with window or mask-observations calls no model")


def settings_for(workspace: Path, strategy: Strategy, tokens: int) -> Settings:
    return Settings(
        model_base_url="http://model.invalid/v1",
        model_name="none",
        max_tokens=tokens,
        strategy=strategy,
        workspace=workspace,
    )


def bench_append(workspace: Path, tokens: int, repeat: int) -> None:
    print(f"building a conversation of {tokens:,} tokens ...", flush=True)
    conversation = fill(workspace / JOURNAL_PATH, tokens)
    print(
        f"  {len(conversation.messages):,} messages, {conversation.window_tokens:,} tokens "
        f"in the window"
    )
    rng = random.Random(11)
    baseline = median_seconds(
        lambda: COUNTER.request(conversation.window(), conversation.tools), repeat=5
    )
    # Enough appended results for both timed loops below (each takes one per repetition).
    appended = [turn(100_000 + n, rng)[1:] for n in range(3 * repeat)]
    it = iter(appended)
    incremental = median_seconds(
        lambda: conversation.apply({"op": "messages", "messages": next(it)}), repeat=2 * repeat
    )
    assert conversation.window_tokens == COUNTER.request(conversation.window(), conversation.tools)
    service = ContextService(settings_for(workspace, Strategy.WINDOW, tokens), COUNTER, NoModel())
    service.load()
    durable = median_seconds(
        lambda: service._commit([{"op": "messages", "messages": next(it)}]), repeat=repeat
    )
    service.close()
    print(f"\nappend of a 1 KiB tool result at {tokens:,} tokens")
    print(f"  full re-count of the context (baseline)  {baseline * 1e3:10.2f} ms")
    print(
        f"  incremental count + window update        {incremental * 1e6:10.1f} us"
        f"   {baseline / incremental:8.0f}x faster (goal >= 200x)"
    )
    print(
        f"  ... plus the fsync'd journal record      {durable * 1e6:10.1f} us"
        f"   {baseline / durable:8.0f}x faster"
    )


def bench_prune(workspace: Path, tokens: int, rounds: int) -> None:
    print(f"\nprune at the limit ({tokens:,}-token window, one 1 KiB result over the budget)")
    for strategy in (Strategy.WINDOW, Strategy.MASK_OBSERVATIONS):
        times = []
        for _ in range(rounds):
            service = ContextService(settings_for(workspace, strategy, tokens), COUNTER, NoModel())
            loaded = time.perf_counter()
            service.load()
            loaded = time.perf_counter() - loaded
            conversation = service.conversation
            rng = random.Random(3)
            n = 0
            while conversation.window_tokens <= service.settings.budget:
                service._commit([{"op": "messages", "messages": turn(200_000 + n, rng)}])
                n += 1
            before = conversation.window_tokens
            started = time.perf_counter()
            asyncio.run(service._prune())
            times.append(time.perf_counter() - started)
            assert conversation.window_tokens <= service.settings.budget
            service.close()
        print(
            f"  {strategy.value:<18} {statistics.median(times) * 1e3:8.2f} ms "
            f"(goal < 50 ms): {before:,} -> {conversation.window_tokens:,} tokens; "
            f"reloading the journal took {loaded:.2f} s"
        )


def rss_mib(workspace: Path) -> float:
    """Resident memory of a sidecar process that loaded the journal in ``workspace``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODINGJOB_")}
    env.update(
        CODINGJOB_MODEL_BASE_URL="http://127.0.0.1:9/v1",
        CODINGJOB_MODEL_NAME="none",
        CODINGJOB_WORKSPACE=str(workspace),
        CODINGJOB_GATEWAY_PORT="0",
        CODINGJOB_STATS_PORT="0",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "codingjob_agent.context"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    try:
        for line in process.stderr:
            if "gateway listening" in line:
                break
        else:
            raise RuntimeError("the sidecar did not start")
        status = Path(f"/proc/{process.pid}/status").read_text()
        match = re.search(r"VmRSS:\s+(\d+) kB", status)
        assert match is not None
        return int(match.group(1)) / 1024
    finally:
        process.terminate()
        process.wait(30)


def bench_memory(workspace: Path, tokens: int) -> None:
    with tempfile.TemporaryDirectory() as empty:
        baseline = rss_mib(Path(empty))
    loaded = rss_mib(workspace)
    print("\nresident memory of the sidecar process")
    print(f"  empty conversation (baseline)            {baseline:8.1f} MiB")
    print(
        f"  {tokens:>9,}-token conversation             {loaded:8.1f} MiB"
        f"   {loaded / baseline:.2f}x the baseline, +{loaded - baseline:.1f} MiB (goal < 300 MiB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_TOKENS:,} tokens, few repeats (CI smoke test)"
    )
    args = parser.parse_args()
    tokens, repeat, rounds = (QUICK_TOKENS, 10, 1) if args.quick else (TARGET_TOKENS, 100, 3)
    with tempfile.TemporaryDirectory(prefix="bench-context-") as directory:
        workspace = Path(directory)
        bench_append(workspace, tokens, repeat)
        bench_prune(workspace, tokens, rounds)
        bench_memory(workspace, tokens)


if __name__ == "__main__":
    main()
