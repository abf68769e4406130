"""Slowdown of synthesize and the vocoder when one busy process shares the cores, per thread policy.

    python benchmarks/contention.py [--rounds 3] [--neighbour spin|matmul] [--policies auto 1 2] [--json OUT]

The script starts the busy neighbour itself (`spin`: a pure-Python loop; `matmul`: a one-thread torch matmul
loop, which also competes for caches and memory bandwidth) and stops it when done. Every measurement runs in
a fresh process, so the thread policy sees the machine as a `voiceclone` command would: `auto` is
voiceclone/threads.py as the commands use it (synthesize: one single-threaded worker per allowed core, each
on its own piece of the source; the vocoder alone: intra-op threads = the cores the neighbours leave free),
a number is a fixed intra-op thread count with one worker.
Quiet and busy runs alternate within each round; the table gives medians over the rounds of per-process
medians, and the slowdown busy / quiet per policy (the goal: at most 1.6x with auto).

Measured per process, after a warm-up: `synthesize_file` on a 30 s source (44.1 kHz flac, decode to wav
written, the base model; the in-process part of `voiceclone synthesize`) and the base vocoder alone at
batch 1 x 10 s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures import cpu_name, make_bundle, make_speech, median  # noqa: E402

NEIGHBOURS = {
    "spin": "while True: pass",
    "matmul": "import torch\ntorch.set_num_threads(1)\na = torch.randn(384, 384)\nwhile True: a = torch.tanh(a @ a)",
}
VOCODER_SECONDS = 10.0


def measure(policy: str, bundle: Path, source: Path, reference: Path, repeats: int) -> dict:
    """One process's figures (runs in the child)."""
    from voiceclone.threads import CpuSample, apply_threads, render_workers

    since = CpuSample.now()
    import numpy as np
    import torch

    from voiceclone.inference.bundle import load_model
    from voiceclone.inference.synthesize import embed_references, synthesize_file

    threads = apply_threads(0 if policy == "auto" else int(policy), since)
    workers = render_workers() if policy == "auto" else 1
    model = load_model(bundle)
    ref = embed_references(model, [reference])
    out = bundle.parent / f"out-{os.getpid()}.wav"
    synthesize_file(model, ref, source, out, workers=workers)  # warm-up
    synth = [synthesize_file(model, ref, source, out, workers=workers)["x_real_time"] for _ in range(repeats)]
    out.unlink(missing_ok=True)

    cfg = model.recipe.audio
    frames = int(VOCODER_SECONDS * cfg.sample_rate) // cfg.hop_length
    g = torch.Generator().manual_seed(0)
    mel = torch.randn(1, cfg.n_mels, frames, generator=g) - 5.0
    f0 = 150.0 * 2 ** torch.sin(torch.linspace(0, 20, frames))[None]
    times = []
    with torch.inference_mode():
        for k in range(2 + 2 * repeats):
            t0 = time.perf_counter()
            model.vocoder(mel, f0)
            if k >= 2:
                times.append(time.perf_counter() - t0)
    seconds = frames * cfg.hop_length / cfg.sample_rate
    return {"policy": policy, "threads": threads, "synth_x": float(np.median(synth)),
            "vocoder_x": seconds / float(np.median(times))}


def run_child(policy: str, fixtures: Path, repeats: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    cmd = [sys.executable, __file__, "--child", policy, "--fixtures", str(fixtures), "--repeats", str(repeats)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def start_neighbour(kind: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", NEIGHBOURS[kind]], env={**os.environ, "OMP_NUM_THREADS": "1"})
    time.sleep(1.0)  # let it start (and import torch) before anything is measured beside it
    return proc


def stop_neighbour(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per process")
    ap.add_argument("--neighbour", choices=sorted(NEIGHBOURS), default="spin")
    ap.add_argument("--policies", nargs="+", default=["auto", "1", "2"])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--fixtures", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        f = args.fixtures
        print(json.dumps(measure(args.child, f / "base.safetensors", f / "source.flac", f / "reference.wav",
                                 args.repeats)))
        return

    console = Console(width=150)
    results: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        fixtures = Path(tmp)
        make_bundle(fixtures / "base.safetensors", "base")
        make_speech(fixtures, 30.0)
        for r in range(args.rounds):
            for condition in ("quiet", "busy") if r % 2 == 0 else ("busy", "quiet"):
                neighbour = start_neighbour(args.neighbour) if condition == "busy" else None
                try:
                    for policy in args.policies:
                        console.print(f"round {r + 1}/{args.rounds}, {condition}, threads {policy} ...", style="dim")
                        results.setdefault((policy, condition), []).append(run_child(policy, fixtures, args.repeats))
                finally:
                    if neighbour is not None:
                        stop_neighbour(neighbour)

    table = Table(title=f"one busy neighbour ({args.neighbour}) on {cpu_name()}, {os.cpu_count()} cores: "
                        f"x real time, medians of {args.rounds} rounds", title_justify="left")
    for col in ("threads", "chosen quiet/busy", "synthesize quiet", "busy", "slowdown",
                "vocoder quiet", "busy", "slowdown"):
        table.add_column(col, justify="right")
    rows = []
    for policy in args.policies:
        q, b = results[policy, "quiet"], results[policy, "busy"]
        row = {"policy": policy, "threads_quiet": sorted({x["threads"] for x in q}),
               "threads_busy": sorted({x["threads"] for x in b})}
        for key in ("synth_x", "vocoder_x"):
            row[f"{key}_quiet"] = median([x[key] for x in q])
            row[f"{key}_busy"] = median([x[key] for x in b])
            row[f"{key}_slowdown"] = row[f"{key}_quiet"] / row[f"{key}_busy"]
        rows.append(row)
        table.add_row(policy, f"{'/'.join(map(str, row['threads_quiet']))} / {'/'.join(map(str, row['threads_busy']))}",
                      f"{row['synth_x_quiet']:.1f}x", f"{row['synth_x_busy']:.1f}x", f"{row['synth_x_slowdown']:.2f}x",
                      f"{row['vocoder_x_quiet']:.0f}x", f"{row['vocoder_x_busy']:.0f}x",
                      f"{row['vocoder_x_slowdown']:.2f}x")
    console.print(table)
    console.print(f"load average at the end: {os.getloadavg()[0]:.2f} (other work on the machine distorts every figure)")
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_name(), "neighbour": args.neighbour, "rows": rows,
                                         "raw": {f"{p}/{c}": v for (p, c), v in results.items()}}, indent=1))


if __name__ == "__main__":
    main()
