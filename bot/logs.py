"""Logging set-up with a redaction safety net: no digit run that could be a card, ID, bank or
phone number reaches a log line, whatever a caller passed."""

from __future__ import annotations

import logging
from pathlib import Path

from core.masking import redact


class RedactingFilter(logging.Filter):
    """Masks number-like runs in the fully formatted message (arguments included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            # Exception texts can carry values: keep the type and traceback, mask the text.
            exc = record.exc_info[1]
            exc.args = tuple(redact(str(a)) for a in exc.args)
        return True


def configure_logging(level: str, log_file: Path | None) -> None:
    """Warnings to stderr; everything at ``level`` to the log file when one is given."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    for handler in list(root.handlers):
        if getattr(handler, "_cardbot", False):
            root.removeHandler(handler)
            handler.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    stderr = logging.StreamHandler()
    stderr.setLevel(logging.WARNING)
    handlers: list[logging.Handler] = [stderr]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(fmt)
        handler.addFilter(RedactingFilter())
        handler._cardbot = True  # type: ignore[attr-defined]
        root.addHandler(handler)
