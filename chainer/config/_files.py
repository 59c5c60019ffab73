"""Reading a config file (routes.yaml, a `lists:` file): regular files only, bounded; and
keeping Python's cyclic collector out of the way while a big table is built."""

from __future__ import annotations

import contextlib
import gc
import os
import stat
import threading
from collections.abc import Iterator

from ..errors import ConfigError, ConfigErrors

__all__ = ["collector_paused", "read_text_file"]

_paused_lock = threading.Lock()
_paused = 0  # loads under way
_was_enabled = False


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No automatic cyclic collection while a table is built. A 100,000-pattern table
    allocates hundreds of thousands of objects that all survive; every collection they
    trigger walks them all again (a third of an inline table's load time), and holds
    the interpreter while it does — a stall for the event loop when a reload runs in a
    worker thread. Reference counting frees everything else as usual; the collector
    resumes (as it was) when the last load ends."""
    global _paused, _was_enabled
    with _paused_lock:
        if _paused == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _paused += 1
    try:
        yield
    finally:
        with _paused_lock:
            _paused -= 1
            if _paused == 0 and _was_enabled:
                gc.enable()


def read_text_file(file: str, limit: int) -> str:
    """A regular file's UTF-8 text, at most `limit` bytes. A FIFO, a device or a directory
    is refused without being read (opened non-blocking: a FIFO with no writer would
    otherwise hang here), and so is a file over the limit (`/dev/zero` never ends)."""

    def fail(reason: str) -> ConfigErrors:
        return ConfigErrors([ConfigError(file, 0, "", f"cannot read: {reason}")])

    try:
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise fail(e.strerror or type(e).__name__) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise fail("not a regular file")
    with os.fdopen(fd, "rb") as f:
        try:
            data = f.read(limit + 1)
        except OSError as e:
            raise fail(e.strerror or type(e).__name__) from None
    if len(data) > limit:
        raise fail(f"larger than {limit >> 20} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise fail("not UTF-8 text") from None
