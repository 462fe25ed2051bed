"""The archiver's termination message: the one contract between the archiver and the operator.

The archiver writes one of these two JSON documents to its termination log; the operator reads
it back (:func:`codingjob_operator.status.parse_archive_message`). Both sides import them here.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

#: ``ArchiveError.reason`` when the archive passed its maximum size.
TOO_LARGE = "ArchiveTooLarge"


class ArchiveReport(BaseModel):
    """What the archiver stored, on success."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    bucket: str
    key: str
    size: int
    sha256: str
    files: int
    #: Entries left out (special files, unreadable, unsafe links, big sparse files); the
    #: archive's manifest lists them with their reasons.
    skipped: int = 0
    transcript_key: str | None = Field(None, alias="transcriptKey")


class ArchiveError(BaseModel):
    """Why the archiver failed; ``permanent`` errors are not retried."""

    model_config = ConfigDict(extra="ignore")

    error: str
    permanent: bool = False
    #: A condition reason for a failure the user can act on (:data:`TOO_LARGE`).
    reason: str | None = None
