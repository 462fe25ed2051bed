"""Logging setup: ``text`` for people, ``json`` (one object per line) for log pipelines."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

#: ``extra=`` fields copied into JSON lines when present (the job a line is about), and their
#: names in the line (``name`` itself is taken by LogRecord).
JOB_FIELDS = {
    "job_namespace": "namespace",
    "job_name": "name",
    "job_uid": "uid",
    "provider": "provider",
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for attribute, key in JOB_FIELDS.items():
            value = record.__dict__.get(attribute)
            if value is not None:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


def setup(log_format: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
