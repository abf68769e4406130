"""Early stopping against training to the end: does the stop keep the best loss while saving epochs?

    python benchmarks/early_stop.py [--epochs N] [--speakers N] [--derive] [--set KEY=VALUE ...]

Rows: the demo corpus, prepared as the main job prepares it (acoustic and vocoder stages) and, with `--datasets demo,libri --libri-dir DIR`, the
LibriSpeech test-other readers of DIR (a folder of reader folders; copied to a temp folder and prepared there;
acoustic stage), each
trained with the demo recipe twice: early stopping on, and off (`--no-early-stop`). Both runs share seeds and
reduce-on-plateau drops, so on CPU they are the same run up to the stop.

- best loss: the lowest monitored validation loss (unseen speakers; `best.pt`) the run reached.
- ratio: early-stopped best / no-stop best (goal: <= 1.01).
- epochs used / planned: where the early-stopped run ended (goal: <= 0.70 of planned, i.e. 30% saved).

--epochs plans fewer epochs than the recipe's (a reduced run, for a slow machine), --speakers keeps the first
N demo voices, --set overrides recipe values for every run (e.g. convergence.patience=4 for short runs).
--derive trains only the no-stop run and replays the detector on its history to find where early stopping
would have stopped and the best it would have kept; exact on CPU (identical runs up to the stop), half the
time. Both tables say which mode produced them.
"""

from __future__ import annotations

import argparse
import sys
import math
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console

from voiceclone.config import load_recipe
from voiceclone.evaluation.convergence import assess, should_stop
from voiceclone.run import read_history
from voiceclone.data.prepare import prepare
from voiceclone.train.command import train

ROOT = Path(__file__).resolve().parent.parent
# the demo is prepared as recipes/demo/run.sh prepares it: the 10 test-other readers held out (the monitor),
# the training readers' recordings cut into 6 s pieces, all of them kept for training
DEMO_UNSEEN = tuple((ROOT / "recipes" / "demo" / "unseen.txt").read_text().strip().split(","))
DEMO_PREPARE = ["prepare.max_seconds=6", "prepare.val_per_speaker=0", "acoustic.loss.consistency=0.5",
                "acoustic.loss.cycle=0.5"]


def copy_subset(src: Path, dst: Path, speakers: int | None) -> Path:
    """Speaker folders of src (the first N, sorted) copied to dst: the source is only read, never written."""
    folders = sorted(p for p in src.iterdir() if p.is_dir())[: speakers or None]
    for folder in folders:
        shutil.copytree(folder, dst / folder.name)
    return dst


def derived_stop(history: list[dict], cfg) -> tuple[float, int]:
    """(best kept, epochs used) of an early-stopped run, replayed from the no-stop run's history."""
    for k in range(1, len(history) + 1):
        a = assess(history[:k], cfg)
        if should_stop(a):
            return (a.best_value if a.best_value is not None else math.nan), k
    a = assess(history, cfg)
    return (a.best_value if a.best_value is not None else math.nan), len(history)


