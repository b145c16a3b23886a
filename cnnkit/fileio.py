"""Atomic file writes: a kill at any moment leaves the old file or the new one, never a torn one."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Callable

from cnnkit.errors import RunError


def atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Call `write(f)` on a temporary file beside `path`, fsync it, then `os.replace` it into place.

    The temporary file lives in the same folder so that `os.replace` is a same-filesystem rename,
    which POSIX makes atomic.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise RunError(f"cannot write {path}: {exc.strerror or exc}; choose a writable folder") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException as exc:
        # Whatever went wrong (disk full, Ctrl-C), the destination is untouched; drop the temp file.
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise RunError(f"cannot write {path}: {exc.strerror or exc}; free space or choose another folder") from exc
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))
