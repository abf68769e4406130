"""The F0 tracker against Praat: speed per core and agreement, on the demo corpus's speech.

    python benchmarks/f0_speed.py [--files 120] [--json OUT]

Both trackers run on the same cleaned utterances (data/demo, 16 kHz TTS speech of 41 voices; every file
when --files 0), one thread. Speed: seconds of audio per CPU second, the figure per core (first call
excluded: it includes one-time costs). Agreement, on frames both call voiced: the median absolute
difference in cents, and the share of octave errors (more than 600 cents apart, half an octave); and the
share of frames where they disagree on voicing. Praat (parselmouth) is the reference: `f0_ac` re-implements
its autocorrelation method.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures import cpu_name  # noqa: E402

from voiceclone import audio as A  # noqa: E402
from voiceclone.config import load_recipe  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=120, help="files of data/demo to use, spread over the voices (0: all)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    recipe = load_recipe("demo")
    cfg = recipe.audio
    files = sorted(DEMO.rglob("*.flac"))
    if args.files:
        files = files[:: max(1, len(files) // args.files)][: args.files]
    clips = [A.clean(A.load_audio(f, cfg.sample_rate), recipe.prepare, f) for f in files]
    seconds = sum(len(y) for y in clips) / cfg.sample_rate
    t0 = time.process_time()
    A.f0_ac(clips[0], cfg)
    first_ac = time.process_time() - t0
    t0 = time.process_time()
    A.f0_praat(clips[0], cfg)
    first_praat = time.process_time() - t0
    cpu = {"f0_ac": 0.0, "f0_praat": 0.0}
    diffs, vuv, frames = [], 0, 0
    for y in clips:
        t0 = time.process_time()
        ours = A.f0_ac(y, cfg)
        t1 = time.process_time()
        praat = A.f0_praat(y, cfg)
        t2 = time.process_time()
        cpu["f0_ac"] += t1 - t0
        cpu["f0_praat"] += t2 - t1
        both = (ours > 0) & (praat > 0)
        diffs.append(1200 * np.log2(ours[both] / praat[both]))
        vuv += int(np.sum((ours > 0) != (praat > 0)))
        frames += len(ours)
    d = np.abs(np.concatenate(diffs))
    row = {"files": len(clips), "seconds": seconds, "x_per_core_ac": seconds / cpu["f0_ac"],
           "x_per_core_praat": seconds / cpu["f0_praat"], "first_call_ac_s": first_ac,
           "first_call_praat_s": first_praat, "median_cents": float(np.median(d)),
           "octave_errors": float(np.mean(d > 600)), "gross_errors_200c": float(np.mean(d > 200)),
           "vuv_disagreement": vuv / frames}
    table = Table(title=f"F0 on {len(clips)} demo utterances ({seconds / 60:.1f} min), {cpu_name()}, one thread",
                  title_justify="left")
    for col in ("tracker", "x real time per core", "first call s", "median |cents| vs Praat", "octave errors",
                ">200 cents", "V/UV disagreement"):
        table.add_column(col, justify="right")
    table.add_row("f0_ac (ours)", f"{row['x_per_core_ac']:.0f}x", f"{first_ac:.3f}", f"{row['median_cents']:.2f}",
                  f"{100 * row['octave_errors']:.2f}%", f"{100 * row['gross_errors_200c']:.2f}%",
                  f"{100 * row['vuv_disagreement']:.2f}%")
    table.add_row("f0_praat (Praat)", f"{row['x_per_core_praat']:.0f}x", f"{first_praat:.3f}", "-", "-", "-", "-")
    Console(width=150).print(table)
    if args.json:
        args.json.write_text(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
