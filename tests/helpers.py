"""Helpers the test modules share (imported as `helpers`: pytest puts tests/ on the path)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_filesystem(path: Path, size_bytes: int):
    """A tmpfs of `size_bytes` at `path` (needs root); skips the test where it cannot be mounted."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def history(run: Path, stage: str = "acoustic") -> list[dict]:
    """The rows of a run stage's history.jsonl, as written (non-finite values stay strings)."""
    return [json.loads(line) for line in (run / stage / "history.jsonl").read_text().splitlines() if line.strip()]


def folder_size(folder: Path) -> int:
    """Bytes of all files below `folder`."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def one_line_error(r, *words: str) -> None:
    """A CLI result (CliRunner) that is a user error: exit code 2, one line "error: ...", no traceback, naming
    each of `words`."""
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert r.output.lstrip().startswith("error:"), r.output
    for w in words:
        assert w in r.output, (w, r.output)


def set_options(overrides) -> list[str]:
    """Recipe overrides as command-line options: ["a=1", "b=2"] -> ["--set", "a=1", "--set", "b=2"]."""
    return sum((["--set", o] for o in overrides), [])


def ctrl_c_after_step(monkeypatch, when) -> list:
    """A real Ctrl-C (SIGINT) to this process once, right after the first training step for which
    `when(trainer)` holds, as a user pressing it would; returns a list that holds True once it fired (the
    resumed run is left alone)."""
    from voiceclone.train.loop import Trainer

    original, fired = Trainer._train_step, []

    def step(self, batch):
        out = original(self, batch)
        if not fired and when(self):
            fired.append(True)
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(Trainer, "_train_step", step)
    return fired

