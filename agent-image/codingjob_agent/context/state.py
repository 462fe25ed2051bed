"""The sidecar's private directory on the workspace volume: where its journal (and with it the
step and token counters that ``limits`` are enforced on) and the transcript live.

The directory is ``<workspace>/.context-manager`` (:data:`~codingjob_agent.protocol.STATE_DIR`),
so that it is kept on the workspace PVC across suspend and resume and archived with the
workspace. The agent cannot reach it: the sidecar runs as its own uid
(:data:`~codingjob_agent.protocol.SIDECAR_UID`), the directory is its own with mode 0750 and
its own group, and the pod mounts an empty read-only volume over it in the agent container (so
the agent cannot rename it away either). Before trusting the directory the sidecar checks that
it is a real directory owned by its uid: anything else was planted, and is refused.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

from codingjob_agent.protocol import (
    JOURNAL_PATH,
    LEGACY_JOURNAL_PATH,
    LEGACY_TRANSCRIPT_PATH,
    STATE_DIR,
    TRANSCRIPT_PATH,
)

log = logging.getLogger(__name__)

#: Mode of the directory: the sidecar writes, its group (the archiver's supplemental group)
#: reads, nobody else enters.
DIR_MODE = 0o750
#: Mode of the files in it.
FILE_MODE = 0o640


class StateError(RuntimeError):
    """The state directory is not the sidecar's own: it must not be read or written."""


def prepare(workspace: Path) -> Path:
    """Create or check ``<workspace>/.context-manager`` and return it; migrate a journal of the
    layout before it (``<workspace>/context.jsonl``) the first time. Raises StateError when the
    path is not a directory of this process's uid."""
    directory = workspace / STATE_DIR
    with contextlib.suppress(FileExistsError):
        directory.mkdir(mode=DIR_MODE)
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode):
        raise StateError(f"{directory} is not a directory: refusing a state planted there")
    if info.st_uid != os.getuid():
        raise StateError(
            f"{directory} belongs to uid {info.st_uid}, not to the context-manager's uid "
            f"{os.getuid()}: refusing a journal another user could have written"
        )
    # Our group, not the one a setgid workspace or the kubelet's fsGroup handed down (the
    # agent's): only the sidecar and the archiver may read the journal.
    os.chown(directory, -1, os.getgid(), follow_symlinks=False)
    os.chmod(directory, DIR_MODE, follow_symlinks=False)
    if not (workspace / JOURNAL_PATH).exists():
        _migrate(workspace)
    return directory


def _migrate(workspace: Path) -> None:
    """Move the journal and transcript of the older layout (in the workspace's root, where the
    agent could write them) into the state directory.

    This runs only while the state directory holds no journal, i.e. at the first start of the
    sidecar on this workspace, before the agent runs: a job suspended before the upgrade
    resumes its conversation (trusted as much as it was then), and a later file of that name
    is the agent's own and never read.
    """
    for legacy, current in (
        (LEGACY_TRANSCRIPT_PATH, TRANSCRIPT_PATH),
        (LEGACY_JOURNAL_PATH, JOURNAL_PATH),
    ):
        source = workspace / legacy
        try:
            # Never through a symlink: it could point at the sidecar's own secrets.
            fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                log.warning("%s is not a regular file; not migrated", source)
                continue
            target = workspace / current
            partial = target.with_name(f".{target.name}.migrating")
            out = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
            with os.fdopen(out, "wb") as writer:
                while chunk := handle.read(1 << 20):
                    writer.write(chunk)
                writer.flush()
                os.fsync(writer.fileno())
            # The journal last and by rename: it is what marks the migration as done.
            os.replace(partial, target)
        log.info("migrated %s to %s", source, target)
        with contextlib.suppress(OSError):
            source.unlink()
