"""Peak memory of `synthesize` against the length of the source: it must stay flat (the README says so).

    python benchmarks/synthesize_memory.py [--minutes 1 10 20 40] [--size base] [--threads 2] [--json OUT]

Each length runs in a fresh process (`python -m voiceclone synthesize` on a bundle of freshly initialized
weights: memory does not depend on the weights), and its peak resident memory is the child's ru_maxrss.
The source is generated speech (a few synthetic utterances with pauses, repeated to the length), written
once per length at 22.05 kHz. The goal: the longest source's peak within 5% of the 1-minute peak.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from rich.console import Console
from rich.table import Table

from voiceclone.synthetic import make_speakers, synth_utterance

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures import make_bundle  # noqa: E402

RATE = 22050


def write_source(path: Path, minutes: float, unit: np.ndarray) -> None:
    """`minutes` of the unit repeated, written block by block (the writer holds no more than one unit)."""
    total = int(minutes * 60 * RATE)
    with sf.SoundFile(str(path), "w", RATE, 1, "PCM_16") as f:
        done = 0
        while done < total:
            block = unit[: total - done]
            f.write(block)
            done += len(block)


def speech_unit(seconds: float = 30.0) -> np.ndarray:
    """About `seconds` of generated speech: utterances of four voices with pauses between them."""
    parts, n = [], 0
    speakers = make_speakers(4, seed=1)
    k = 0
    while n < seconds * RATE:
        y, _ = synth_utterance(speakers[k % 4], 2.5, RATE, seed=k)
        parts += [y.astype(np.float32), np.zeros(int(0.4 * RATE), np.float32)]
        n += len(y) + int(0.4 * RATE)
        k += 1
    return np.concatenate(parts)


def peak_of(bundle: Path, reference: Path, source: Path, out: Path, threads: int) -> dict:
    """One `python -m voiceclone synthesize` in a fresh process: its peak resident MiB and wall seconds. The
    peak is the child's own ru_maxrss, read by the parent through wait4: the command ends with os._exit (its
    fast exit), so nothing after it inside the child would run."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "voiceclone", "synthesize", "--model", str(bundle), "--reference",
           str(reference), "--source", str(source), "--out", str(out)]
    with tempfile.TemporaryFile("w+") as log:
        started = time.perf_counter()
        child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            log.seek(0)
            raise SystemExit(f"synthesize failed (exit {child.returncode}):\n{log.read()[-3000:]}")
    return {"peak_mib": usage.ru_maxrss / 1024, "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 20, 40])
    ap.add_argument("--size", default="base", choices=["tiny", "base"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.manual_seed(0)
    console = Console()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_bundle(tmp / "model.safetensors", args.size)
        unit = speech_unit()
        sf.write(tmp / "ref.wav", unit[: 6 * RATE], RATE)
        for minutes in args.minutes:
            src = tmp / f"source-{minutes:g}min.wav"
            write_source(src, minutes, unit)
            m = peak_of(tmp / "model.safetensors", tmp / "ref.wav", src, tmp / "out.wav", args.threads)
            rows.append({"minutes": minutes, **m})
            src.unlink()
            console.print(f"{minutes:g} min: peak {m['peak_mib']:.0f} MiB ({m['seconds']:.0f} s)")
    first = rows[0]["peak_mib"]
    table = Table(title=f"synthesize peak memory, {args.size} models, {args.threads} threads "
                        f"({platform.processor() or platform.machine()}, torch {torch.__version__})")
    for col in ("source", "peak RSS", "vs first", "wall"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(f"{r['minutes']:g} min", f"{r['peak_mib']:.0f} MiB", f"{100 * (r['peak_mib'] / first - 1):+.1f}%",
                      f"{r['seconds']:.0f} s")
    console.print(table)
    worst = max(r["peak_mib"] for r in rows) / first - 1
    console.print(f"goal: every peak within 5% of the first: {'met' if worst <= 0.05 else 'MISSED'} "
                  f"(worst {100 * worst:+.1f}%)")
    if args.json:
        args.json.write_text(json.dumps({"size": args.size, "threads": args.threads, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
