"""The store behind a network path that leads elsewhere for a while (real MinIO).

Regression of the fault campaign's MinIO restart: while MinIO's Service had no endpoint, the
operator's connections to its address left the node and something else answered every request
with a body-less 404; the SDK read the 404 to a HEAD as "no such bucket", and the kept-alive
connections, pinned by conntrack to that path, kept getting it for minutes after MinIO was back.
:class:`Path` is that network: a TCP path routed once per connection, at connect time.
"""

from __future__ import annotations

import contextlib
import io
import socket
import threading
from collections.abc import Iterator

import pytest
from codingjob_operator.storage import ArtifactStore, StorageSettings, TransientStorageError
from pydantic import SecretStr

from tests.fixtures.minio import MinioServer

pytestmark = pytest.mark.minio

KEY = "team-a/job/0f1e2d3c/workspace.zip"
#: What answered on the campaign's cluster: a 404 without a body or an S3 header, kept alive.
ELSEWHERE = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


class Path:
    """127.0.0.1:<port> → the store, or (diverted) → a server that is not the store. Each
    connection keeps the route it got when it was opened, as a conntrack entry does."""

    def __init__(self, store: tuple[str, int]) -> None:
        self.store = store
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.diverted = False
        self.open: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def divert(self) -> None:
        """The store goes away (its connections are reset); new connections lead elsewhere."""
        self.diverted = True
        with self.lock:
            for sock in self.open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            self.open.clear()

    def restore(self) -> None:
        """New connections reach the store again; the ones opened meanwhile stay where they are."""
        self.diverted = False

    def close(self) -> None:
        self.listener.close()
        self.divert()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            target = self._elsewhere if self.diverted else self._forward
            threading.Thread(target=target, args=(client,), daemon=True).start()

    def _forward(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.store)
        with self.lock:
            self.open += [client, upstream]
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pump, args=(src, dst), daemon=True).start()

    def _elsewhere(self, client: socket.socket) -> None:
        with contextlib.suppress(OSError), client:
            buffer = b""
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = client.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                while len(buffer) < length:
                    chunk = client.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                buffer = buffer[length:]
                client.sendall(ELSEWHERE)


def _pump(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while chunk := src.recv(65536):
            dst.sendall(chunk)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


@pytest.fixture
def path(minio: MinioServer) -> Iterator[Path]:
    route = Path(("127.0.0.1", minio.port))
    yield route
    route.close()


def test_a_path_that_leads_elsewhere_is_transient_and_left_behind(
    minio: MinioServer, path: Path, bucket_name: str
) -> None:
    """404s that are not the store's are no missing bucket or object, and once the store is
    reachable again the next call gets there (no connection stays on the old path)."""
    store = ArtifactStore(
        StorageSettings(
            endpoint=f"127.0.0.1:{path.port}",
            access_key=SecretStr(minio.access_key),
            secret_key=SecretStr(minio.secret_key),
            bucket=bucket_name,
        )
    )
    store.ensure_bucket()
    store.put_stream(KEY, io.BytesIO(b"workspace"), 9, "application/zip")
    assert store.stat(KEY) is not None

    path.divert()
    for _ in range(3):
        with pytest.raises(TransientStorageError, match=r"not the store's answer|non-XML"):
            store.ensure_bucket()
        # Not None: a HEAD's 404 from elsewhere says nothing about the object.
        with pytest.raises(TransientStorageError, match="not the store's answer"):
            store.stat(KEY)

    path.restore()
    store.ensure_bucket()
    info = store.stat(KEY)
    assert info is not None and info.size == 9
