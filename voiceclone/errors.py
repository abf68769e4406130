"""The exception types the CLI turns into a one-line message, and the translation of file-system errors
(a full disk, a read-only or misnamed output path) into such a line."""

from __future__ import annotations

import errno
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

if TYPE_CHECKING:
    from rich.console import Console


class UserError(Exception):
    """Bad input from the user: a missing file, a wrong setting, an unusable dataset.

    The message must name the file or key and the reason in one line; the CLI prints it without a
    traceback and exits with code 2.
    """

    exit_code = 2


class TrainingFailed(UserError):
    """Training ran but produced nothing usable (no epoch with a finite validation loss): exit code 3, so a
    script can tell it from bad input."""

    exit_code = 3


class FileWriteError(UserError):
    """A file could not be written (full disk, read-only or misnamed path); `errno` says which."""

    def __init__(self, message: str, errno_: int | None) -> None:
        super().__init__(message)
        self.errno = errno_


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_REASONS = {errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
            errno.EPERM: "permission denied", errno.EISDIR: "is a folder, not a file",
            errno.ENOTDIR: "a part of this path is a file, not a folder",
            errno.EEXIST: "exists and is not a folder", errno.ENOENT: "no such file or folder",
            errno.ENAMETOOLONG: "name too long"}
KNOWN_ERRNOS = frozenset((*DISK_FULL, *_REASONS))


def mount_point(path: Path | str) -> str:
    """The mount point of the file system `path` is (or would be) on: the 'device' a user frees space on."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return str(p)


def file_error(e: OSError, path: Path | str | None = None) -> FileWriteError:
    """One line for an OSError met while writing `path` (or e.filename): what and where, no traceback."""
    where = str(path) if path is not None else (e.filename if e.filename is not None else "")
    if e.errno in DISK_FULL:
        device = mount_point(where) if where else "the device"
        return FileWriteError(f"no space left on {device}" + (f" writing {where}" if where else ""), e.errno)
    reason = _REASONS.get(e.errno, e.strerror or str(e))
    return FileWriteError(f"{where}: {reason}" if where else reason, e.errno)


def one_line(message: str) -> str:
    """A file name may hold a line break; the message stays one line, the name shown as Python writes it (rich
    drops a carriage return, which named 'a\\rb.wav' as 'ab.wav', another file)."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


def first_few(names: Sequence[str], most: int = 3) -> str:
    """Up to `most` names for a one-line message, "a, b, c, ..." when there are more."""
    return ", ".join(names[:most]) + (", ..." if len(names) > most else "")


def check_output(path: Path | str, folder: bool = False, suffix: str | None = None) -> None:
    """Refuse, before any work, an output path that cannot be written: a folder where a file is to go (or
    the reverse), or a path below a file. suffix (".wav"): the format the file is written in, whatever its
    name; a name with another extension (voice.mp3) would hold that format under a false name."""
    p = Path(path)
    if _loops(p):  # Path.resolve of it raises RuntimeError, and nothing can be written through it
        raise UserError(f"{p}: a symbolic link on this path loops back on itself; remove it or choose another name")
    if not folder and p.is_dir():
        raise UserError(f"{p}: is a folder; name the file to write")
    if p.exists() and not p.is_file() and not p.is_dir():
        # an output is written beside its name and renamed over it: that would replace the device itself
        raise UserError(f"{p}: is a device, pipe or socket, not a {'folder' if folder else 'file'}; name a "
                        f"{'folder to write into' if folder else 'file to write'}")
    if not folder and suffix and p.suffix and p.suffix.lower() != suffix:
        raise UserError(f"{p}: the file is written as {suffix[1:].upper()}; name it {suffix}")
    if folder and p.exists() and not p.is_dir():
        raise UserError(f"{p}: is a file; name a folder to write into")
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{p}: cannot be written: {parent} is a file, not a folder")
    # where the files will be made: inside an existing output folder, else the nearest folder that exists (a
    # file goes beside its name; missing folders are made there). Permissions, a read-only disk and /proc
    # all say no only when tried.
    where = p if p.is_dir() else parent
    try:
        fd, probe = tempfile.mkstemp(dir=where, prefix=".voiceclone-probe.")
    except OSError as e:
        raise UserError(f"{p}: cannot be written: no file can be made in {where} ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(probe)


def _loops(path: Path) -> bool:
    """Whether `path` (or a link on the way to it) is a symbolic link leading back to itself."""
    try:
        os.stat(path)
    except OSError as e:
        return e.errno == errno.ELOOP
    return False


def parse_device(name: str):
    """--device as a torch.device; a misspelt name, or CUDA or a CUDA index this machine lacks, is a UserError
    (torch says so with a RuntimeError or an AssertionError only when the model is moved)."""
    import torch

    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: expected cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise UserError(f"--device {name}: expected cpu, cuda or cuda:N")
    return dev


@contextmanager
def writing(path: Path | str) -> Iterator[None]:
    """Turn a file-system error inside the block into a UserError naming `path` (writes on a full disk
    raise an OSError without a file name)."""
    try:
        yield
    except OSError as e:
        if e.errno in KNOWN_ERRNOS:
            raise file_error(e, path) from None
        raise


def stderr_console() -> "Console":
    """Where the commands and the library functions print: stderr, without emoji codes. rich would show a
    name holding ":-1:" or ":smile:" (a file, a speaker, --device cuda:-1) as an emoji, and nothing this
    tool prints means one."""
    from rich.console import Console

    return Console(stderr=True, emoji=False)
