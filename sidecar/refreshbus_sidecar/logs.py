"""Structured JSON logs on stderr, one object per line.

Pass context as ``extra={"event_id": ..., ...}``; every extra field lands in the JSON
object. Never log secrets: config content is never logged at all, and broker URLs go
through :func:`refreshbus_wire.contract.mask_url` first.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from refreshbus_wire.contract import mask_url

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object: ts, level, logger, msg, then the extras."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": mask_url(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = mask_url(value) if isinstance(value, str) else value
        if record.exc_info:
            out["exc"] = mask_url(self.formatException(record.exc_info))
        return json.dumps(out, default=str, separators=(",", ":"))


def setup(level: str = "INFO") -> None:
    """Send every ``refreshbus`` log record to stderr as JSON; keep pika quiet unless it warns."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("pika").setLevel(logging.CRITICAL if level != "DEBUG" else logging.WARNING)
