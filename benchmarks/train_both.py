"""`train --stage all` on a CPU: both models one after the other, against side by side (train/beside.py).

    python benchmarks/train_both.py --data runs/demo/dataset [--threads 2] [--acoustic-epochs 6]
                                    [--vocoder-epochs 20] [--rounds 2] [--out FILE.md]

Each round trains the same epochs both ways, in alternating order so a machine that slows down mid-run
weighs on both; the table gives every wall time, the medians and their ratio. Without --data a small
synthetic corpus is made and prepared first (its epochs are shorter than the demo's).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from voiceclone.config import load_recipe
from voiceclone.data.prepare import prepare
from voiceclone.synthetic import write_corpus
from voiceclone.train.command import train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures import cpu_name  # noqa: E402

QUIET = Console(quiet=True)


def one_after_the_other(data: Path, run: Path, threads: int, epochs: dict[str, int]) -> float:
    """The old way: the acoustic model on all the threads, then the vocoder on all of them."""
    started = time.perf_counter()
    for stage in ("acoustic", "vocoder"):
        torch.set_num_threads(threads)
        train(data, run, stage=stage, overrides=[f"{stage}.train.epochs={epochs[stage]}"], early_stop=False,
              console=QUIET, threads=threads)
    return time.perf_counter() - started


def side_by_side(data: Path, run: Path, threads: int, epochs: dict[str, int]) -> float:
    torch.set_num_threads(threads)
    started = time.perf_counter()
    train(data, run, stage="all", overrides=[f"{s}.train.epochs={n}" for s, n in epochs.items()],
          early_stop=False, console=QUIET, threads=threads)
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="a prepared dataset (default: a small synthetic one)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--acoustic-epochs", type=int, default=6)
    ap.add_argument("--vocoder-epochs", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, help="also write the table here (Markdown)")
    args = ap.parse_args()
    epochs = {"acoustic": args.acoustic_epochs, "vocoder": args.vocoder_epochs}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = args.data
        if data is None:
            write_corpus(tmp / "corpus", n_speakers=8, utterances=6, seconds=2.0, sample_rate=16000, seed=1)
            data = tmp / "ds"
            prepare([tmp / "corpus"], data, load_recipe("demo"), workers=1, unseen_speakers=["spk000", "spk001"],
                    console=QUIET)
        times: dict[str, list[float]] = {"one after the other": [], "side by side": []}
        for r in range(args.rounds):
            ways = [("one after the other", one_after_the_other), ("side by side", side_by_side)]
            for name, way in ways if r % 2 == 0 else ways[::-1]:
                times[name].append(way(data, tmp / f"run-{r}-{len(times[name])}-{name[:4]}", args.threads, epochs))
                print(f"round {r + 1}: {name} {times[name][-1]:.1f} s", flush=True)
    table = Table(title=f"train --stage all, {args.acoustic_epochs} acoustic + {args.vocoder_epochs} vocoder epochs, "
                        f"{args.threads} threads, {cpu_name()}")
    for col in ("way", "wall seconds per round", "median"):
        table.add_column(col)
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, t in times.items():
        table.add_row(name, ", ".join(f"{x:.1f}" for x in t), f"{medians[name]:.1f}")
    ratio = medians["one after the other"] / medians["side by side"]
    table.caption = f"side by side is {ratio:.2f}x as fast"
    Console().print(table)
    if args.out:
        lines = [f"{table.title}", "", "| way | wall seconds per round | median |", "|---|---|---|"]
        lines += [f"| {n} | {', '.join(f'{x:.1f}' for x in t)} | {medians[n]:.1f} |" for n, t in times.items()]
        args.out.write_text("\n".join(lines) + f"\n\nside by side is {ratio:.2f}x as fast\n")


if __name__ == "__main__":
    main()
