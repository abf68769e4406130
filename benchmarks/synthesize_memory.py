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
    """One synthesize in a fresh process: (peak resident MiB, seconds)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    code = ("import resource, sys, time; from voiceclone.cli import main; t = time.time(); sys.argv = sys.argv[1:]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
            "print('RESULT', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.time() - t, code)")
    cmd = [sys.executable, "-c", code, "voiceclone", "synthesize", "--model", str(bundle), "--reference",
           str(reference), "--source", str(source), "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT")), None)
    if line is None or line.split()[3] not in ("0", "None"):
        raise SystemExit(f"synthesize failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    _, kib, secs, _ = line.split()
    return {"peak_mib": int(kib) / 1024, "seconds": float(secs)}


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
