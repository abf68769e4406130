"""Streaming conversion: latency, compute per block, real-time factor and agreement with offline conversion.

    python benchmarks/realtime.py --tiny runs/demo/run --base runs/demo-base/run [--block-ms 80 --block-ms 40]
                                  [--reference a.flac --source b.flac ...] [--threads 1] [--repeats 3] [--json OUT]

For each size: the source is converted offline (`synthesize`'s convert) and streamed block by block
(inference/stream.py, the core of `synthesize --stream` and `voiceclone live`), the stream `--repeats` times;
the table gives medians. Compute per block is given twice: wall clock, and the CPU time of the one thread the
stream runs on, which on a machine shared with other jobs is the compute a block needs without waiting for a
core. SECS is the cosine similarity of the streamed and the offline output's speaker vectors, by Resemblyzer
(an independent verifier, when installed) and by the model's own speaker encoder; mel L1 the mean absolute
difference of their log-mels (natural log). A size without a trained run is timed with random weights at the vctk recipe's 22.05 kHz, and has
no agreement figures (an untrained model's outputs say nothing).

Goals (issue 14): base latency <= 150 ms with compute per block under 50% of the block; SECS >= 0.95 (within
0.05 of identical).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch

from voiceclone import audio as A
from voiceclone.inference import BLOCK_MS, LOOKAHEAD_MS
from voiceclone.inference.bundle import Model, load_model
from voiceclone.inference.stream import compare, stream_file
from voiceclone.inference.synthesize import Reference, convert, embed_references

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures import random_model  # noqa: E402

DEMO = Path(__file__).resolve().parent.parent / "data" / "demo"


def source_audio(model: Model, paths: list[Path]) -> np.ndarray:
    cfg = model.recipe.audio
    return np.concatenate([A.clean(A.load_audio(p, cfg.sample_rate), model.recipe.prepare, p) for p in paths])


def resemblyzer_judge():
    """A function (wav, rate) -> unit speaker vector by Resemblyzer, or None when it is not installed."""
    try:
        from resemblyzer import VoiceEncoder, preprocess_wav
    except ImportError:
        return None
    encoder = VoiceEncoder("cpu", verbose=False)
    return lambda wav, rate: encoder.embed_utterance(preprocess_wav(wav, source_sr=rate))


def measure(label: str, model: Model, ref: Reference, y: np.ndarray, block_ms: float, lookahead_ms: float,
            repeats: int, trained: bool, judge=None) -> dict:
    stream_file(model, ref, y[: model.recipe.audio.sample_rate], block_ms=block_ms)  # warm-up
    walls, cpus, out, report = [], [], None, None
    for _ in range(repeats):
        out, report = stream_file(model, ref, y, block_ms=block_ms, lookahead_ms=lookahead_ms)
        walls.append(1000 * float(np.median(report.block_seconds)))
        cpus.append(1000 * float(np.median(report.block_cpu_seconds)))
    row = {"size": label, "sample_rate": model.recipe.audio.sample_rate, "block_ms": report.block_ms,
           "lookahead_ms": report.lookahead_ms, "latency_ms": report.latency_ms, "blocks": len(report.block_seconds),
           "compute_ms": float(np.median(walls)), "cpu_ms": float(np.median(cpus)),
           "p90_ms": 1000 * float(np.percentile(report.block_seconds, 90)), "seconds": len(y) / model.recipe.audio.sample_rate}
    row["real_time_factor"] = row["compute_ms"] / row["block_ms"]
    row["cpu_real_time_factor"] = row["cpu_ms"] / row["block_ms"]
    if trained:
        offline = np.concatenate(list(convert(model, y, ref)[0]))
        row.update(compare(model, out, offline))
        if judge is not None:
            rate = model.recipe.audio.sample_rate
            row["secs_resemblyzer"] = float(np.dot(judge(out, rate), judge(offline, rate)))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", type=Path, help="a trained tiny run folder or bundle (else random weights)")
    parser.add_argument("--base", type=Path, help="a trained base run folder or bundle (else random weights)")
    parser.add_argument("--reference", type=Path, action="append", help="default: two clips of data/demo's 'anika'")
    parser.add_argument("--source", type=Path, action="append", help="default: four clips of data/demo's 'alex'")
    parser.add_argument("--block-ms", type=float, action="append", help="default: 80")
    parser.add_argument("--lookahead-ms", type=float, default=LOOKAHEAD_MS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--also-random", action="store_true",
                        help="also time random-weight models of both sizes at the vctk recipe's 22.05 kHz")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    references = args.reference or sorted((DEMO / "anika").glob("*.flac"))[:2]
    sources = args.source or sorted((DEMO / "alex").glob("*.flac"))[:4]
    judge = resemblyzer_judge()
    rows = []
    sizes = [(size, getattr(args, size)) for size in ("tiny", "base")]
    if args.also_random:
        sizes += [(size, None) for size, run in sizes if run is not None]
    for size, run in sizes:
        model = load_model(run) if run else random_model(size)
        ref = embed_references(model, references)
        y = source_audio(model, sources)
        label = size if run else f"{size} (random weights, {model.recipe.audio.sample_rate} Hz)"
        for block in args.block_ms or [BLOCK_MS]:
            row = measure(label, model, ref, y, block, args.lookahead_ms, args.repeats, trained=run is not None,
                          judge=judge)
            rows.append(row)
            print(json.dumps(row), flush=True)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine()) if Path("/proc/cpuinfo").exists() \
        else platform.processor() or platform.machine()
    print(f"\n{cpu}, torch {torch.__version__}, {args.threads} thread(s); medians over {args.repeats} runs\n")
    print("| size | block ms | algorithmic latency | compute per block (wall / CPU) | real-time factor (wall / CPU) "
          "| SECS vs offline output (Resemblyzer / own encoder) | mel L1 vs offline |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        secs = (f"{r['secs_resemblyzer']:.4f}" if "secs_resemblyzer" in r else "n/a") + " / " + \
            (f"{r['secs']:.4f}" if "secs" in r else "n/a")
        l1 = f"{r['mel_l1']:.3f}" if "mel_l1" in r else "n/a"
        print(f"| {r['size']} | {r['block_ms']:.0f} | {r['latency_ms']:.0f} ms (block {r['block_ms']:.0f} + lookahead "
              f"{r['lookahead_ms']:.0f}) | {r['compute_ms']:.1f} / {r['cpu_ms']:.1f} ms | {r['real_time_factor']:.2f} / "
              f"{r['cpu_real_time_factor']:.2f} | {secs} | {l1} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
