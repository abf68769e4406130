"""The run folder: its layout, resume checkpoints and training histories, in one place.

    RUN/<stage>/config.json     the resolved recipe the stage was trained with
    RUN/<stage>/last.pt         resume checkpoint (weights, optimizers, counters, RNG), rewritten every epoch
    RUN/<stage>/best.pt         weights at the best monitored validation loss
    RUN/<stage>/history.jsonl   one JSON row per epoch
    RUN/.train-lock             held (flock) by the one `train` writing the run

with <stage> one of STAGES (docs/architecture.md describes the formats). Checkpoints are written atomically
and read with `torch.load(weights_only=True)` only, never with a fallback. Shared models are not these
files: `export` writes safetensors bundles (inference/bundle.py). `torch` is imported where a checkpoint is
read or written, so reading histories (evaluate's watch mode, the CLI) does not load it.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from voiceclone.config import ConvergenceConfig, read_recipe_json
from voiceclone.errors import UserError, writing
from voiceclone.files import TMP_SUFFIX, flocked, fsync_dir, tmp_beside, write_atomic

STAGES = ("acoustic", "vocoder")  # in pipeline order; other stage folders (none today) sort after them
CONFIG_FILE, LAST_FILE, BEST_FILE, HISTORY_FILE = "config.json", "last.pt", "best.pt", "history.jsonl"
LOCK_FILE = ".train-lock"


def stage_dir(run: Path | str, stage: str) -> Path:
    return Path(run) / stage


def best_path(run: Path | str, stage: str) -> Path:
    return stage_dir(run, stage) / BEST_FILE


def last_path(run: Path | str, stage: str) -> Path:
    return stage_dir(run, stage) / LAST_FILE


def history_path(run: Path | str, stage: str) -> Path:
    return stage_dir(run, stage) / HISTORY_FILE


def has_history(folder: Path | str) -> bool:
    return (Path(folder) / HISTORY_FILE).is_file()


def write_stage_config(run: Path | str, stage: str, recipe_json: str) -> None:
    folder = stage_dir(run, stage)
    path = folder / CONFIG_FILE
    with writing(path):
        folder.mkdir(parents=True, exist_ok=True)
        # whole or not at all: `evaluate --run` may read it while this run trains, and a full disk must not
        # leave it empty
        write_atomic(path, recipe_json.encode(), tmp=tmp_beside(path))


@contextlib.contextmanager
def locked(run: Path | str) -> Iterator[None]:
    """One `train` at a time per run folder: two would interleave their histories and write `last` and
    `best` in turn."""
    run = Path(run)
    with writing(run):
        run.mkdir(parents=True, exist_ok=True)
        f = open(run / LOCK_FILE, "a")
    with f, flocked(f, f"{run}: another `voiceclone train` is using this run folder; wait for it to end "
                       "or choose another --run"):
        yield


def remove_stale_temporaries(run: Path | str, stage: str) -> None:
    """Checkpoints half-written by a killed run (each can be checkpoint-sized). Only under `locked`: another
    process's temporary file is never stale."""
    for stale in stage_dir(run, stage).glob(f".*.pt.*{TMP_SUFFIX}"):
        stale.unlink(missing_ok=True)


def dataset_identity(dataset) -> dict[str, Any]:
    """What a checkpoint records of the data it was trained on: resume refuses other speakers."""
    by_split: dict[str, list[str]] = {"train": [], "unseen": []}
    for name, info in sorted(dataset.speakers.items()):
        by_split.setdefault(info.get("split", "train"), []).append(name)
    return {"path": str(dataset.path), "fingerprint": dataset.fingerprint, "speakers": by_split}


def speaker_changes(saved: Mapping[str, Any], dataset) -> list[str]:
    """How the dataset's train and unseen speakers differ from those a checkpoint recorded ([] = same)."""
    now = dataset_identity(dataset)
    diffs = []
    for split in ("train", "unseen"):
        old, new = set(saved["speakers"].get(split, [])), set(now["speakers"].get(split, []))
        if old != new:
            moved = [f"+{s}" for s in sorted(new - old)[:3]] + [f"-{s}" for s in sorted(old - new)[:3]]
            diffs.append(f"{split} speakers {' '.join(moved)}")
    return diffs


def stage_convergence(folder: Path | str) -> ConvergenceConfig:
    """The convergence settings a stage folder was trained with (its config.json), else the defaults."""
    path = Path(folder) / CONFIG_FILE
    return read_recipe_json(path).convergence if path.is_file() else ConvergenceConfig()


# ---------------------------------------------------------------------------------------------------
# Checkpoints.


