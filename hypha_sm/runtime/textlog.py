"""Log lines that remote text cannot forge.

Job ids, reasons, metric names, file names, job output: much of what a node logs came from a
peer or a job. A newline in such text would start a line that looks like the node's own; an
escape sequence could rewrite the operator's terminal. ``SafeFormatter`` writes every control
character of a record's message (C0 but tab, DEL, C1, and the Unicode line and paragraph
separators) as a visible escape, so one record is always one line. Tracebacks, which the node
itself produces, keep their lines. ``JsonFormatter`` writes each record as one JSON object per
line (a traceback included, as a string), for log collectors.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

_ESCAPES = {
    code: f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    for code in [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029]
    if code != 0x09
}
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def escape_controls(text: str) -> str:
    r"""``text`` with every control character written as an escape (a newline as ``\x0a``)."""
    return text.translate(_ESCAPES)


class SafeFormatter(logging.Formatter):
    """A formatter whose messages are always one line of printable text."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per record and line.

    Keys: ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``msg``, and ``exc`` with the
    traceback if there is one. JSON escapes every control character (and, ASCII only, the line
    separators), so a record is always one line.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=True)


def configure(level: str | int = "INFO", fmt: str = "text") -> None:
    """Log to stderr, one safe line per record (what every role's command line uses).

    ``fmt`` is ``text`` (readable lines) or ``json`` (one object per line).
    """
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else SafeFormatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("transitions").setLevel(logging.WARNING)
