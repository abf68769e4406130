"""The thread policy: torch threads = the cores other processes leave free; explicit counts win."""

from __future__ import annotations

import pytest

from voiceclone import threads as T


@pytest.fixture
def machine(monkeypatch):
    """A fake machine: `cores` allowed, and the CPU seconds busy / used by us that the next sample reads."""
    state = {"cores": 2, "busy": 0.0, "own": 0.0, "at": 0.0}
    monkeypatch.setattr(T, "allowed_cores", lambda: state["cores"])
    monkeypatch.setattr(T.CpuSample, "now", classmethod(lambda cls: cls(state["busy"], state["own"], state["at"])))
    monkeypatch.setattr(T.time, "monotonic", lambda: state["at"])
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    return state


def after(state, seconds, others, ours):
    """Let `seconds` pass in which other processes use `others` cores and this one `ours`."""
    start = T.CpuSample.now()
    state["at"] += seconds
    state["busy"] += (others + ours) * seconds
    state["own"] += ours * seconds
    return start


def test_neighbours_are_what_is_busy_beyond_our_own_work(machine):
    since = after(machine, 1.0, others=0.0, ours=1.0)  # importing torch keeps one core busy: that is us
    assert T.neighbour_load(since) == pytest.approx(0.0) and T.free_cores(since) == 2
    since = after(machine, 1.0, others=1.0, ours=1.0)  # one busy neighbour
    assert T.neighbour_load(since) == pytest.approx(1.0) and T.free_cores(since) == 1
    since = after(machine, 1.0, others=0.6, ours=0.0)  # a mostly busy one costs a core: barriers would wait on it
    assert T.free_cores(since) == 1
    since = after(machine, 1.0, others=0.3, ours=1.0)  # background noise (a browser) does not
    assert T.free_cores(since) == 2
    since = after(machine, 1.0, others=2.0, ours=0.0)  # fully taken: still one thread, never zero
    assert T.free_cores(since) == 1
    machine["cores"] = 8
    since = after(machine, 1.0, others=3.0, ours=1.0)
    assert T.free_cores(since) == 5 and T.choose_threads(0, since) == 5


def test_an_explicit_count_wins(machine, monkeypatch):
    since = after(machine, 1.0, others=2.0, ours=0.0)
    assert T.choose_threads(3, since) == 3  # --threads
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert T.choose_threads(0, since) == 4  # the user's environment
    assert T.choose_threads(2, since) == 2


def test_an_absurd_omp_num_threads_is_one_line_not_a_segfault(machine, monkeypatch):
    # OMP_NUM_THREADS=99999 went to torch.set_num_threads as it was: train and synthesize died in libgomp
    # (exit 139, no message), the crash --threads is capped against
    from voiceclone.errors import UserError

    monkeypatch.setenv("OMP_NUM_THREADS", "99999")
    for choose in (T.choose_threads, T.render_workers):
        with pytest.raises(UserError, match=f"OMP_NUM_THREADS=99999: expected 1 to {T.MAX_THREADS}"):
            choose(0)
    assert T.choose_threads(2) == 2 and T.render_workers(1) == 1  # --threads wins over the environment
    for ignored in ("abc", "0", "-1", "", "²"):  # not a count: unset, as OpenMP itself reads it ("²": a
        # digit to str.isdigit, a ValueError traceback from int)
        monkeypatch.setenv("OMP_NUM_THREADS", ignored)
        assert T.render_workers(0) == 2


def test_the_real_machine_gives_a_sane_count():
    since = T.CpuSample.now()
    n = T.free_cores(since)  # a window shorter than MIN_WINDOW is topped up by sleeping
    assert 1 <= n <= T.allowed_cores() and T.neighbour_load() >= 0.0


def test_the_governor_follows_a_neighbour_between_epochs(machine, monkeypatch):
    import torch

    before = torch.get_num_threads()
    try:
        auto, fixed = T.ThreadGovernor(0), T.ThreadGovernor(2)
        after(machine, 10.0, others=1.0, ours=1.0)  # an epoch beside a busy neighbour
        assert auto.update() == 1 and torch.get_num_threads() == 1 and fixed.update() == 2
        after(machine, 10.0, others=0.0, ours=1.0)  # the neighbour left
        assert auto.update() == 2 and fixed.update() == 2
    finally:
        torch.set_num_threads(before)



def test_an_explicit_count_lends_threads_to_a_worker_and_takes_them_back(machine, monkeypatch):
    # train --stage all: --threads 2 (or OMP_NUM_THREADS=2) is shared with the vocoder's process while it runs
    import torch

    before, loan = torch.get_num_threads(), [1]
    try:
        explicit = T.ThreadGovernor(2, lent=lambda: loan[0])
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        from_env = T.ThreadGovernor(0, lent=lambda: loan[0])
        assert explicit.update() == 1 and from_env.update() == 1
        loan[0] = 0  # the worker ended
        assert explicit.update() == 2 and from_env.update() == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)

def test_conversion_workers_are_one_per_allowed_core_unless_told(machine, monkeypatch):
    after(machine, 1.0, others=1.0, ours=0.0)  # a busy neighbour does not reduce them: workers cannot stall
    assert T.render_workers() == 2
    assert T.render_workers(3) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert T.render_workers() == 1


def test_ordered_map_keeps_order_reads_ahead_only_by_the_workers_and_raises():
    import threading
    import time

    taken, lock = [], threading.Lock()

    def items():
        for i in range(10):
            with lock:
                taken.append(i)
            yield i

    def slow_square(i):
        time.sleep(0.02 * (i % 3))  # later items often finish first
        return i * i

    seen = []
    for i, r in enumerate(T.ordered_map(slow_square, items(), workers=3)):
        seen.append(r)
        assert len(taken) <= i + 3  # never more than `workers` items beyond the one being consumed
    assert seen == [i * i for i in range(10)]
    assert list(T.ordered_map(slow_square, range(4), workers=1)) == [0, 1, 4, 9]

    def fail(i):
        if i == 2:
            raise ValueError("bad window")
        return i

    with pytest.raises(ValueError, match="bad window"):
        list(T.ordered_map(fail, range(6), workers=2))


def test_torch_threads_sets_and_restores():
    import torch

    before = torch.get_num_threads()
    with T.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
