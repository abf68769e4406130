"""Training speed of the acoustic model: iterations/s, frames/s and data-loader headroom.

    python benchmarks/train_speed.py [--steps 20] [--json OUT]

Headroom = batches/s the loader delivers alone / iterations/s of full steps: above 1 the loader keeps up,
and the margin says by how much. Runs tiny and base on CPU, and base with bf16 on CUDA when there is a GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from voiceclone.config import load_recipe
from voiceclone.data.prepare import prepare
from voiceclone.data.store import Dataset
from voiceclone.synthetic import write_corpus
from voiceclone.stages.tasks import AcousticTask
from voiceclone.train.distributed import Distributed
from voiceclone.train.loop import Trainer


def measure(ds: Dataset, size: str, device: torch.device, steps: int, workers: int, out: Path) -> dict:
    recipe = load_recipe("demo", [f"acoustic.model.size={size}", f"acoustic.train.num_workers={workers}"])
    task = AcousticTask(recipe, ds, device)
    trainer = Trainer(task, out / size, epochs=100, early_stop=False, dist_info=Distributed(),
                      console=Console(quiet=True), resume_command="")
    cfg = recipe.acoustic.train

    def batches():
        epoch = 1
        while True:
            trainer.sampler.set_epoch(epoch)
            yield from trainer.loader
            epoch += 1

    it = batches()
    t0 = time.perf_counter()
    for _ in range(steps):
        next(it)
    loader_rate = steps / (time.perf_counter() - t0)

    it = batches()
    for _ in range(3):  # warm-up: allocator, autotuning
        trainer.progress.step += 1
        trainer._train_step(trainer._to_device(next(it)))
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.progress.step += 1
        trainer._set_lr()
        trainer._train_step(trainer._to_device(next(it)))
    if device.type == "cuda":
        torch.cuda.synchronize()
    step_rate = steps / (time.perf_counter() - t0)
    params = sum(p.numel() for p in task.model.parameters())
    return {"size": size, "device": _device_name(device), "params": params, "batch": cfg.batch_size,
            "segment_frames": cfg.segment_frames, "iterations_per_s": step_rate,
            "frames_per_s": step_rate * cfg.batch_size * cfg.segment_frames,
            "loader_batches_per_s": loader_rate, "headroom": loader_rate / step_rate, "workers": workers,
            "bf16": device.type == "cuda"}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        recipe = load_recipe("demo")
        write_corpus(tmp / "corpus", n_speakers=12, utterances=8, seconds=3.0, sample_rate=16000)
        prepare([tmp / "corpus"], tmp / "ds", recipe, console=Console(quiet=True))
        ds = Dataset.open(tmp / "ds")
        rows = [measure(ds, "tiny", torch.device("cpu"), args.steps, 0, tmp),
                measure(ds, "base", torch.device("cpu"), max(5, args.steps // 4), 0, tmp)]
        if torch.cuda.is_available():
            rows.append(measure(ds, "base", torch.device("cuda"), args.steps * 5, 4, tmp))
    table = Table(title="acoustic training speed")
    for col in ("size", "device", "params", "batch x frames", "it/s", "frames/s", "loader batches/s", "headroom"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["size"], r["device"], f"{r['params'] / 1e6:.2f}M", f"{r['batch']}x{r['segment_frames']}",
                      f"{r['iterations_per_s']:.2f}", f"{r['frames_per_s']:.0f}", f"{r['loader_batches_per_s']:.1f}",
                      f"{r['headroom']:.1f}x")
    Console().print(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
