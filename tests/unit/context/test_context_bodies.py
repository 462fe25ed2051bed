"""Request bodies against the sidecar process over real HTTP: refused by size before they are
read, and parsed a few at a time, so that a flood cannot grow the sidecar out of memory."""

from __future__ import annotations

import http.client
import json
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from codingjob_agent.context.server import BODY_SLOTS

from tests.fixtures.scripted_model import ContextManager, ScriptedModel
from tests.unit.context.test_context_gateway import FIRST, TOOLS, scenario, state, step

MIB = 1024 * 1024
LIMIT = 8 * MIB


def _peak_rss(cm: ContextManager) -> int:
    """The sidecar's peak resident memory so far (VmHWM), in bytes."""
    assert cm.server.process is not None
    for line in Path(f"/proc/{cm.server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


def _port(cm: ContextManager) -> int:
    return int(cm.gateway_url.rsplit(":", 1)[1])


def _big_body(size: int) -> bytes:
    """A well-formed step body of about ``size`` bytes whose one tool result answers no call."""
    content = "y" * (size - 200)
    message = {"role": "tool", "tool_call_id": "call_nothing", "content": content}
    return json.dumps({"messages": [message], "tools": TOOLS}).encode()


def _post(port: int, body: bytes | list[bytes]) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        connection.request("POST", "/v1/step", body=iter(body) if isinstance(body, list) else body)
        return connection.getresponse().status
    except (ConnectionError, http.client.HTTPException):
        # The server may answer 413 and close before a chunked sender is done.
        return 413
    finally:
        connection.close()


def test_a_declared_size_over_the_limit_is_refused_before_the_body_is_sent(
    scripted_model: Callable[..., ScriptedModel],
    context_manager: Callable[..., ContextManager],
    tmp_path: Path,
) -> None:
    cm = context_manager(scripted_model(scenario(1)), tmp_path)
    with socket.create_connection(("127.0.0.1", _port(cm)), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/step HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {64 * MIB}\r\n\r\n".encode()
        )
        # No byte of the 64 MiB is sent: the answer comes from the header alone.
        answer = sock.recv(4096).decode()
    assert answer.startswith("HTTP/1.1 413"), answer
    assert "MessageTooLarge" in answer


def test_a_flood_of_large_bodies_is_parsed_a_few_at_a_time(
    scripted_model: Callable[..., ScriptedModel],
    context_manager: Callable[..., ContextManager],
    tmp_path: Path,
) -> None:
    cm = context_manager(scripted_model(scenario(2)), tmp_path)
    assert step(cm, FIRST)[0] == 200
    before = _peak_rss(cm)
    near_limit = _big_body(LIMIT - 4096)
    chunked_over = [b'{"messages": ["', b"x" * (4 * MIB)] + [b"x" * (4 * MIB)] * 15
    statuses: list[int] = []
    lock = threading.Lock()

    def send(body: bytes | list[bytes]) -> None:
        status = _post(_port(cm), body)
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=send, args=(near_limit,)) for _ in range(12)]
    threads += [threading.Thread(target=send, args=(chunked_over,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    # Each near-limit body is read and refused (its tool result answers no call); each chunked
    # 64 MiB body is cut off at the limit.
    assert sorted(statuses) == [400] * 12 + [413] * 4, statuses
    grown = _peak_rss(cm) - before
    # Without the slots, twelve 8 MiB bodies parsed at once take several hundred MiB (bytes,
    # text, parsed objects for each); with them, about BODY_SLOTS bodies' worth.
    assert grown < BODY_SLOTS * 6 * LIMIT, f"peak memory grew by {grown / MIB:.0f} MiB"
    assert state(cm).messages == 3
