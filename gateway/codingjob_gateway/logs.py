"""Logging: plain text for people, or one JSON object per line (``--log-format json``)."""

from __future__ import annotations

import datetime
import json
import logging
import logging.config
from typing import Any

#: Attributes of a LogRecord that are not extra fields.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One line per event: time, level, logger, message, and every ``extra`` field (job
    namespace/name/uid, route, status, ...)."""

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                event[key] = value
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return json.dumps(event, default=str)


def configure(log_format: str, level: int = logging.INFO) -> dict[str, Any]:
    """Configure the root logger; returns the uvicorn ``log_config`` that keeps it that way."""
    formatter: dict[str, Any] = (
        {"()": f"{__name__}.JsonFormatter"}
        if log_format == "json"
        else {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    )
    config: dict[str, Any] = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {
            "default": {"class": "logging.StreamHandler", "formatter": "default"},
        },
        "root": {"handlers": ["default"], "level": level},
        "loggers": {
            "uvicorn": {"level": level},
            "uvicorn.error": {"level": level},
            # The gateway logs each request itself, with its route and the caller.
            "uvicorn.access": {"level": logging.WARNING},
            "aiohttp": {"level": logging.WARNING},
        },
    }
    logging.config.dictConfig(config)
    return config
