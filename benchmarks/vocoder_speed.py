"""Vocoder speed: generator parameters, synthesis speed in x real time, raw GAN training steps/s.

    python benchmarks/vocoder_speed.py [--sizes tiny base vocos] [--steps 3] [--json OUT]

`vocos` is the same generator at Vocos's own size (512/1536/8), for the ratio base / Vocos in one run (its
training steps are not timed). With both sizes asked for, that ratio is timed apart from the table: the two
generators' calls alternate, and each round's ratio of Vocos's time to base's is one sample, so a machine
whose speed drifts (other work, clocks) slows both sides of a sample alike. The table's separate blocks
of calls are biased against whichever size runs first: on the 2-core EPYC the first block of base calls
took 70 ms each and later blocks 57 ms (Vocos-size 119-123 ms in every block), which made the same code
read 1.65-2.09x from run to run and 2.05-2.11x paired (four runs).

Synthesis on CPU: 2 threads, batch 1, 10 s of audio, inference mode (the deployment case of a laptop).
Synthesis on CUDA, when there is a GPU: batch 1 x 10 s and batch 16 x 1 s, bf16 autocast. A training step is what the
vocoder task does per batch: one discriminator step (least squares on real and detached generated audio)
and one generator step (mel L1 + adversarial + feature matching, weighted as VocoderLossWeights), AdamW,
batch 8 x 32 frames, no data loading. Timings are medians over repeats after a warm-up; synthesis also
shows the best repeat, the figure to trust when other work shares the CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from rich.console import Console
from rich.table import Table

from voiceclone.audio import log_mel
from voiceclone.config import AudioConfig, VocoderLossWeights, VocoderModelConfig, build
from voiceclone.models.discriminators import Discriminators
from voiceclone.models.vocoder import Vocoder
from voiceclone.stages.losses import discriminator_loss, feature_matching_loss, generator_adversarial_loss

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures import cpu_name  # noqa: E402

CPU_THREADS = 2
CPU_SECONDS = 10.0
GPU_BATCH, GPU_SECONDS = 16, 1.0
TRAIN_BATCH, TRAIN_FRAMES = 8, 32
VOCOS = {"size": "base", "dim": 512, "intermediate_dim": 1536, "layers": 8}  # Vocos's published generator size


def timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> list[float]:
    """Seconds of each of `repeats` calls of fn, after warm-up calls."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def inputs(audio: AudioConfig, batch: int, frames: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A plausible log-mel and a voiced F0 contour with an unvoiced gap; speed does not depend on content."""
    g = torch.Generator().manual_seed(0)
    mel = (torch.randn(batch, audio.n_mels, frames, generator=g) - 5.0).to(device)
    f0 = 150.0 * 2 ** torch.sin(torch.linspace(0, 20, frames)).expand(batch, frames).clone()
    f0[:, frames // 3 : frames // 3 + frames // 10] = 0.0
    return mel, f0.to(device)


def synthesis_speed(gen: Vocoder, audio: AudioConfig, device: torch.device, batch: int, seconds: float,
                    bf16: bool, repeats: int) -> tuple[float, float]:
    """x real time, (median, best): seconds of audio made per second of wall clock."""
    frames = int(seconds * audio.sample_rate) // audio.hop_length
    mel, f0 = inputs(audio, batch, frames, device)

    def run() -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            gen(mel, f0)

    times = timed(run, device, repeats, warmup=2)
    seconds_made = batch * frames * audio.hop_length / audio.sample_rate
    return seconds_made / statistics.median(times), seconds_made / min(times)


def train_speed(cfg: VocoderModelConfig, audio: AudioConfig, device: torch.device, steps: int) -> float:
    """Raw training iterations per second (one discriminator step + one generator step)."""
    torch.manual_seed(0)
    gen, disc = Vocoder(cfg, audio).to(device), Discriminators(cfg).to(device)
    opt_g = torch.optim.AdamW(gen.parameters(), lr=5e-4, betas=(0.8, 0.99))
    opt_d = torch.optim.AdamW(disc.parameters(), lr=2e-4, betas=(0.8, 0.99))
    w = VocoderLossWeights()
    mel, f0 = inputs(audio, TRAIN_BATCH, TRAIN_FRAMES, device)
    real = 0.1 * torch.randn(TRAIN_BATCH, TRAIN_FRAMES * audio.hop_length, device=device)
    target = log_mel(real, audio)
    bf16 = device.type == "cuda"
    half = TRAIN_BATCH

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            fake = gen(mel, f0)
            logits, _ = disc(torch.cat([real, fake.detach()]))
            d_loss = w.discriminator * discriminator_loss([x[:half] for x in logits], [x[half:] for x in logits])
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits, feats = disc(torch.cat([real, fake]))
            g_loss = (w.mel * (log_mel(fake, audio) - target).abs().mean()
                      + w.adversarial * generator_adversarial_loss([x[half:] for x in logits])
                      + w.feature * feature_matching_loss([[f[:half] for f in fs] for fs in feats],
                                                          [[f[half:] for f in fs] for fs in feats]))
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()

    return 1.0 / statistics.median(timed(step, device, steps))


def measure(size: str, steps: int, threads: int = CPU_THREADS) -> dict:
    audio = AudioConfig()
    cfg = build(VocoderModelConfig, VOCOS if size == "vocos" else {"size": size})
    gen = Vocoder(cfg, audio).eval()
    disc = Discriminators(cfg)
    row = {"size": size, "dim": cfg.dim, "intermediate_dim": cfg.intermediate_dim, "layers": cfg.layers,
           "generator_params": sum(p.numel() for p in gen.parameters()),
           "discriminator_params": sum(p.numel() for p in disc.parameters())}
    threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        row["cpu_x_realtime"], row["cpu_x_realtime_best"] = synthesis_speed(
            gen, audio, torch.device("cpu"), 1, CPU_SECONDS, False, repeats=9)
        row["cpu_train_steps_s"] = (train_speed(cfg, audio, torch.device("cpu"), steps) if size != "vocos" and steps > 0
                                    else float("nan"))
    finally:
        torch.set_num_threads(threads)
    if torch.cuda.is_available():
        cuda = torch.device("cuda")
        row["gpu_x_realtime"], row["gpu_x_realtime_best"] = synthesis_speed(
            gen.to(cuda), audio, cuda, GPU_BATCH, GPU_SECONDS, True, repeats=20)
        row["gpu_x_realtime_b1"], _ = synthesis_speed(gen, audio, cuda, 1, CPU_SECONDS, True, repeats=20)
        row["gpu_train_steps_s"] = (train_speed(cfg, audio, cuda, max(steps, 20)) if size != "vocos"
                                    else float("nan"))
    return row


def paired_ratio(threads: int, rounds: int = 21) -> tuple[float, float, float]:
    """Vocos-size time / base time on CPU, batch 1 x 10 s, calls alternating: (median, lower and upper
    quartile) over `rounds` paired samples."""
    audio = AudioConfig()
    gens = [Vocoder(build(VocoderModelConfig, cfg), audio).eval() for cfg in ({"size": "base"}, VOCOS)]
    mel, f0 = inputs(audio, 1, int(CPU_SECONDS * audio.sample_rate) // audio.hop_length, torch.device("cpu"))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    ratios = []
    try:
        with torch.inference_mode():
            for gen in gens * 2:  # warm-up
                gen(mel, f0)
            for _ in range(rounds):
                times = []
                for gen in gens:
                    t0 = time.perf_counter()
                    gen(mel, f0)
                    times.append(time.perf_counter() - t0)
                ratios.append(times[1] / times[0])
    finally:
        torch.set_num_threads(previous)
    q1, median, q3 = statistics.quantiles(ratios, n=4)
    return median, q1, q3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "base", "vocos"],
                        choices=[*sorted(VocoderModelConfig.PRESETS), "vocos"])
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per size on CPU (0: none)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--threads", type=int, default=CPU_THREADS,
                        help="CPU threads (0: the free cores, as voiceclone.threads chooses)")
    args = parser.parse_args()

    threads = args.threads
    if threads == 0:
        from voiceclone.threads import free_cores

        threads = free_cores()
    devices = {"cpu": f"{cpu_name()} ({threads} threads)"}
    if torch.cuda.is_available():
        devices["gpu"] = torch.cuda.get_device_name()
    rows = [measure(size, args.steps, threads) for size in args.sizes]

    console = Console()
    console.print("devices: " + "; ".join(f"{k}: {v}" for k, v in devices.items()))
    table = Table(title="vocoder speed", caption=(
        f"x RT = seconds of audio per second. CPU: {threads} threads, batch 1 x {CPU_SECONDS:.0f} s. "
        f"GPU: batch {GPU_BATCH} x {GPU_SECONDS:.0f} s, bf16. it/s: one D + one G step, batch "
        f"{TRAIN_BATCH} x {TRAIN_FRAMES} frames."))
    gpu = "gpu_x_realtime" in rows[0]
    for col in ["size", "dim/inter/layers", "G params", "D params", "CPU x RT (best)", "CPU it/s"] + (
            ["GPU x RT 1 x 10 s", "GPU x RT (best)", "GPU it/s"] if gpu else []):
        table.add_column(col, justify="right")
    for r in rows:
        cells = [r["size"], f"{r['dim']}/{r['intermediate_dim']}/{r['layers']}",
                 f"{r['generator_params'] / 1e6:.2f}M", f"{r['discriminator_params'] / 1e6:.2f}M",
                 f"{r['cpu_x_realtime']:.0f} ({r['cpu_x_realtime_best']:.0f})", f"{r['cpu_train_steps_s']:.2f}"]
        if gpu:
            cells += [f"{r['gpu_x_realtime_b1']:.0f}", f"{r['gpu_x_realtime']:.0f} ({r['gpu_x_realtime_best']:.0f})",
                      f"{r['gpu_train_steps_s']:.1f}"]
        table.add_row(*cells)
    console.print(table)
    by_size = {r["size"]: r for r in rows}
    ratio = None
    if "base" in by_size and "vocos" in by_size:
        ratio = paired_ratio(threads)
        console.print(f"base / Vocos-size on CPU, batch 1 x {CPU_SECONDS:.0f} s: {ratio[0]:.2f}x faster (median of 21 "
                      f"rounds of alternating calls; quartiles {ratio[1]:.2f}-{ratio[2]:.2f}x). From the table's "
                      f"separate medians: {by_size['base']['cpu_x_realtime'] / by_size['vocos']['cpu_x_realtime']:.2f}x.")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"devices": devices, "torch": torch.__version__, "results": rows,
                                         "base_vs_vocos_paired": ratio}, indent=2))


if __name__ == "__main__":
    main()
