"""Reading a config file (routes.yaml, a `lists:` file): regular files only, bounded."""

from __future__ import annotations

import os
import stat

from ..errors import ConfigError, ConfigErrors

__all__ = ["read_text_file"]


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
