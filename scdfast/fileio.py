"""Small file-system helpers every reader and writer shares (datasets, run directories, settings)."""
from __future__ import annotations

import json
import os

from scdfast.errors import ScdError


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
