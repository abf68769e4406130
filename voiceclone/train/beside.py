"""A function run in a second process beside this one: how `train --stage all` trains the vocoder while the
acoustic model trains, on a CPU.

The two models do not depend on each other (the vocoder learns from the dataset's mels), and on a small CPU
one process per core beats one process with a thread per core: the vocoder's small operations gain about 1.1x
from a second intra-op thread, the acoustic model's about 1.5x (benchmarks/train_both.py;
benchmarks/results/cpu-amd-epyc-2core.md).

The process is spawned (never forked: a forked OpenMP runtime can hang) into its own process group, with
Ctrl-C blocked until it is there, so a Ctrl-C at the terminal reaches this process alone; `stop` passes it
on once, as SIGTERM, which the worker's trainer takes as its own Ctrl-C (finish the step, save, stop). What
the worker prints comes back here as text and is printed on this process's console, above its live progress
line; its result or its error comes back too. POSIX only, as the package is (fcntl locks, /proc/stat).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue as queue_module
import signal
import sys
import threading
import traceback
from typing import Any, Callable

from rich.console import Console

from voiceclone.errors import KNOWN_ERRNOS, TrainingFailed, UserError, file_error

STOP_WAIT = 120.0  # seconds a stopped worker may take to finish its step and save before it is killed


class _ToQueue:
    """A text file whose writes go to a queue (what a rich Console, or sys.stderr, needs of a file)."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue

    def write(self, text: str) -> int:
        if text:
            self.queue.put(("text", text))
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def _die_with_parent() -> None:
    """Linux: a SIGTERM (a graceful stop) when the parent dies, so a killed `train` leaves no orphan."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _worker(target: Callable[..., Any], args: tuple, threads: int, width: int, queue: Any, parent: int) -> None:
    """The spawned process: `target(*args, console)` with its printing sent to `queue`, then its result."""
    try:
        os.setpgrp()  # out of the terminal's group: its Ctrl-C reaches the parent alone, which passes it on
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # one pressed while this process started, blocked till now
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        # until the trainer takes the signal over (finish the step, save), a stop has nothing to save
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        _die_with_parent()
        if os.getppid() != parent:  # it died while this process started, before the line above could tell
            return
        sys.stdout = sys.stderr = _ToQueue(queue)  # warnings too, or they would cut the parent's progress line
        import torch

        torch.set_num_threads(threads)
        console = Console(file=_ToQueue(queue), width=width, force_terminal=False, no_color=True, emoji=False,
                          highlight=False)
        queue.put(("result", target(*args, console)))
    except UserError as e:
        queue.put(("training failed" if isinstance(e, TrainingFailed) else "user error", str(e)))
    except OSError as e:
        if e.errno not in KNOWN_ERRNOS:
            queue.put(("crash", traceback.format_exc()))
        else:  # a full disk, a read-only folder: the one line the command would print in one process
            queue.put(("user error", str(file_error(e))))
    except KeyboardInterrupt:  # stopped before the trainer took the signal over: nothing trained yet
        queue.put(("stopped", None))
    except BaseException:  # noqa: BLE001 - anything else is a bug: its traceback goes back to the parent
        queue.put(("crash", traceback.format_exc()))
    finally:
        queue.put(None)


def _start_resource_tracker() -> None:
    """multiprocessing's resource tracker, which a spawned process needs, started now with hang-ups ignored.
    It lives in this process's group and ignores only SIGINT and SIGTERM: the hang-up of a closed terminal
    killed it, the stopping training relaunched it, and the new one printed a KeyError traceback for every
    queue lock freed on the way out (into the log that output was sent to)."""
    from multiprocessing import resource_tracker

    hangup = getattr(signal, "SIGHUP", None)
    if hangup is None or threading.current_thread() is not threading.main_thread():
        resource_tracker.ensure_running()
        return
    previous = signal.signal(hangup, signal.SIG_IGN)  # an ignored signal stays ignored across exec
    try:
        resource_tracker.ensure_running()
    finally:
        signal.signal(hangup, previous if previous is not None else signal.SIG_DFL)


class Beside:
    """`target(*args, console)` running in a spawned process with `threads` intra-op threads; as a context
    manager, a worker still running at the end of the block is stopped and waited for.

    Its printing appears on `console` as it happens; `result()` waits for it and returns its value or raises
    its error here (a UserError or TrainingFailed keeps its class, so its exit code; anything else becomes a
    RuntimeError holding the worker's traceback). `resume`: the command that continues its work, named when
    the worker is killed from outside.
    """

    def __init__(self, name: str, target: Callable[..., Any], args: tuple, threads: int, console: Console,
                 resume: str = "") -> None:
        self.name, self.console, self.threads, self.resume = name, console, threads, resume
        context = multiprocessing.get_context("spawn")
        _start_resource_tracker()  # before the queue, whose lock is the first thing it tracks
        self.queue = context.Queue()
        self.outcome: tuple[str, Any] | None = None
        self.process = context.Process(target=_worker, name=f"voiceclone-{name}",
                                       args=(target, args, threads, console.width, self.queue, os.getpid()))
        self.stop_sent = False
        self.relay = threading.Thread(target=self._relay, name=f"voiceclone-{name}-output", daemon=True)
        self._previous: dict[int, Any] = {}
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # inherited by the new process
        try:
            self.process.start()
            self.relay.start()
            self._follow_job_control()
        except BaseException:
            self.kill()
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def _follow_job_control(self) -> None:
        """Ctrl-Z (SIGTSTP) stops the terminal's group, which the worker left: pause it too, and let it go on
        when this process does (fg, bg: SIGCONT). Only the main thread can set handlers."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, handler in ((signal.SIGTSTP, self._pause), (signal.SIGCONT, self._go_on)):
            self._previous[sig] = signal.signal(sig, handler)

    def _pause(self, signum, frame) -> None:
        self._send(signal.SIGSTOP)
        signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTSTP)  # stop here too, as the default action would have
        # here when continued, or at once where the kernel drops the stop (a process group with no shell to
        # continue it): either way the worker goes on with this process
        self._go_on(signum, frame)

    def _go_on(self, signum, frame) -> None:
        signal.signal(signal.SIGTSTP, self._pause)
        self._send(signal.SIGCONT)

    def _send(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            if self.process.is_alive():
                os.kill(self.process.pid, sig)

    def __enter__(self) -> "Beside":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self.process.is_alive()

    def _relay(self) -> None:
        while True:
            try:
                item = self.queue.get(timeout=1.0)
            except queue_module.Empty:
                if self.process.is_alive():
                    continue
                try:  # anything put just before it ended
                    item = self.queue.get_nowait()
                except queue_module.Empty:  # died without a word: killed from outside, said now
                    if not self.stop_sent:
                        with contextlib.suppress(Exception):
                            self.console.print(f"{self.name}: its process ended (exit code {self.process.exitcode})"
                                               "; the training beside it goes on", markup=False, highlight=False)
                    return
            if item is None:
                return
            kind, value = item
            if kind == "text":
                with contextlib.suppress(Exception):  # a console that cannot print must not stall the worker
                    self.console.print(value, end="", markup=False, highlight=False, soft_wrap=True, emoji=False)
                continue
            self.outcome = (kind, value)
            if kind in ("user error", "training failed", "crash"):  # said now, not when this side ends
                first = str(value).strip().splitlines()[-1] if kind == "crash" else value
                with contextlib.suppress(Exception):
                    self.console.print(f"{self.name} stopped with an error; the training beside it goes on: {first}",
                                       markup=False, highlight=False)

    def stop(self) -> None:
        """Ask the worker to finish its step, save and stop (once); it is waited for by `result`."""
        if not self.stop_sent and self.process.is_alive():
            self.stop_sent = True
            self._send(signal.SIGCONT)  # a paused worker could not finish its step
            self._send(signal.SIGTERM)

    def result(self) -> Any:
        """Wait for the worker; a Ctrl-C meanwhile is passed on to it, a second one kills it. None: it was
        stopped before its target began its work."""
        try:
            self._wait()
        except KeyboardInterrupt:
            self.kill()
            raise
        self.relay.join()
        if self.outcome is None and (self.stop_sent or self.process.exitcode in (-signal.SIGINT, -signal.SIGTERM)):
            return None  # ended by a signal while its interpreter was starting
        if self.outcome is None:
            raise TrainingFailed(f"{self.name}: its worker process ended without a result (exit code "
                                 f"{self.process.exitcode}; killed from outside?)"
                                 + (f"; resume it with: {self.resume}" if self.resume else ""))
        kind, value = self.outcome
        if kind in ("result", "stopped"):
            return value
        if kind == "crash":  # a bug, not bad input: shown as one, with the worker's traceback
            raise RuntimeError(f"{self.name}: its worker process failed:\n{value}")
        raise (TrainingFailed if kind == "training failed" else UserError)(value)

    def _wait(self) -> None:
        """Until the worker ends, a stop asked of this process (Ctrl-C, SIGTERM, a hang-up: StopRequest's
        signals and rules) is passed on to it; a second Ctrl-C raises KeyboardInterrupt here."""
        # here, not at the top: the worker imports this module too, and must not import torch before its checks
        from voiceclone.train.distributed import StopRequest

        with StopRequest() as asked:
            asked.requested = self.stop_sent  # a stop already passed on: the next Ctrl-C is the second
            while self.process.is_alive():
                if asked.requested:
                    self.stop()
                self.process.join(0.2)

    def kill(self) -> None:
        if self.process.pid is None:  # never started
            return
        if self.process.is_alive():
            self.process.kill()
        self.process.join()

    def close(self, wait: float = STOP_WAIT) -> None:
        """Stop the worker if it still runs (this side ended early or failed) and wait for it to save; it is
        killed if that takes too long or is interrupted, so it never outlives the run folder's lock."""
        try:
            if self.process.is_alive():
                self.stop()
                self.process.join(wait)
        finally:
            self.kill()
            if self.relay.is_alive():
                self.relay.join(5.0)
            for sig, handler in self._previous.items():
                if handler is not None:  # None: not set from Python, nothing to put back
                    signal.signal(sig, handler)
            self._previous = {}
