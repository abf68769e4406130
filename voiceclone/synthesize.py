"""Clone a voice: reference clips give the speaker, a source (speech, singing or text) gives the content.

Everything goes through the front end `prepare` uses (audio.load_audio, audio.clean, audio.features), so a
model sees at synthesis exactly the features it was trained on. Long sources are cut at their quietest
points into chunks; each chunk is converted with some context on both sides and the chunks are joined with
short crossfades, so memory does not grow with the length of the source and the output is streamed to disk.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import soundfile as sf
import soxr
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from voiceclone import audio as A
from voiceclone.bundle import Model, load_model
from voiceclone.errors import UserError

MIN_REFERENCE_SECONDS = 1.0
GOOD_REFERENCE_SECONDS = 3.0
CONTEXT_SECONDS = 0.5  # audio converted on each side of a chunk and thrown away: the model's receptive field
FADE_SECONDS = 0.02


@dataclass
class Reference:
    vector: torch.Tensor  # [speaker_dim], the average over the reference clips
    seconds: float  # reference audio used, after trimming
    f0_median: float | None  # Hz over voiced frames; None if the references are unvoiced
    warnings: list[str]


def embed_references(model: Model, paths: Sequence[Path]) -> Reference:
    """Speaker vector and register of one or more reference clips (any format and rate).

    No clips: a fine-tuned model's own learned voice, in the register of the voice it was tuned on.
    """
    if not paths:
        if model.acoustic.voice is None:
            raise UserError("at least one --reference is needed (only a fine-tuned model has a voice of its own)")
        return Reference(model.acoustic.voice.detach(), 0.0, model.meta.get("acoustic", {}).get("voice_f0_median"),
                         [])
    cfg, prep = model.recipe.audio, model.recipe.prepare
    mels, f0s, total, warnings = [], [], 0.0, []
    for p in paths:
        y = A.clean(A.load_audio(p, cfg.sample_rate), prep, p)
        secs = len(y) / cfg.sample_rate
        if secs < MIN_REFERENCE_SECONDS:
            raise UserError(f"{p}: reference has {secs:.2f} s of speech; at least {MIN_REFERENCE_SECONDS:.0f} s is "
                            f"needed ({GOOD_REFERENCE_SECONDS:.0f}-10 s recommended)")
        if secs < GOOD_REFERENCE_SECONDS:
            warnings.append(f"{p}: only {secs:.1f} s of speech; {GOOD_REFERENCE_SECONDS:.0f} s or more clones "
                            "the voice more faithfully")
        feats = A.features(y, cfg)
        mels.append(torch.from_numpy(feats.mel.T.copy()))
        f0s.append(feats.f0)
        total += secs
    device = next(model.acoustic.parameters()).device
    vector = model.acoustic.embed([m.to(device) for m in mels])
    voiced = np.concatenate(f0s)
    voiced = voiced[voiced > 0]
    return Reference(vector, total, float(np.median(voiced)) if voiced.size else None, warnings)


def _windows(n: int, pieces: list[tuple[int, int]], hop: int, context: int) -> list[tuple[int, int, int, int]]:
    """(a, b) pieces -> (a, b, wa, wb): the piece and the frame-aligned window converted around it."""
    out = []
    for a, b in pieces:
        wa = max(0, a - context) // hop * hop
        wb = min(n, b + context)
        out.append((a, b, wa, wb))
    return out


def convert(model: Model, y: np.ndarray, ref: Reference, transpose: float = 0.0, keep_pitch: bool = False,
            chunk_seconds: float = 20.0) -> tuple[Iterator[np.ndarray], dict]:
    """Convert cleaned source samples y [T] into the reference voice.

    Returns (an iterator of output blocks that together are exactly T samples long, info). The pitch shift
    in `info` is known before the first block is produced.
    """
    cfg = model.recipe.audio
    sr, hop = cfg.sample_rate, cfg.hop_length
    n = len(y)
    pieces = A.split_at_quiet(y, sr, chunk_seconds, min(1.0, chunk_seconds / 4))
    context, fade = int(CONTEXT_SECONDS * sr), int(FADE_SECONDS * sr)
    windows = _windows(n, pieces, hop, max(context, fade))
    f0s = [A.f0(y[wa:wb], cfg) for _, _, wa, wb in windows]  # pass 1: the source register, and reused below
    voiced = np.concatenate(f0s) if f0s else np.zeros(0)
    voiced = voiced[voiced > 0]
    src_median = float(np.median(voiced)) if voiced.size else None
    ratio = 1.0
    if not keep_pitch and src_median and ref.f0_median:
        ratio = ref.f0_median / src_median
    ratio *= A.semitones_to_ratio(transpose)
    info = {"source_f0_median": src_median, "reference_f0_median": ref.f0_median,
            "pitch_shift_semitones": float(12 * np.log2(ratio)), "chunks": len(pieces)}
    device = next(model.acoustic.parameters()).device

    def blocks() -> Iterator[np.ndarray]:
        tail = None  # the previous chunk's output past its end, faded into this chunk's start
        for (a, b, wa, wb), f0_src in zip(windows, f0s):
            with torch.inference_mode():
                x = torch.from_numpy(np.ascontiguousarray(y[wa:wb])).to(device)
                mel, energy = A.log_mel(x, cfg, return_energy=True)
                f0 = torch.from_numpy(f0_src * ratio).to(device)
                out_mel = model.acoustic.convert(mel, f0, energy, ref.vector)
                wav = model.vocoder(out_mel.unsqueeze(0), f0.unsqueeze(0))[0].float().cpu().numpy()
            wav = np.pad(wav, (0, max(0, wb - wa - len(wav))))
            piece = wav[a - wa : b - wa].copy()
            if tail is not None:
                k = min(len(tail), len(piece))
                w = np.linspace(0.0, 1.0, k, dtype=np.float32)
                piece[:k] = tail[:k] * (1 - w) + piece[:k] * w
            tail = wav[b - wa : b - wa + fade]
            yield np.clip(piece, -1.0, 1.0)

    return blocks(), info


def _text_to_wav(text: str, folder: Path) -> Path:
    """Speak `text` with espeak-ng's base voice, as OpenVoice pairs a base speaker with a colour converter."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise UserError("--text needs espeak-ng: install it with `apt-get install espeak-ng` "
                        "(Debian/Ubuntu), `brew install espeak-ng` (macOS) or from github.com/espeak-ng")
    if not text.strip():
        raise UserError("--text is empty")
    path = folder / "text.wav"
    subprocess.run([exe, "-v", "en-us", "-s", "150", "-w", str(path), text], check=True, capture_output=True)
    return path


