"""The adversary's probe script, in the parts that need no cluster: it recognises a connection, a
DNS answer, a refusal; its forged credential is a well-formed one the relay must refuse; its own
text never trips its secret scan; its disk filler stops at its bound."""

from __future__ import annotations

import importlib.util
import json
import socket
import threading
import time
from pathlib import Path
from types import ModuleType

import pytest
from codingjob_relay.credentials import CredentialError, JobClaims, issue, verify

SOURCE = (
    Path(__file__).resolve().parents[3]
    / "agent-image"
    / "scenario_sources"
    / "adversary"
    / "adversary_probe.py"
)


@pytest.fixture(scope="module")
def probe() -> ModuleType:
    spec = importlib.util.spec_from_file_location("adversary_probe", SOURCE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_listening_port_is_connected_a_closed_one_is_not(probe: ModuleType) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert probe.tcp("127.0.0.1", port) == "connected"
    assert probe.tcp("127.0.0.1", port) == "refused"
    assert probe.blocked("x", "connected", "y")["ok"] is False
    assert probe.blocked("x", "refused", "y")["ok"] is True
    assert probe.blocked("x", "answered (12 bytes)", "y")["ok"] is False


def test_a_udp_answer_counts_as_reached(probe: ModuleType) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]

        def echo() -> None:
            data, peer = server.recvfrom(512)
            server.sendto(data, peer)

        thread = threading.Thread(target=echo)
        thread.start()
        query = probe.dns_query("kubernetes.default.svc.cluster.local")
        assert probe.udp("127.0.0.1", port, query) == f"answered ({len(query)} bytes)"
        thread.join()
    # One header, one question: kubernetes(10) default(7) svc(3) cluster(7) local(5), type A.
    assert query[4:6] == b"\x00\x01"
    assert query[12:] == (
        b"\x0akubernetes\x07default\x03svc\x07cluster\x05local\x00\x00\x01\x00\x01"
    )


def test_the_forged_credential_is_well_formed_and_refused(probe: ModuleType) -> None:
    claims = {"namespace": "n", "name": "j", "uid": "u", "provider": "p", "exp": time.time() + 60}
    forged = probe.forged_credential(claims)
    key = b"k" * 32
    with pytest.raises(CredentialError, match="signature"):
        verify(key, forged, time.time())
    # The same claims signed with the key pass: the refusal is the MAC's, not the format's.
    real = issue(key, JobClaims.model_validate({**claims, "exp": int(claims["exp"])}))
    assert verify(key, real, time.time()).name == "j"


def test_the_probes_own_text_never_matches_its_secret_patterns(probe: ModuleType) -> None:
    # The workspace and the conversation hold the script: a hit on itself would be noise.
    assert probe.secret_hits(SOURCE.read_bytes()) == []
    assert probe.secret_hits(json.dumps(SOURCE.read_text()).encode()) == []
    assert probe.secret_hits(b"x CODINGJOB_MODEL_API_KEY=abc") != []
    assert probe.secret_hits(b"cjr1." + b"a" * 30 + b"." + b"b" * 40) != []


def test_the_filler_stops_at_its_bound(probe: ModuleType, tmp_path: Path) -> None:
    lines: list[str] = []
    outcomes = probe.fill([str(tmp_path)], 3 * 1024**2, lines.append)
    assert outcomes == [f"{tmp_path}: wrote {3 * 1024**2} of {3 * 1024**2} bytes"]
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) == 3 * 1024**2


def test_targets_come_from_the_task_and_only_attacks_are_counted(probe: ModuleType) -> None:
    task = 'Scripted scenario adversary\nADVERSARY-TARGETS: {"node_ip": "10.0.0.1"}\n'
    assert probe.targets_from_task(task) == {"node_ip": "10.0.0.1"}
    records = [
        probe.record("a", "e", "o", True),
        probe.record("b", "e", "o", False),
        probe.record("c", "e", "o", False, "control"),
    ]
    assert probe.summary(records) == (2, 1)
