"""Speed and memory of `voiceclone prepare`, end to end, on generated corpora at 22.05 kHz.

    python benchmarks/prepare_speed.py [--minutes 30 60] [--workers 1 0] [--profile] [--command] [--json OUT]

For each corpus size and worker count: audio hours, wall time, real-time factor overall and per worker,
CPU time (parent and workers) and the real-time factor per CPU-second, and peak memory of the whole
process tree (the parent and its workers), sampled every 50 ms: the sum of RSS as the kernel reports it,
and (every 250 ms) the sum of PSS, which counts pages the forked workers share with the parent once. Peak memory should
not grow with the corpus: compare the sizes. --profile adds the per-file cost of each stage. --command also
times each corpus as a whole `voiceclone prepare` process (imports, start-up and exit included; the recipe
vctk with this script's feature settings), the figure a user waits for.

The corpus: utterances of generated voices (voiceclone.synthetic) varied in rate, pitch and level, with
silence around them, as 16-bit WAV in ROOT/<speaker>/ (about 3 s each), 40 speakers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch
from rich.console import Console
from rich.table import Table

from voiceclone import audio as A
from voiceclone.config import Recipe
from voiceclone.data.prepare import prepare
from voiceclone.synthetic import make_speakers, synth_utterance

SAMPLE_RATE = 22050
SPEAKERS = 40


def make_corpus(root: Path, minutes: float, seed: int = 0) -> float:
    """Write about `minutes` of speech-like audio into ROOT/<speaker>/<n>.wav; returns the seconds written."""
    rng = np.random.default_rng(seed)
    voices = make_speakers(8, seed=seed)
    # synthesizing is slow (additive), so a small pool is synthesized once and varied per file
    pool = [synth_utterance(voices[i % 8], 2.6, SAMPLE_RATE, seed=seed + i)[0] for i in range(16)]
    total, n = 0.0, 0
    while total < minutes * 60:
        base = pool[int(rng.integers(len(pool)))]
        ratio = float(rng.uniform(0.85, 1.15))  # rate and pitch together, as a different speaker would
        y = soxr.resample(base, SAMPLE_RATE, SAMPLE_RATE * ratio) * float(rng.uniform(0.1, 0.8))
        pad = [np.zeros(int(rng.uniform(0.05, 0.4) * SAMPLE_RATE), np.float32) for _ in range(2)]
        y = np.concatenate([pad[0], y, pad[1]])
        y = y + rng.standard_normal(len(y)).astype(np.float32) * 1e-4  # a recording's noise floor
        folder = root / f"speaker{n % SPEAKERS:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        sf.write(folder / f"{n:05d}.wav", y, SAMPLE_RATE, subtype="PCM_16")
        total += len(y) / SAMPLE_RATE
        n += 1
    return total


class TreeMemory:
    """Peak memory of this process and all its descendants, sampled in a thread: RSS sum every `interval`
    (from /proc/PID/statm, cheap), PSS sum every `pss_every` samples (smaps_rollup walks the page tables,
    which would itself slow a 2-core machine down if done as often)."""

    def __init__(self, interval: float = 0.05, pss_every: int = 5) -> None:
        self.interval, self.pss_every, self.peak_rss, self.peak_pss = interval, pss_every, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "TreeMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        page, k = os.sysconf("SC_PAGE_SIZE"), 0
        while not self._stop.is_set():
            pids = _tree(os.getpid())
            self.peak_rss = max(self.peak_rss, sum(_statm_rss(p) for p in pids) * page)
            if k % self.pss_every == 0:
                self.peak_pss = max(self.peak_pss, sum(_pss(p) for p in pids))
            k += 1
            self._stop.wait(self.interval)


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:  # exited meanwhile
            continue
    return pids


def _statm_rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_seconds() -> float:
    """CPU time of this (main) thread and of finished child processes: the workers, not the sampler."""
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.thread_time() + kids.ru_utime + kids.ru_stime


def measure(corpus: Path, out: Path, workers: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cfg = Recipe()  # HiFi-GAN's front end: 22.05 kHz, hop 256, 80 mels
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    with TreeMemory() as mem:
        summary = prepare([corpus], out, cfg, workers=workers, console=Console(quiet=True))
    wall, cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
    # the decoded length, before trimming: what a user's corpus is measured in
    audio_s = summary["speed"]["hours"] * 3600
    used = summary["speed"]["workers"]
    return {"files": summary["files"], "workers": used, "audio_hours": audio_s / 3600, "wall_s": wall,
            "x_real_time": audio_s / wall, "x_per_worker": audio_s / wall / used, "cpu_s": cpu,
            "x_per_cpu_second": audio_s / cpu, "peak_rss_mb": mem.peak_rss / 2**20,
            "peak_pss_mb": mem.peak_pss / 2**20, "load_avg_1min": os.getloadavg()[0], "mode": "in process"}


def measure_command(corpus: Path, out: Path, workers: int, seconds: float) -> dict:
    """The same corpus through a whole `voiceclone prepare` process."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "voiceclone", "prepare", str(corpus), "--out", str(out), "-j", str(workers),
           "--recipe", "vctk", "--set", "prepare.max_seconds=15", "--set", "prepare.trim_top_db=40"]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    kids0, wall0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    with TreeMemory() as mem:
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - wall0
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = kids.ru_utime + kids.ru_stime - kids0.ru_utime - kids0.ru_stime
    used = max(1, workers) if workers else len(os.sched_getaffinity(0))
    return {"files": sum(1 for _ in corpus.rglob("*.wav")), "workers": workers or "auto", "audio_hours": seconds / 3600,
            "wall_s": wall, "x_real_time": seconds / wall, "x_per_worker": seconds / wall / used, "cpu_s": cpu,
            "x_per_cpu_second": seconds / cpu, "peak_rss_mb": mem.peak_rss / 2**20,
            "peak_pss_mb": mem.peak_pss / 2**20, "load_avg_1min": os.getloadavg()[0], "mode": "command"}