def run_pair(ds: Path, work: Path, stage: str, epochs: int | None, overrides: list[str], derive: bool) -> dict:
    quiet = Console(quiet=True)
    t0 = time.time()
    nostop = train(ds, work / f"{stage}-nostop", stage=stage, overrides=overrides, epochs=epochs,
                   early_stop=False, console=quiet)[stage]
    planned = nostop["epochs"]
    cfg = load_recipe("demo", overrides).convergence
    if derive:
        history = read_history(work / f"{stage}-nostop" / stage / "history.jsonl")
        es_best, es_epochs = derived_stop(history, cfg)
    else:
        es = train(ds, work / f"{stage}-stop", stage=stage, overrides=overrides, epochs=epochs, early_stop=True,
                   console=quiet)[stage]
        es_best, es_epochs = es["best_value"], es["epochs"]
    # what any stop that saves 30% would have kept: the no-stop run's best within its first 70% of epochs
    rows = read_history(work / f"{stage}-nostop" / stage / "history.jsonl")
    key = "unseen_loss" if any(r.get("unseen_loss") is not None for r in rows) else "val_loss"
    early = [r[key] for r in rows[: int(0.7 * planned)] if r.get(key) is not None and math.isfinite(r[key])]
    return {"stage": stage, "es_best": es_best, "ns_best": nostop["best_value"], "used": es_epochs,
            "planned": planned, "seconds": time.time() - t0, "best_at_70": min(early) if early else math.nan}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=None, help="planned epochs per stage (default: the recipe's)")
    ap.add_argument("--speakers", type=int, default=None, help="keep the first N demo voices (default: all)")
    ap.add_argument("--libri-speakers", type=int, default=10, help="LibriSpeech test-other readers (max 10)")
    ap.add_argument("--datasets", default="demo", help="comma list of demo, libri")
    ap.add_argument("--libri-dir", type=Path, default=None,
                    help="with libri: a folder of LibriSpeech reader folders (e.g. test-other)")
    ap.add_argument("--stages", default="acoustic,vocoder", help="demo stages; libri trains the acoustic stage")
    ap.add_argument("--derive", action="store_true", help="replay early stopping on the no-stop run's history")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override, repeatable")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    quiet = Console(quiet=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="early-stop-") as tmp:
        tmp = Path(tmp)
        for name in args.datasets.split(","):
            if name == "demo":
                src = copy_subset(ROOT / "data" / "demo", tmp / "demo-src", args.speakers)
                stages = args.stages.split(",")
            elif name == "libri":
                if args.libri_dir is None or not args.libri_dir.is_dir():
                    sys.exit("--datasets libri needs --libri-dir DIR, a folder of LibriSpeech reader folders")
                src = copy_subset(args.libri_dir, tmp / "libri-src", args.libri_speakers)
                stages = ["acoustic"]
            else:
                raise SystemExit(f"--datasets: unknown {name!r}")
            ds = tmp / f"{name}-ds"
            if name == "demo":
                prepare([src], ds, load_recipe("demo", DEMO_PREPARE), workers=args.threads, console=quiet,
                        unseen_speakers=[s for s in DEMO_UNSEEN if (src / s).is_dir()] or None)
            else:
                prepare([src], ds, load_recipe("demo"), workers=args.threads, console=quiet)
            for stage in stages:
                r = run_pair(ds, tmp / f"{name}-runs", stage, args.epochs, args.overrides, args.derive)
                rows.append({"dataset": name, **r})
                print(f"# {name} {stage}: {r['seconds']:.0f} s; {_row(rows[-1])}", flush=True)
    mode = "derived from the no-stop run's history" if args.derive else "two trainings per row"
    print(f"\nearly_stop.py on {platform.processor() or platform.machine()}, {args.threads} threads, torch "
          f"{torch.__version__}; planned epochs: {args.epochs or 'recipe'}; speakers: {args.speakers or 'all'}; "
          f"overrides: {' '.join(args.overrides) or 'none'}; early-stopped column: {mode}\n")
    print("| dataset | stage | best loss, early-stopped | best loss, no stop | ratio | epochs used / planned | goal |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(_row(r))


def _row(r: dict) -> str:
    """One markdown row; the goal column says where a goal is missed."""
    ratio = r["es_best"] / r["ns_best"]
    saved = 1 - r["used"] / r["planned"]
    notes = ["within 1%" if ratio <= 1.01 else f"MISSED: {100 * (ratio - 1):.1f}% worse"]
    notes.append(f"{100 * saved:.0f}% saved" + ("" if saved >= 0.30 else
                 f" (under 30%: a stop at 70% of the plan keeps at best {r['best_at_70']:.4f}, "
                 f"{100 * (r['best_at_70'] / r['ns_best'] - 1):+.1f}%)"))
    return (f"| {r['dataset']} | {r['stage']} | {r['es_best']:.4f} | {r['ns_best']:.4f} | {ratio:.4f} | "
            f"{r['used']} / {r['planned']} | {'; '.join(notes)} |")


if __name__ == "__main__":
    main()
