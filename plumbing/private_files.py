"""Files that only this user may read: the data directory, tokens and keys.

The data directory holds stored events (Kafka segments, chDB parts, worker state), the query
token and the write keys' hashes. The CLI sets the umask to `PRIVATE_UMASK` before it creates
anything, so every directory is 0700 and every file 0600 from creation, in this process and in
the processes it starts (the Kafka broker, the services); `private_dir` also closes a directory
made before (an older release made it 0755).

Secrets are written whole or not at all: the content goes to a new file of its own (created
with `O_EXCL`, mode 0600, fsynced), which then takes the final name in one step, so no reader
ever sees a file created but not yet written (an empty token would match an empty Bearer).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

PRIVATE_UMASK = 0o077
_FILE_MODE = 0o600
_DIR_MODE = 0o700


def private_dir(path: Path) -> Path:
    """`path` (and missing parents) as a directory only this user can enter; an existing one of
    this user's is closed (0700). Returns `path`."""
    path.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
    stat = path.stat()
    if stat.st_mode & 0o777 != _DIR_MODE and stat.st_uid == os.getuid():  # not ours: left as it is
        path.chmod(_DIR_MODE)
    return path


def _written(path: Path, text: str) -> Path:
    """A new file next to `path` holding `text`, 0600, on disk; the caller gives it its name."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_private(path: Path, text: str) -> bool:
    """Give `path` the content `text` (mode 0600) if no file has that name yet; False, and
    nothing changed, if one has (another process created it first)."""
    temporary = _written(path, text)
    try:
        os.link(temporary, path)
    except FileExistsError:
        return False
    finally:
        temporary.unlink(missing_ok=True)
    _sync_dir(path.parent)
    return True


def replace_private(path: Path, text: str) -> None:
    """Give `path` the content `text` (mode 0600), replacing what it held in one step: a reader
    sees the old content or the new, never a part."""
    temporary = _written(path, text)
    try:
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise
    _sync_dir(path.parent)
