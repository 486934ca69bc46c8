"""Log set-up: Postfix-style text lines, or one JSON object per line (`--log-format json`).

Message lines start with the queue id (or NOQUEUE) like Postfix's, so operators can grep
one message's whole story. Structured fields passed as `extra={"fields": {...}}` appear
as keys in JSON output.
"""
from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import sys
import threading
import time
from typing import Any, Callable, TextIO


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._pid = os.getpid()      # as in the text lines' smtprelay[PID]; looked up once

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "pid": self._pid,
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            doc.update(fields)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class TextFormatter(logging.Formatter):
    """Postfix-like text lines; the date is formatted once per second, not once per line."""

    def __init__(self) -> None:
        # The pid is written in once: looking it up per line is a system call.
        super().__init__(f"%(asctime)s smtprelay[{os.getpid()}]: %(levelname)s %(message)s")
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._second, self._stamp = second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return f"{self._stamp},{int(record.msecs):03d}"


class LoopBufferedHandler(logging.Handler):
    """Writes the lines of one event-loop iteration together (one write instead of one per line).

    A line is formatted when it is logged and written before the loop's next turn ends, so
    it appears within milliseconds; warnings and errors, lines logged outside the loop (other
    threads, start-up) and everything at exit are written at once. Under load this saves a
    system call per message event (issue 8's profile)."""

    def __init__(self, stream: TextIO):
        super().__init__()
        self.stream = stream
        self._lines: list[str] = []
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = -1

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._lines.append(self.format(record) + "\n")
        except Exception:
            self.handleError(record)
            return
        if record.levelno >= logging.WARNING:
            self._write()
            return
        if not self._scheduled:
            loop = self._running_loop()
            if loop is None:        # not on a loop thread
                self._write()
                return
            self._scheduled = True
            loop.call_soon(self._flush_soon)

    def _running_loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop of the calling thread; remembered (asyncio's lookup makes a getpid() call)."""
        thread = threading.get_ident()
        if thread == self._loop_thread and self._loop is not None and self._loop.is_running():
            return self._loop
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        self._loop, self._loop_thread = loop, thread
        return loop

    def _flush_soon(self) -> None:
        self.acquire()
        try:
            self._scheduled = False
            self._write()
        finally:
            self.release()

    def _write(self) -> None:
        if self._lines:
            data = "".join(self._lines)
            self._lines.clear()
            try:
                self.stream.write(data)
                self.stream.flush()
            except (OSError, ValueError):
                pass

    def flush(self) -> None:
        self.acquire()
        try:
            self._write()
        finally:
            self.release()


class RepeatLimiter:
    """Postfix anvil-style summaries for lines one client can repeat at will (refused
    connections, refusals, locked-out logins): per key, the first `burst` lines of a `window`
    are logged one by one, the rest counted and logged as one summary line when the window
    ends (`flush`, called every second) or the key comes back after it."""

    def __init__(self, logger: logging.Logger, monotonic: Callable[[], float], window: float = 60.0,
                 burst: int = 10):
        self.logger = logger
        self.monotonic = monotonic
        self.window = window
        self.burst = burst
        self._keys: dict[tuple[str, ...], list[Any]] = {}   # key → [until, count, suppressed, level, what]

    def log(self, key: tuple[str, ...], what: str, level: int, msg: str, *args: Any, **kwargs: Any) -> None:
        """`what` names the repeated line in its summary ("[203.0.113.9]: connections refused")."""
        now = self.monotonic()
        entry = self._keys.get(key)
        if entry is None or now >= entry[0]:
            if entry is not None:
                self._summary(entry)
            entry = self._keys[key] = [now + self.window, 0, 0, level, what]
        entry[1] += 1
        if entry[1] <= self.burst:
            self.logger.log(level, msg, *args, **kwargs)
        else:
            entry[2] += 1

    def _summary(self, entry: list[Any]) -> None:
        if entry[2]:
            self.logger.log(entry[3], "%s: %d more in the last %ds (after %d logged one by one)", entry[4],
                            entry[2], int(self.window), self.burst)

    def flush(self) -> None:
        now = self.monotonic()
        for key, entry in list(self._keys.items()):
            if now >= entry[0]:
                self._summary(entry)
                del self._keys[key]


class Outage:
    """A loop's dependency failing and recovering: one line when it starts failing (with the
    traceback of an unexpected error), one when it recovers with how many rounds failed, and
    nothing in between — not a line (or a traceback) per retry."""

    def __init__(self, logger: logging.Logger, what: str, monotonic: Callable[[], float] = time.monotonic):
        self.logger = logger
        self.what = what
        self.monotonic = monotonic
        self.failures = 0
        self._since = 0.0

    def failed(self, exc: BaseException, expected: bool = True) -> None:
        if not self.failures:
            self._since = self.monotonic()
            self.logger.error("%s: failing (%s); retrying quietly until it recovers", self.what, exc,
                              exc_info=None if expected else exc)
        self.failures += 1

    def ok(self) -> None:
        if self.failures:
            self.logger.warning("%s: recovered after %d failed round(s) in %.0fs", self.what, self.failures,
                                self.monotonic() - self._since)
            self.failures = 0


def setup(level: str = "info", fmt: str = "text") -> None:
    # Nothing we print needs the caller's file and line, the thread or the process name, and
    # the logging module would look each up for every line (a stack walk; a getpid() call).
    logging._srcfile = None   # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logMultiprocessing = False
    logging.logProcesses = False
    handler = LoopBufferedHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # aiosmtpd logs every command and peer at INFO on "mail.log"; our own lines say what
    # happened, Postfix style (its warnings and errors still come through).
    logging.getLogger("mail.log").setLevel(logging.WARNING)


def set_level(level: str) -> None:
    logging.getLogger().setLevel(level.upper())
