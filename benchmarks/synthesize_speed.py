"""End-to-end synthesis speed: x real time of `synthesize` (front end included) for tiny and base models.

    python benchmarks/synthesize_speed.py [--seconds 20] [--threads 2] [--json OUT]

Speed does not depend on the weights, so freshly initialized models of each size are used. Times one
source file through the whole path (decode, resample, trim, loudness, F0, mel, acoustic model, vocoder,
wav writing), and the parts alone, on CPU with the given threads and on CUDA when there is a GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from rich.console import Console
from rich.table import Table

from voiceclone import audio as A
from voiceclone.inference.synthesize import embed_references, synthesize_file
from voiceclone.synthetic import make_speakers, synth_utterance

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures import random_model  # noqa: E402


def measure(size: str, device: str, source: Path, reference: Path, seconds: float, tmp: Path) -> dict:
    model = random_model(size).to(device)
    cfg = model.recipe.audio
    ref = embed_references(model, [reference])
    synthesize_file(model, ref, source, tmp / "warm.wav")  # warm-up: allocator, kernels
    runs = []
    for _ in range(3):
        r = synthesize_file(model, ref, source, tmp / "out.wav")
        runs.append(r["elapsed"])
    elapsed = min(runs)
    # the parts alone, on the same source
    y = A.clean(A.load_audio(source, cfg.sample_rate), model.recipe.prepare)
    t0 = time.perf_counter()
    f0 = A.f0(y, cfg)
    t_f0 = time.perf_counter() - t0
    x = torch.from_numpy(y).to(device)
    with torch.inference_mode():
        t0 = time.perf_counter()
        mel, energy = A.log_mel(x, cfg, return_energy=True)
        f0_t = torch.from_numpy(f0).to(device)
        out_mel = model.acoustic.convert(mel, f0_t, energy, ref.vector)
        if device == "cuda":
            torch.cuda.synchronize()
        t_ac = time.perf_counter() - t0
        t0 = time.perf_counter()
        model.render(out_mel.unsqueeze(0), f0_t.unsqueeze(0))
        if device == "cuda":
            torch.cuda.synchronize()
        t_voc = time.perf_counter() - t0
    params = sum(p.numel() for p in model.acoustic.parameters()) + sum(p.numel() for p in model.vocoder.parameters())
    return {"size": size, "device": _device_name(device), "params": params, "seconds": seconds,
            "x_real_time": seconds / elapsed, "f0_x": seconds / t_f0, "acoustic_x": seconds / t_ac,
            "vocoder_x": seconds / t_voc, "sample_rate": cfg.sample_rate}


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"CPU {platform.machine()} x{torch.get_num_threads()} threads"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        speakers = make_speakers(2, seed=1)
        parts = [synth_utterance(speakers[0], 4.0, 44100, seed=s)[0] for s in range(int(args.seconds // 4))]
        gap = np.zeros(44100 // 5, np.float32)
        source = np.concatenate([np.concatenate([p, gap]) for p in parts])
        sf.write(tmp / "source.flac", source, 44100)  # a different rate: resampling is part of the path
        sf.write(tmp / "ref.wav", synth_utterance(speakers[1], 5.0, 22050, seed=9)[0], 22050)
        seconds = len(source) / 44100
        rows = [measure(size, "cpu", tmp / "source.flac", tmp / "ref.wav", seconds, tmp) for size in ("tiny", "base")]
        if torch.cuda.is_available():
            rows.append(measure("base", "cuda", tmp / "source.flac", tmp / "ref.wav", seconds, tmp))
    table = Table(title=f"synthesize: {seconds:.0f} s source (44.1 kHz flac) -> 22.05 kHz wav")
    for col in ("size", "device", "params", "end to end", "F0 alone", "acoustic alone", "vocoder alone"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["size"], r["device"], f"{r['params'] / 1e6:.1f}M", f"{r['x_real_time']:.0f}x real time",
                      f"{r['f0_x']:.0f}x", f"{r['acoustic_x']:.0f}x", f"{r['vocoder_x']:.0f}x")
    Console().print(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
