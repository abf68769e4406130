"""Process-level concerns of training: the torchrun process group and device, and Ctrl-C / SIGTERM / SIGHUP."""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from voiceclone.errors import parse_device


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str | None) -> tuple[Distributed, torch.device]:
    """Join the process group when started by torchrun; choose the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if world > 1:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if use_cuda else "gloo")
        d = Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
        if use_cuda:
            torch.cuda.set_device(d.local_rank)
            return d, torch.device("cuda", d.local_rank)
        return d, torch.device("cpu")
    if device:
        return Distributed(), parse_device(device)
    return Distributed(), torch.device("cuda" if use_cuda else "cpu")


def _stop_signals() -> tuple[int, ...]:
    """The signals that ask a training to save and stop: Ctrl-C, SIGTERM (a scheduler, `kill`) and, where it
    exists and is not ignored, SIGHUP: the terminal closed or the SSH connection dropped, whose default would
    end the process with up to an epoch of work unsaved. Under `nohup` SIGHUP is ignored, and stays so: the
    user asked for the training to outlive the terminal."""
    hangup = getattr(signal, "SIGHUP", None)
    keep = hangup is not None and signal.getsignal(hangup) != signal.SIG_IGN  # an int here, not the enum
    return (signal.SIGINT, signal.SIGTERM) + ((hangup,) if keep else ())


def _terminal_fds() -> tuple[int, ...]:
    """stdout and stderr where they are a terminal. Asked before a hang-up: after one, isatty says no."""
    found = []
    for fd in (1, 2):
        with contextlib.suppress(OSError):
            if os.isatty(fd):
                found.append(fd)
    return tuple(found)


def _detach_from_lost_terminal(fds: tuple[int, ...]) -> None:
    """After a hang-up, writing to the terminal fails (EIO), and the progress line or the closing 'Stopped ...;
    resume with' would raise on the way out. Output that went to a terminal (`fds`, from `_terminal_fds`) that
    is gone goes nowhere from now on, as under nohup; a terminal still there (`kill -HUP` by hand) keeps it,
    and so do a file and a pipe."""
    with open(os.devnull, "wb") as null:
        for fd in fds:
            with contextlib.suppress(OSError):
                if not os.isatty(fd):  # a hung-up terminal answers no
                    os.dup2(null.fileno(), fd)


class StopRequest:
    """Ctrl-C, SIGTERM or SIGHUP: let the current step finish, then save and stop."""

    def __init__(self) -> None:
        self.requested = False
        self.hung_up = False
        self._previous: dict[int, Any] = {}
        self._terminal: tuple[int, ...] = ()

    def __enter__(self) -> "StopRequest":
        self._terminal = _terminal_fds()
        for sig in _stop_signals():
            with contextlib.suppress(ValueError):  # not the main thread: no handlers, no graceful stop
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if signum == getattr(signal, "SIGHUP", None):
            self.hung_up = True
            _detach_from_lost_terminal(self._terminal)
        # a second Ctrl-C means now; a SIGTERM or a hang-up never does: the kernel and the shell may each send
        # a hang-up, and a session's processes get a SIGTERM after it (logind), while the step is being saved
        elif signum == signal.SIGINT and self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            # after a hang-up no terminal is left to close: later ones are ignored, or the default would end the
            # process between the stages or on its way out
            if self.hung_up and sig == getattr(signal, "SIGHUP", None):
                signal.signal(sig, signal.SIG_IGN)
            elif handler is not None:  # None: not set from Python, nothing to put back
                signal.signal(sig, handler)