def profile(corpus: Path, files: int = 60) -> list[tuple[str, float]]:
    """Per-stage cost of the per-file path in ms per second of audio (one thread, as in a worker)."""
    torch.set_num_threads(1)
    cfg = Recipe()
    paths = sorted(corpus.rglob("*.wav"))[:files]
    stages = {k: 0.0 for k in ("decode", "trim, split, loudness", "log-mel + energy", "F0", "store (int16, append)")}
    seconds = 0.0
    tmp = Path(tempfile.mkdtemp())
    files = [open(tmp / f"{k}.bin", "wb") for k in ("mel", "f0", "energy", "audio")]
    A.features(np.zeros(4096, np.float32), cfg.audio)  # warm caches (mel basis, F0 window)
    for i, p in enumerate(paths):
        t = time.process_time()
        y = A.load_audio(p, cfg.audio.sample_rate)
        seconds += len(y) / cfg.audio.sample_rate
        t1 = time.process_time()
        pieces = A.utterances(y, cfg.prepare, cfg.audio.sample_rate, p)
        t2 = time.process_time()
        stages["decode"] += t1 - t
        stages["trim, split, loudness"] += t2 - t1
        for _, _, piece in pieces:
            n = len(piece) // cfg.audio.hop_length
            piece = np.ascontiguousarray(piece[: n * cfg.audio.hop_length])
            t = time.process_time()
            with torch.inference_mode():
                mel, energy = A.log_mel(torch.from_numpy(piece), cfg.audio, return_energy=True)
            mel = mel.T.contiguous().numpy()
            t1 = time.process_time()
            f0 = A.f0(piece, cfg.audio)
            t2 = time.process_time()
            for f, x in zip(files, (mel.astype(np.float16), f0, energy.numpy(), A.to_int16(piece))):
                f.write(np.ascontiguousarray(x).data)  # appended, as to prepare's feature store
            t3 = time.process_time()
            stages["log-mel + energy"] += t1 - t
            stages["F0"] += t2 - t1
            stages["store (int16, append)"] += t3 - t2
    for f in files:
        f.close()
    shutil.rmtree(tmp, ignore_errors=True)
    return [(k, 1000 * v / seconds) for k, v in stages.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description="Speed and memory of voiceclone prepare.")
    parser.add_argument("--minutes", type=float, nargs="+", default=[30.0, 60.0], help="corpus sizes")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 0], help="worker counts (0 = all cores)")
    parser.add_argument("--profile", action="store_true", help="also time each stage of the per-file path")
    parser.add_argument("--command", action="store_true", help="also time whole `voiceclone prepare` processes")
    parser.add_argument("--corpora", type=Path, help="keep the generated corpora in this folder and reuse them "
                        "(to compare two versions on the same files)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    console = Console(width=150)
    rows, stages = [], None
    with tempfile.TemporaryDirectory() as tmp:
        # one-time costs of a process (imports are done; this builds
        # the mel basis) are not the corpus's: pay them on a tiny corpus first
        make_corpus(Path(tmp) / "warm", 0.2)
        measure(Path(tmp) / "warm", Path(tmp) / "out", 1)
        for minutes in args.minutes:
            corpus = (args.corpora or Path(tmp)) / f"corpus{minutes:g}"
            if args.corpora is not None and (corpus.parent / f"{corpus.name}.seconds").is_file():
                seconds = float((corpus.parent / f"{corpus.name}.seconds").read_text())
            else:
                console.print(f"generating {minutes:g} min of audio ...", style="dim")
                seconds = make_corpus(corpus, minutes)
                (corpus.parent / f"{corpus.name}.seconds").write_text(str(seconds))
            for w in args.workers:
                console.print(f"prepare {minutes:g} min, workers={w or 'all'} ...", style="dim")
                rows.append({"minutes": minutes, **measure(corpus, Path(tmp) / "out", w)})
                if args.command:
                    rows.append({"minutes": minutes, **measure_command(corpus, Path(tmp) / "out", w, seconds)})
            if args.profile and stages is None:
                stages = profile(corpus)
            if args.corpora is None:
                shutil.rmtree(corpus)
    cores = len(os.sched_getaffinity(0))
    table = Table(title=f"voiceclone prepare, 22.05 kHz, {platform.processor() or platform.machine()}, "
                        f"{cores} cores (shared: see load)", title_justify="left")
    for col in ("corpus", "how", "files", "workers", "audio h", "wall s", "x RT", "x RT/worker", "CPU s", "x RT/CPU-s",
                "peak RSS MB", "peak PSS MB", "load"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(f"{r['minutes']:g} min", r["mode"], str(r["files"]), str(r["workers"]), f"{r['audio_hours']:.3f}",
                      f"{r['wall_s']:.1f}", f"{r['x_real_time']:.0f}", f"{r['x_per_worker']:.0f}", f"{r['cpu_s']:.1f}",
                      f"{r['x_per_cpu_second']:.0f}", f"{r['peak_rss_mb']:.0f}", f"{r['peak_pss_mb']:.0f}",
                      f"{r['load_avg_1min']:.1f}")
    console.print(table)
    if stages:
        st = Table(title="per-file path, one thread (ms per second of audio)", title_justify="left")
        st.add_column("stage")
        st.add_column("ms/s", justify="right")
        st.add_column("x RT", justify="right")
        for name, ms in stages + [("total", sum(ms for _, ms in stages))]:
            st.add_row(name, f"{ms:.2f}", f"{1000 / ms:.0f}")
        console.print(st)
    if args.json:
        args.json.write_text(json.dumps({"runs": rows, "stages_ms_per_s": dict(stages or [])}, indent=1))


if __name__ == "__main__":
    main()