def load_checkpoint(path: Path | str, map_location: Any = "cpu", keys: Sequence[str] = ()) -> dict[str, Any]:
    """A training checkpoint (ours), with weights_only=True and no fallback; `keys`: the entries its reader
    needs (a foreign file can hold any plain value: a tensor, a list, another program's dict)."""
    import torch

    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: a folder, not a checkpoint file")
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: empty file (a checkpoint cut short); not a voiceclone checkpoint")
    try:
        with warnings.catch_warnings():  # torch's notes on a foreign pickle would precede the one-line refusal
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # refuse, never fall back
        text = str(e)
        if "PytorchStreamReader" in text:  # torch's zip reader: the archive ends early or is damaged inside
            raise UserError(f"{path}: damaged or cut short (an incomplete checkpoint archive)") from None
        found = re.search(r"GLOBAL (\S+)", text)
        if found:  # the restricted loader refused a Python object: say which
            raise UserError(f"{path}: refused: it holds {found.group(1)}, not only tensors and plain values, and "
                            "voiceclone never unpickles objects (not a voiceclone checkpoint)") from None
        if isinstance(e, KeyError) or any(k in text for k in ("Weights only load failed", "invalid load key")):
            raise UserError(f"{path}: not a voiceclone checkpoint (unreadable data, not a torch.save file)") from None
        first = next((line.strip() for line in text.splitlines() if line.strip()), type(e).__name__)
        raise UserError(f"{path}: not a voiceclone checkpoint ({first[:200]})") from None  # foreign
    if not isinstance(state, dict):
        raise UserError(f"{path}: not a voiceclone checkpoint (it holds a {type(state).__name__})")
    missing = [k for k in keys if k not in state]
    if missing:
        raise UserError(f"{path}: not a voiceclone checkpoint (missing {', '.join(missing)})")
    return state


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """Write to a temp file in the same folder, fsync, then rename: a crash leaves the old file or the new."""
    import torch

    path = Path(path)
    with writing(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
    # serialized in memory first: torch's zip writer reports a full disk as "unexpected pos", without errno
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with writing(path):
        write_atomic(path, buffer.getbuffer())
    fsync_dir(path.parent)  # make the rename itself durable


def all_finite(module) -> bool:
    import torch

    return all(torch.isfinite(p).all() for p in module.parameters())


# ---------------------------------------------------------------------------------------------------
# Histories.


NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def append_history(path: Path | str, row: Mapping[str, Any]) -> None:
    """Append one row, durably. JSON has no NaN: a non-finite value is written as the string "nan", "inf" or
    "-inf" (strict JSON that any tool reads), and read_history turns it back into the float; null keeps
    meaning "not measured" (e.g. a run with no unseen split)."""
    with writing(path), open(path, "ab") as f:
        end = f.tell()
        if end:  # never append to a row cut short by a kill: drop the fragment first
            with open(path, "rb") as r:
                r.seek(end - 1)
                if r.read(1) != b"\n":
                    r.seek(0)
                    f.truncate(r.read().rfind(b"\n") + 1)
        f.write(_history_line(row).encode())
        f.flush()
        os.fsync(f.fileno())


def _history_line(row: Mapping[str, Any]) -> str:
    encoded = {k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
    return json.dumps(encoded) + "\n"


def write_history(path: Path | str, rows: list[Mapping[str, Any]]) -> None:
    """Replace a history with `rows` atomically (temp file, fsync, rename): how resume repairs one (a torn
    last line, rows of epochs redone after a kill)."""
    path = Path(path)
    with writing(path):
        write_atomic(path, "".join(_history_line(r) for r in rows).encode(), tmp=tmp_beside(path))


def read_history(path: Path | str) -> list[dict[str, Any]]:
    """Rows of one history.jsonl, in file order; non-finite losses come back as float NaN or infinity.

    A last line that does not parse is dropped: it is a row cut short by a run killed mid-write (or one
    being written right now). A bad line anywhere else is corruption and raises UserError naming the file
    and line. Blank lines are skipped; NaN and Infinity (as Python's json writes them) are read as floats.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: training history not found")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read training history ({e.strerror})") from None
    lines = [(i + 1, line) for i, line in enumerate(raw.split(b"\n")) if line.strip()]
    rows: list[dict[str, Any]] = []
    for k, (lineno, line) in enumerate(lines):
        try:
            row = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            if k == len(lines) - 1:
                break
            raise UserError(f"{path}:{lineno}: not a JSON history row") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{lineno}: a history row must be a JSON object, got {type(row).__name__}")
        huge = [k for k, v in row.items() if isinstance(v, int) and not -2**1023 < v < 2**1023]
        if huge:  # a hand-edited 1 with 400 zeros reads as an int no float holds: an OverflowError in evaluate
            raise UserError(f"{path}:{lineno}: {huge[0]} is a number beyond any loss a run can log")
        rows.append({k: NONFINITE.get(v, v) if isinstance(v, str) else v for k, v in row.items()})
    return rows


def run_histories(run_dir: Path | str) -> dict[str, list[dict[str, Any]]]:
    """{stage: rows} for every stage folder of a run that holds a history.jsonl.

    Stages are ordered acoustic, vocoder, then any others alphabetically. A stage folder itself (one with a
    history.jsonl directly inside) is accepted too and keyed by its name.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: run folder not found")
    if has_history(run_dir):
        return {run_dir.name: read_history(run_dir / HISTORY_FILE)}
    stages = sorted((p.name for p in run_dir.iterdir() if has_history(p)),
                    key=lambda s: (STAGES.index(s) if s in STAGES else len(STAGES), s))
    if not stages:
        raise UserError(f"{run_dir}: no training history found (expected {run_dir / 'acoustic' / HISTORY_FILE} "
                        f"or {run_dir / 'vocoder' / HISTORY_FILE}; train a stage first)")
    return {stage: read_history(history_path(run_dir, stage)) for stage in stages}
