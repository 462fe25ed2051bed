"""Benchmark of the model relay (``make bench-relay``).

Streaming chat completions against the scripted test model, directly and through the relay in
the same run, at 1 and 50 concurrent calls: p50/p99 latency per call (request to end of stream),
the relay's overhead (p50 difference and ratio; goal < 5 ms and < 1.1x) and the relay's peak
resident memory at 50 streams (goal < 100 MiB). ``--quick`` runs few calls, asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

import aiohttp
import yaml
from codingjob_relay.credentials import JobClaims, issue

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.fixtures.process import high_water_rss

MODEL = "scripted/todo-app"
BODY = {
    "model": MODEL,
    "stream": True,
    "stream_options": {"include_usage": True},
    "messages": [
        {"role": "system", "content": "You are a coding agent."},
        {"role": "user", "content": "Build a todo app."},
    ],
    "tools": [
        {"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
        for n in ("bash", "create", "str_replace", "view", "screenshot", "finish")
    ],
}


def _drain(stream: IO[str]) -> None:
    for _ in stream:
        pass


def start(argv: list[str], env: dict[str, str], ready: str) -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen(
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    assert process.stderr is not None
    for line in process.stderr:
        match = re.search(ready, line)
        if match:
            threading.Thread(target=_drain, args=(process.stderr,), daemon=True).start()
            return process, int(match.group(1))
    raise RuntimeError(f"{argv} did not start")


async def one(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> float:
    start = time.perf_counter()
    async with session.post(url, json=BODY, headers=headers) as response:
        assert response.status == 200, await response.text()
        done = False
        async for line in response.content:
            if line.strip() == b"data: [DONE]":
                done = True
        assert done
    return time.perf_counter() - start


async def run(url: str, headers: dict[str, str], calls: int, concurrency: int) -> list[float]:
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await one(session, url, headers)  # warm the connection and the caches
        queue = list(range(calls))
        latencies: list[float] = []

        async def worker() -> None:
            while queue:
                queue.pop()
                latencies.append(await one(session, url, headers))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few calls, no goal checks")
    args = parser.parse_args()
    sizes = {1: 30, 50: 200} if args.quick else {1: 300, 50: 2000}
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODINGJOB_")}
    with tempfile.TemporaryDirectory() as scratch:
        model, model_port = start(
            [sys.executable, "-m", "codingjob_agent.scripted_model", "--port", "0"],
            env,
            r"listening on http://127\.0\.0\.1:(\d+)",
        )
        base = f"http://127.0.0.1:{model_port}/v1"
        config = Path(scratch) / "relay.yaml"
        config.write_text(yaml.safe_dump({"providers": [{"name": "bench", "baseURL": base}]}))
        key = secrets.token_urlsafe(32)
        relay, relay_port = start(
            [
                sys.executable,
                "-m",
                "codingjob_relay",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--metrics-port",
                "0",
            ],
            {
                **env,
                "CODINGJOB_RELAY_CONFIG": str(config),
                "CODINGJOB_RELAY_SIGNING_KEY": key,
                "CODINGJOB_RELAY_STATE_DIR": scratch,
                "CODINGJOB_RELAY_JOB_CHECK": "none",
            },
            r"listening on http://127\.0\.0\.1:(\d+)",
        )
        claims = JobClaims(
            namespace="bench",
            name="bench",
            uid="bench",
            provider="bench",
            expires_at=int(time.time()) + 3600,
        )
        auth = {"Authorization": f"Bearer {issue(key.encode(), claims)}"}
        results: dict[str, object] = {}
        ok = True
        try:
            for concurrency, calls in sizes.items():
                direct = asyncio.run(run(f"{base}/chat/completions", {}, calls, concurrency))
                relayed = asyncio.run(
                    run(
                        f"http://127.0.0.1:{relay_port}/v1/chat/completions",
                        auth,
                        calls,
                        concurrency,
                    )
                )
                d50, d99, r50, r99 = (
                    pct(direct, 0.5),
                    pct(direct, 0.99),
                    pct(relayed, 0.5),
                    pct(relayed, 0.99),
                )
                overhead, ratio = r50 - d50, r50 / d50
                print(
                    f"{concurrency:>2} concurrent streaming calls, {calls} each: "
                    f"direct p50 {d50:.2f} ms p99 {d99:.2f} ms | relay p50 {r50:.2f} ms "
                    f"p99 {r99:.2f} ms | overhead p50 {overhead:+.2f} ms, ratio {ratio:.2f}x "
                    f"(mean {statistics.mean(relayed) * 1000:.2f} ms)"
                )
                results[f"c{concurrency}"] = {
                    "direct_p50_ms": d50,
                    "direct_p99_ms": d99,
                    "relay_p50_ms": r50,
                    "relay_p99_ms": r99,
                }
                if concurrency == 1:
                    ok = ok and overhead < 5 and ratio < 1.1
            rss = high_water_rss(relay.pid) / 2**20
            print(f"relay peak RSS (VmHWM) after the 50-stream run: {rss:.1f} MiB (goal < 100)")
            results["relay_rss_mib"] = rss
            ok = ok and rss < 100
        finally:
            for process in (relay, model):
                process.terminate()
            for process in (relay, model):
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(10)
    print(json.dumps(results))
    if args.quick:
        return
    print(
        "goals met"
        if ok
        else "GOALS NOT MET (p50 overhead < 5 ms and < 1.1x at 1 call, RSS < 100 MiB)"
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
