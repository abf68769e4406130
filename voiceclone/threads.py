"""How many threads torch may use: the cores this process may run on that nobody else is using.

torch's default, one intra-op thread per core, collapses when another job shares the cores: its threads meet
at a barrier after every parallel operation, and while one of them waits for the scheduler the others wait
too. Measured on 2 cores (benchmarks/contention.py), two threads beside one busy process ran at about half
the speed of one thread, and a tiny vocoder call took 60 times longer than on a quiet machine. One thread
per free core cannot fall into that: it never asks for a core that is taken.

"Free" is measured, not guessed: the busy time of the allowed CPUs in /proc/stat over a window, minus this
process's own CPU time in that window, is what the neighbours used. The command line opens the window when
it starts (`CpuSample.now()` in its callback), so the window is the second or so spent importing torch and
costs nothing; without one, a 50 ms window is sampled. Where /proc/stat does not exist (macOS), the load
average stands in. An explicit count (`--threads N`, or OMP_NUM_THREADS set by the user) always wins.

Conversion (`synthesize`) goes further: its windows are independent, so it runs one single-threaded worker per
allowed core, each on its own window (`render_workers`, `ordered_map`). Workers never wait for each other
inside an operation, so they cannot collapse either, and beside a neighbour that holds one of two cores they
still get the scheduler's fair share, two thirds of each core, where one intra-op thread would get one core.
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import resource
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

from voiceclone.errors import UserError

T = TypeVar("T")
R = TypeVar("R")

MIN_WINDOW = 0.05  # seconds: shorter windows hold too few scheduler ticks (100 per second per core) to judge
SPARE = 0.5  # a core counts as free when neighbours use less than half of it: the second thread then still pays
# far above any machine's cores; --threads 100000 crashed in libgomp (a segfault, exit 139, no message), and as
# many prepare workers would be as many processes
MAX_THREADS = 1024


def allowed_cores() -> int:
    """CPUs this process may run on (affinity mask, cgroup CPU quota), at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def _cgroup_quota() -> float | None:
    """Cores granted by a cgroup v2 (cpu.max) or v1 (cfs quota/period) limit, None when unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class CpuSample:
    """Busy CPU seconds of the allowed CPUs (None without /proc/stat), this process's own CPU seconds, and the
    monotonic time, at one instant."""

    busy: float | None
    own: float
    at: float

    @classmethod
    def now(cls) -> "CpuSample":
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return cls(_busy_seconds(), usage.ru_utime + usage.ru_stime, time.monotonic())


def _busy_seconds() -> float | None:
    """Seconds the allowed CPUs spent busy since boot (user, nice, system, irq, softirq), from /proc/stat."""
    try:
        text = Path("/proc/stat").read_text()
    except OSError:
        return None
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    ticks = 0
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu":
            continue
        if allowed is not None and int(name[3:]) not in allowed:
            continue
        f = [int(x) for x in rest.split()]
        ticks += f[0] + f[1] + f[2] + f[5] + f[6]  # user nice system (idle iowait) irq softirq
    return ticks / os.sysconf("SC_CLK_TCK")


def neighbour_load(since: CpuSample | None = None) -> float:
    """Cores' worth of CPU that other processes used since `since` (or over a fresh MIN_WINDOW window)."""
    if since is None or time.monotonic() - since.at < MIN_WINDOW:
        start = since or CpuSample.now()
        time.sleep(max(0.0, MIN_WINDOW - (time.monotonic() - start.at)))
        since = start
    now = CpuSample.now()
    if now.busy is None or since.busy is None:  # no /proc/stat: the load average, less this process
        return max(0.0, os.getloadavg()[0] - 1.0) if hasattr(os, "getloadavg") else 0.0
    wall = max(now.at - since.at, 1e-6)
    return max(0.0, (now.busy - since.busy) - (now.own - since.own)) / wall


def free_cores(since: CpuSample | None = None) -> int:
    """Allowed cores left over by other processes, at least 1."""
    return max(1, min(allowed_cores(), int(allowed_cores() - neighbour_load(since) + SPARE)))


def check_count(n: int, option: str) -> None:
    """--threads or --workers: 0 (chosen here) up to MAX_THREADS."""
    if not 0 <= n <= MAX_THREADS:
        raise UserError(f"{option} {n}: expected 0 (chosen from the free cores) to {MAX_THREADS}")


def explicit_threads(requested: int) -> int:
    """`requested` when > 0, else OMP_NUM_THREADS when the user set it, else 0."""
    if requested > 0:
        return requested
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    n = int(env) if env.isdecimal() else 0  # not a count (abc, -1, ²): unset, as OpenMP itself reads it
    if n > MAX_THREADS:  # as many torch threads crash libgomp, as --threads would (MAX_THREADS)
        raise UserError(f"OMP_NUM_THREADS={env}: expected 1 to {MAX_THREADS} threads (or unset it, or pass --threads)")
    return n


def choose_threads(requested: int = 0, since: CpuSample | None = None) -> int:
    """Intra-op threads: `requested` when > 0, else OMP_NUM_THREADS when the user set it, else the free cores."""
    return explicit_threads(requested) or free_cores(since)


def render_workers(requested: int = 0) -> int:
    """Single-threaded workers for independent windows of a conversion: `requested` when > 0, else
    OMP_NUM_THREADS when the user set it, else one per allowed core. Not the free cores: a worker beside a
    busy neighbour still gets its fair share and never stalls the others."""
    return explicit_threads(requested) or allowed_cores()


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to n for the block, restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """fn over items in `workers` threads, results in the order of items. At most `workers` items are taken
    ahead of the result being consumed, so a long source streams through in bounded memory. torch and numpy
    release the GIL inside their kernels, which is where conversion spends its time."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="voiceclone") as pool:
        pending: collections.deque = collections.deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()


def apply_threads(requested: int = 0, since: CpuSample | None = None, lent: int = 0) -> int:
    """Set torch's intra-op threads by choose_threads, an explicit count less `lent` (threads a worker process
    of the same job uses now; free cores count it already); returns the count."""
    import torch

    check_count(requested, "threads")
    explicit = explicit_threads(requested)
    n = max(1, explicit - lent) if explicit else free_cores(since)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


class ThreadGovernor:
    """Chooses the threads again at the natural breaks of a long job (after every epoch), from what other
    processes used since the last choice, so a neighbour that starts or stops mid-run is followed. Loader
    worker processes count as neighbours, rightly: they compete for the same cores. An explicit count
    (`requested` > 0, or OMP_NUM_THREADS) stays as it is, less what `lent()` says is lent to a worker of
    this job for now (`train --stage all`'s vocoder process): measured free cores count that worker already."""

    def __init__(self, requested: int = 0, lent: Callable[[], int] | None = None) -> None:
        self.requested, self.since, self.lent = requested, CpuSample.now(), lent

    def update(self) -> int:
        n = apply_threads(self.requested, self.since, self.lent() if self.lent else 0)
        self.since = CpuSample.now()
        return n