def synthesize_file(model: Model, ref: Reference, source: Path, out: Path, transpose: float = 0.0,
                    keep_pitch: bool = False, sample_rate: int | None = None, chunk_seconds: float = 20.0,
                    subtype: str = "PCM_16") -> dict:
    """Convert one source file into `out` (written block by block)."""
    cfg = model.recipe.audio
    started = time.perf_counter()
    y = A.clean(A.load_audio(source, cfg.sample_rate), model.recipe.prepare, source)
    blocks, info = convert(model, y, ref, transpose, keep_pitch, chunk_seconds)
    rate = sample_rate or cfg.sample_rate
    resampler = soxr.ResampleStream(cfg.sample_rate, rate, 1, dtype="float32", quality="HQ") \
        if rate != cfg.sample_rate else None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.part")
    try:
        with sf.SoundFile(str(tmp), "w", samplerate=rate, channels=1, subtype=subtype, format="WAV") as f:
            for block in blocks:
                f.write(resampler.resample_chunk(block) if resampler else block)
            if resampler:
                f.write(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    elapsed = time.perf_counter() - started
    seconds = len(y) / cfg.sample_rate
    return {"source": str(source), "output": str(out), "seconds": seconds, "elapsed": elapsed,
            "x_real_time": seconds / max(elapsed, 1e-9), "sample_rate": rate, "reference_seconds": ref.seconds, **info}


def synthesize(model_path: Path, references: Sequence[Path], out: Path, source: Path | None = None,
               text: str | None = None, transpose: float = 0.0, keep_pitch: bool = False,
               sample_rate: int | None = None, chunk_seconds: float = 20.0, device: str | None = None,
               console: Console | None = None) -> list[dict]:
    """The `voiceclone synthesize` command: one file, a folder of files, or text."""
    console = console or Console(stderr=True)
    if (source is None) == (text is None):
        raise UserError("give exactly one of --source or --text")
    if sample_rate is not None and not 8000 <= sample_rate <= 192000:
        raise UserError(f"--sample-rate {sample_rate}: expected 8000-192000 Hz")
    model = load_model(model_path, need_vocoder=True, device=device or "cpu")
    ref = embed_references(model, references)
    for w in ref.warnings:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)
    kwargs = dict(transpose=transpose, keep_pitch=keep_pitch, sample_rate=sample_rate, chunk_seconds=chunk_seconds)
    results: list[dict] = []
    if text is not None:
        with tempfile.TemporaryDirectory() as tmp:
            results.append(synthesize_file(model, ref, _text_to_wav(text, Path(tmp)), out, **kwargs))
    elif source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.is_file() and A.is_audio_file(p))
        if not files:
            raise UserError(f"{source}: no audio files in this folder")
        if out.suffix.lower() == ".wav":
            raise UserError(f"{out}: with a folder as --source, --out must be a folder")
        failed = []
        with Progress(TextColumn("converting"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=console) as bar:
            task = bar.add_task("convert", total=len(files))
            for f in files:
                try:
                    target = out / f.relative_to(source).with_suffix(".wav")
                    results.append(synthesize_file(model, ref, f, target, **kwargs))
                except A.AudioError as e:
                    failed.append(str(e))
                    console.print(f"[yellow]skipped[/] {e}", highlight=False)
                bar.advance(task)
        if not results:
            raise UserError(f"{source}: no file could be converted ({failed[0]})")
    else:
        if not source.exists():
            raise UserError(f"{source}: no such file")
        results.append(synthesize_file(model, ref, source, out, **kwargs))
    _print_summary(console, results)
    return results


def _print_summary(console: Console, results: list[dict]) -> None:
    table = Table(title="synthesized", show_lines=False)
    for col in ("output", "duration", "x real time", "reference", "pitch shift"):
        table.add_column(col)
    for r in results:
        table.add_row(r["output"], f"{r['seconds']:.2f} s", f"{r['x_real_time']:.1f}x",
                      f"{r['reference_seconds']:.1f} s", f"{r['pitch_shift_semitones']:+.2f} st")
    console.print(table)
