"""Atomic file writes: a kill at any moment leaves the old file or the new one, never a torn one."""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from cnnkit.errors import RunError


def _new_file_mode(path: Path) -> int:
    """The mode `open(path, "w")` would give: the old file's, else 0o666 minus the umask.

    mkstemp makes its file 0o600; without this every checkpoint and metrics file would end up
    private to its owner, unlike any file written the ordinary way.
    """
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable (power loss, not just a killed process); best effort, since
    # some filesystems and platforms cannot open or fsync a directory.
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Call `write(f)` on a temporary file beside `path`, fsync it, then `os.replace` it into place.

    The temporary file lives in the same folder so that `os.replace` is a same-filesystem rename,
    which POSIX makes atomic. If `write` raises (or the process is interrupted) the destination is
    untouched and the temporary file is removed.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            raise IsADirectoryError(21, "Is a directory")
        mode = _new_file_mode(path)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise RunError(f"cannot write {path}: {exc.strerror or exc}; choose a writable folder") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), mode)
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
            raise RunError(
                f"cannot write {path}: {exc.strerror or exc}; free space or choose another folder"
            ) from exc
        raise
    _fsync_dir(path.parent)
    return path


def atomic_save(path: str | os.PathLike, save: Callable[[Path], None]) -> Path:
    """Like `atomic_write`, for writers that take a file name rather than a file (e.g. ONNXProgram.save):
    `save(tmp)` writes a temporary file beside `path`, which gets the usual mode and replaces `path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        mode = _new_file_mode(path)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise RunError(f"cannot write {path}: {exc.strerror or exc}; choose a writable folder") from exc
    try:
        save(Path(tmp_name))
        os.chmod(tmp_name, mode)  # mkstemp made it 0o600; the writer may also have replaced the file
        os.replace(tmp_name, path)
    except BaseException as exc:
        Path(tmp_name).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise RunError(f"cannot write {path}: {exc.strerror or exc}; free space or choose another folder") from exc
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))
