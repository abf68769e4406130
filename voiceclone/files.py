"""Files written whole or not at all, and durably: the one way checkpoints, histories, bundles and the
dataset's JSON files are written; and the flock that keeps a second writer out of a run or dataset folder.
No torch, so every layer may use it (`errors.writing` turns what it raises into a line naming the file)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from voiceclone.errors import UserError

TMP_SUFFIX = ".tmp"  # of a file being written: .<name>.<random>.tmp (or a name the caller gives) beside it
NAME_MAX = 255  # bytes in one file name (Linux, macOS)


def tmp_beside(path: Path, suffix: str = TMP_SUFFIX) -> Path:
    """The temporary file `path` is written through and renamed from: `.NAME<suffix>` beside it. An output
    may be named up to NAME_MAX bytes, but then that temporary name is too long ("name too long", exit 2, and
    a folder of sources stopped there): such a name stands in by its hash, still one per output."""
    name = f".{path.name}{suffix}"
    if len(os.fsencode(name)) <= NAME_MAX:
        return path.with_name(name)
    return path.with_name(f".{hashlib.sha256(os.fsencode(path.name)).hexdigest()[:32]}{suffix}")


def walk_following_links(root: Path | str) -> Iterator[tuple[str, list[str], list[str]]]:
    """os.walk(root, followlinks=True), as prepare and synthesize read folders, except that a link to a folder
    walked already is not followed: to the folder itself, above it, or to a folder that links back, it walked
    the same files again about 40 levels deep. The caller may prune `dirs` in place, as with os.walk."""
    walked: set[str] = set()
    for here, dirs, files in os.walk(root, followlinks=True):
        walked.add(os.path.realpath(here))
        yield here, dirs, files
        dirs[:] = [d for d in dirs if not (os.path.islink(os.path.join(here, d))
                                           and os.path.realpath(os.path.join(here, d)) in walked)]


def stored_config(folder: Path, fmt: str) -> dict | None:
    """`folder`/config.json when it is one voiceclone wrote in format `fmt` (which tells such a folder from a
    user's); None when there is none, it is unreadable, or it is another program's."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return config if isinstance(config, dict) and config.get("format") == fmt else None


def write_synced(path: Path | str, data: bytes | memoryview) -> None:
    """Write `data` to `path` and fsync it."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_atomic(path: Path, data: bytes | memoryview, tmp: Path | None = None) -> None:
    """Write `data` to a temporary file beside `path`, fsync it, then rename it over `path`: a crash leaves
    the old file or the new, never part of one; a failure removes the temporary file. tmp: its name (the
    next write reuses it); None: a fresh one, `.NAME.<random>.tmp`, readable by its owner only (mkstemp)."""
    if tmp is None:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
        os.close(fd)
        tmp = Path(name)
    try:
        write_synced(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # on a read-only disk this fails too, and would hide the real error
            tmp.unlink(missing_ok=True)
        raise


def fsync_dir(path: Path | str) -> None:
    """Make the renames and new names in folder `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def flocked(lock: IO, busy: str) -> Iterator[None]:
    """Hold an exclusive flock on the open file `lock` for the block; UserError(busy) at once when another
    process holds it. An flock ends with its process, so a killed one never leaves the folder locked."""
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise UserError(busy) from None
    try:
        yield
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
