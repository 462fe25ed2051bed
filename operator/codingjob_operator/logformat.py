"""``--log-format json``: one JSON object per line, in the shape kopf's own JSON logs have.

Keys: ``timestamp`` (RFC 3339, UTC), ``severity`` (debug/info/warn/error/fatal), ``logger``,
``message``, ``job`` (``{"namespace", "name", "uid"}`` when the line is about a CodingJob) and
``exc_info`` (the traceback, when there is one). The operator process gets kopf's formatter
(``kopf.configure``) with the reference key ``job``; the archiver, which runs without kopf, uses
:class:`JsonFormatter`. The agent image's sidecar has a copy of this module
(``codingjob_agent.logformat``): the two packages ship in different images and neither may import
the other; a unit test keeps both writing the same lines.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from collections.abc import Mapping
from enum import StrEnum
from typing import Any


class LogFormat(StrEnum):
    PLAIN = "plain"
    JSON = "json"


#: The ``extra`` key a log call uses to say which job it is about: ``extra={JOB: job_ref(...)}``.
JOB = "job"


def job_ref(namespace: str, name: str, uid: str | None = None) -> dict[str, str]:
    """The ``job`` field of a log line."""
    ref = {"namespace": namespace, "name": name}
    if uid:
        ref["uid"] = uid
    return ref


def severity(levelno: int) -> str:
    """kopf's severity names."""
    if levelno <= logging.DEBUG:
        return "debug"
    if levelno <= logging.INFO:
        return "info"
    if levelno <= logging.WARNING:
        return "warn"
    if levelno <= logging.ERROR:
        return "error"
    return "fatal"


class JsonFormatter(logging.Formatter):
    """One JSON object per record; ``job`` from the record's extra, else the process's job."""

    def __init__(self, job: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.job = dict(job) if job else None

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(),
            "severity": severity(record.levelno),
            "logger": record.name,
            "message": record.getMessage(),
        }
        job = getattr(record, JOB, None) or self.job
        if job:
            line[JOB] = dict(job)
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure(
    log_format: LogFormat, *, level: int | str = logging.INFO, job: Mapping[str, str] | None = None
) -> None:
    """Send the root logger to stderr in ``log_format`` (for processes that do not run kopf)."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == LogFormat.JSON:
        handler.setFormatter(JsonFormatter(job))
    else:
        handler.setFormatter(logging.Formatter(PLAIN_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
