"""Small file-system helpers every reader and writer shares (datasets, run directories, settings)."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

from scdfast.errors import ScdError

TMP_PREFIX = ".scdfast-tmp-"        # a file being written; one a kill left is removed at the next start


def current_umask() -> int:
    """The process umask, read without setting it (setting it races other threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def fsync_dir(directory: str) -> None:
    """Make the renames and creations in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def parse_json(text: str | bytes, where: str):
    """JSON from a file's text, or a one-line ScdError naming `where`: malformed text, bytes that
    are not UTF-8, and nesting too deep for the parser (a RecursionError) alike."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ScdError(f"{where}: line {exc.lineno}: malformed JSON ({exc.msg})") from None
    except UnicodeDecodeError:
        raise ScdError(f"{where}: not UTF-8 text") from None
    except RecursionError:
        raise ScdError(f"{where}: nested too deeply to be read (a JSON file scdfast reads is a few levels deep)") from None


def read_json(path: str, where: str | None = None):
    """The JSON in `path` (see parse_json); `where` names it in errors (default: the path)."""
    where = where or path
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError as exc:
        raise ScdError(f"{where}: unreadable ({exc.strerror or exc})") from None
    return parse_json(text, where)


def write_error(path: str, exc: BaseException) -> ScdError:
    """One line for a failed write: the file, the reason and the free space there."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        free_bytes = shutil.disk_usage(directory).free
        free = f"{free_bytes / 2**20:.1f} MiB free there"
    except OSError:
        free_bytes, free = None, "free space unknown"
    if isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror
    elif free_bytes is not None and free_bytes < 2**24:  # torch's zip writer hides ENOSPC in a RuntimeError
        reason = "the disk is full"
    else:
        reason = str(exc).strip().splitlines()[0][:200]
    return ScdError(f"could not write {path}: {reason} ({free}); the files written before it are intact")


def atomic_write(path: str, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write `path` whole or not at all. An OS error (ENOSPC, EIO, ...) or torch's zip writer's
    RuntimeError around one becomes a one-line ScdError; the previous file stays."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=directory)
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; give the file ordinary permissions
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        fsync_dir(directory)
    except (OSError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and "inline_container" not in str(exc) and "write" not in str(exc).lower():
            raise  # not a write failure: a bug keeps its traceback
        raise write_error(path, exc) from exc
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
