"""Clone a voice: reference clips give the speaker, a source (speech, singing or text) gives the content.

Everything goes through the front end `prepare` uses (audio.load_audio, audio.clean, audio.features), so a
model sees at synthesis exactly the features it was trained on. Long sources are cut at their quietest
points into chunks; each chunk is converted with some context on both sides and the chunks are joined with
short crossfades, so memory does not grow with the length of the source and the output is streamed to disk.
On the CPU several chunks are converted at once, one single-threaded worker each (voiceclone/threads.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import math
import os
import shutil
import subprocess
import tempfile
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import soundfile as sf
import soxr
import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from voiceclone import audio as A
from voiceclone.config import AudioConfig
from voiceclone.inference import timbre
from voiceclone.inference.bundle import Model, load_model
from voiceclone.errors import (FileWriteError, UserError, check_output, first_few, one_line, stderr_console,
                               writing)
from voiceclone.files import tmp_beside, walk_following_links
from voiceclone.threads import ordered_map, torch_threads

MIN_REFERENCE_SECONDS = 1.0
GOOD_REFERENCE_SECONDS = 3.0
CONTEXT_SECONDS = 0.5  # audio converted on each side of a chunk and thrown away: the model's receptive field
FADE_SECONDS = 0.02
MIN_PARALLEL_SECONDS = 4.0  # shorter pieces spend more on their context than parallel workers win
SPLIT_SLACK_SECONDS = 1.5  # how far a cut may move from its place to find a pause
STREAM_SECONDS = 30.0  # longer sources are read block by block (two passes) instead of whole
REFERENCE_SECONDS = 30.0  # audio read of a long reference, where it sounds most: 3-10 s of speech suffice
REFERENCE_BLOCK_SECONDS = 5.0  # a long reference is read, and its window chosen, in blocks of this length
MAX_TRANSPOSE = 48.0  # semitones: four octaves, more than any voice spans
MAX_CHUNK_SECONDS = 3600.0
OUTPUT_RATES = (8000, 192000)  # --sample-rate: the range of the recipes' own audio.sample_rate
# why one output of a folder cannot be written that leaves the others writable (its path is taken by a folder
# or lies below a file, its name is too long, its subfolder is read-only): that file is skipped. A full disk
# stops the run: every later file would fail the same way.
ONE_OUTPUT_ERRNOS = (errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.EACCES, errno.EPERM)


def check_transpose(transpose: float) -> None:
    """A NaN or huge --transpose does not fail: it silently feeds the vocoder a nonsense F0."""
    if not -MAX_TRANSPOSE <= transpose <= MAX_TRANSPOSE:
        raise UserError(f"--transpose {transpose:g}: expected -{MAX_TRANSPOSE:g} to {MAX_TRANSPOSE:g} semitones")


def check_out(out: Path, source: Path | None, references: Sequence[Path], folder: bool = False) -> None:
    """--out of synthesize and --stream, before any work: writable (a folder for a folder --source), named .wav
    when it is a file, and none of the inputs (the recording was replaced by its conversion, exit 0; of a
    folder --source, the same folder is the same mistake)."""
    check_output(out, folder=folder, suffix=".wav")
    # realpath, not Path.resolve: an input that is a looping link raises RuntimeError there (load_audio names it)
    target = os.path.realpath(out)
    for option, path in [("--source", source), *(("--reference", r) for r in references)]:
        if path is not None and os.path.realpath(path) == target:
            what = ("folder; the outputs would replace its files" if Path(path).is_dir() else
                    "file; the output would replace it")
            raise UserError(f"{out}: is the {option} {what}; choose another --out")


def check_sample_rate(sample_rate: int | None) -> None:
    """--sample-rate of the written file, when given."""
    lo, hi = OUTPUT_RATES
    if sample_rate is not None and not lo <= sample_rate <= hi:
        raise UserError(f"--sample-rate {sample_rate}: expected {lo}-{hi} Hz")


@dataclass
class Reference:
    vector: torch.Tensor  # [speaker_dim], the average over the reference clips
    seconds: float  # reference audio used, after trimming
    f0_median: float | None  # Hz over voiced frames; None if the references are unvoiced
    warnings: list[str]
    envelope: np.ndarray | None = None  # [n_mels] mean log-mel of the voiced frames, level removed


def check_long_enough(y: np.ndarray, cfg: AudioConfig, source: Path) -> None:
    """A cleaned source needs one whole frame: the content encoder's convolutions refuse an empty input."""
    if len(y) < cfg.hop_length:
        raise A.AudioError(source, "too short", f"{len(y)} samples after trimming, less than one "
                                                f"{cfg.hop_length}-sample frame")


def embed_references(model: Model, paths: Sequence[Path]) -> Reference:
    """Speaker vector and register of one or more reference clips (any format and rate).

    No clips: a fine-tuned model's own learned voice, in the register of the voice it was tuned on.
    """
    if not paths:
        if model.acoustic.voice is None:
            raise UserError("at least one --reference is needed (only a fine-tuned model has a voice of its own)")
        meta = model.meta.get("acoustic", {})
        return Reference(model.acoustic.voice.detach(), 0.0, meta.get("voice_f0_median"), [],
                         _stored_envelope(meta.get("voice_envelope"), model.recipe.audio.n_mels))
    cfg, prep = model.recipe.audio, model.recipe.prepare
    clips, notes = [], []  # notes: what reading the references says (a long one was cut)
    # one clip named twice (a.wav and ./a.wav) is not twice the speech: 0.6 s passed the minimum as 1.2 s "in
    # all", and weighed double in the average
    unique: dict[str, Path] = {}
    for p in paths:
        first = unique.setdefault(os.path.realpath(p), p)
        if first is not p:
            also = "" if str(first) == str(p) else f" (as {first})"
            notes.append(f"{p}: given more than once as a --reference{also}; used once")
    paths = list(unique.values())
    for p in paths:
        y = A.clean(_read_reference(Path(p), cfg.sample_rate, notes), prep, p)
        # a clip without one whole frame adds nothing to the pool of short clips, and an empty pool stopped the
        # speaker encoder's convolutions with a traceback once the other references made up the minimum
        check_long_enough(y, cfg, p)
        clips.append((p, y, A.features(y, cfg)))
    # Several references are one voice: the minimum applies to their speech together, so eight spoken digits
    # of 0.4 s each make a usable reference. Clips too short to embed alone are pooled into one.
    total = sum(len(y) for _, y, _ in clips) / cfg.sample_rate
    names = ", ".join(str(p) for p, _, _ in clips)
    if total < MIN_REFERENCE_SECONDS:
        raise UserError(f"{names}: the reference{'s have' if len(clips) > 1 else ' has'} {total:.2f} s of speech "
                        f"in all; at least {MIN_REFERENCE_SECONDS:.0f} s is needed ({GOOD_REFERENCE_SECONDS:.0f}-10 s "
                        "recommended)")
    warnings = notes
    if total < GOOD_REFERENCE_SECONDS:
        warnings.append(f"{names}: only {total:.1f} s of speech in all; {GOOD_REFERENCE_SECONDS:.0f} s or more "
                        "clones the voice more faithfully")
    alone = [f for _, y, f in clips if len(y) >= MIN_REFERENCE_SECONDS * cfg.sample_rate]
    short = [f for _, y, f in clips if len(y) < MIN_REFERENCE_SECONDS * cfg.sample_rate]
    mels = [torch.from_numpy(f.mel.T.copy()) for f in alone]
    if short:
        mels.append(torch.from_numpy(np.concatenate([f.mel for f in short]).T.copy()))
    f0s = [f.f0 for _, _, f in clips]
    device = model.device
    vector = model.acoustic.embed([m.to(device) for m in mels])
    env = timbre.envelope(np.concatenate([f.mel for _, _, f in clips]).T, np.concatenate(f0s))
    median = A.voiced_median(np.concatenate(f0s))
    if median is None or env is None:  # whisper, noise, a hum: a voice without its pitch and timbre
        warnings.append(f"{names}: almost no voiced speech found; the output keeps the source's register and "
                        "is not matched to the reference's timbre")
    return Reference(vector, total, median, warnings, env)


def load_voice(model_path: Path, references: Sequence[Path], device: str | None,
               console: Console) -> tuple[Model, Reference]:
    """Where every conversion command (synthesize, --stream, live) starts: the model with its vocoder on
    `device` (default: cpu) and the target voice, with what the references warn of printed."""
    model = load_model(model_path, need_vocoder=True, device=device or "cpu")
    ref = embed_references(model, references)
    for w in ref.warnings:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)
    return model, ref


def _stored_envelope(values, n_mels: int) -> np.ndarray | None:
    """A fine-tuned voice's envelope from the model's metadata (checked when loaded: bundle.check_meta); None if
    absent (an older model, or a voice too unvoiced to measure: the model's own timbre is then used)."""
    try:
        env = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError):
        return None
    return env if env.shape == (n_mels,) and bool(np.isfinite(env).all()) else None


def _read_reference(path: Path, sample_rate: int, warnings: list[str]) -> np.ndarray:
    """A reference's samples; of a long file the REFERENCE_SECONDS with the most sound, read block by block,
    so an hour-long (or silent) recording costs the memory of a minute.

    The most sound, not the first: "first sound" meant anything above -80 dBFS, so a recording that starts with
    a minute of room tone gave its voice from the noise alone."""
    if _duration(path) <= 2 * REFERENCE_SECONDS:
        return A.load_audio(path, sample_rate)
    want = math.ceil(REFERENCE_SECONDS / REFERENCE_BLOCK_SECONDS)
    window: deque[tuple[np.ndarray, float]] = deque()
    best: list[np.ndarray] = []
    best_sound, first, best_first = -1.0, 0, 0
    for block in A.stream_audio(path, sample_rate, block_seconds=REFERENCE_BLOCK_SECONDS):
        # the sum of the frames' RMS: the voice's frames outweigh room tone by far, and a click counts one frame
        window.append((block, float(A.frame_rms(block, A.LOUDNESS_FRAME).sum())))
        if len(window) > want:
            window.popleft()
            first += 1
        sound = sum(s for _, s in window)
        if len(window) == want and sound > best_sound:
            best, best_sound, best_first = [b for b, _ in window], sound, first
    y = np.concatenate(best)[: int(REFERENCE_SECONDS * sample_rate)] if best else np.zeros(0, np.float32)
    if float(np.abs(y).max(initial=0.0)) >= A.SILENCE_PEAK:
        warnings.append(f"{path}: long reference; the {REFERENCE_SECONDS:.0f} s with the most sound (from "
                        f"{best_first * REFERENCE_BLOCK_SECONDS:.0f} s) were used")
    return y


Window = tuple[np.ndarray, int, int]  # (audio with context, start and end of the piece to keep within it)


def _windows(y: np.ndarray, pieces: list[tuple[int, int]], hop: int, context: int) -> Iterator[Window]:
    """In-memory pieces (a, b) of y -> windows with `context` samples on each side, frame-aligned starts."""
    for a, b in pieces:
        wa = max(0, a - context) // hop * hop
        wb = min(len(y), b + context)
        yield y[wa:wb], a - wa, b - wa


def _stream_windows(blocks: Iterator[np.ndarray], gain: float, sample_rate: int, chunk_seconds: float,
                    context: int) -> Iterator[Window]:
    """The same windows as _windows, cut from a stream: each piece ends at the quietest 20 ms of the second
    half of the next `chunk_seconds` (of what is left, at the end), and only one chunk and its context are
    ever held.

    The samples live in one buffer allocated once and reused (the unconverted rest is moved to its front):
    buffers of a new size for every window fragment the heap until memory grows with the source's length.
    Each window is a view into it, valid until the next window is asked for.
    """
    chunk, frame = int(chunk_seconds * sample_rate), sample_rate // 50
    buf = np.zeros(0, np.float32)
    n, left = 0, 0  # buf[:n] holds samples; buf[:left] was emitted already: it is the next piece's context

    def cut_at(end: int) -> int:
        head = buf[left + chunk // 2 : end]
        return left + chunk // 2 + int(np.argmin(A.frame_rms(head, frame))) * frame

    for block in blocks:
        if n + len(block) > len(buf):  # once (or when a block is longer than any before)
            grown = np.empty(max(n + len(block), chunk + 2 * context + 2 * len(block)), np.float32)
            grown[:n] = buf[:n]
            buf = grown
        np.multiply(block, np.float32(gain), out=buf[n : n + len(block)])
        n += len(block)
        while n - left >= chunk + context:
            cut = cut_at(left + chunk)
            wa = max(0, left - context)
            yield buf[wa : cut + context], left - wa, cut - wa
            drop = max(0, cut - context)
            ctypes.memmove(buf.ctypes.data, buf.ctypes.data + 4 * drop, 4 * (n - drop))  # in place, no temporary
            n, left = n - drop, cut - drop
    # the rest is cut by the same rule, so that the last windows are no longer than the others
    while n - left > chunk // 2 + frame:
        cut = cut_at(min(left + chunk, n))
        if cut <= left:
            break
        wa = max(0, left - context)
        yield buf[wa : min(n, cut + context)], left - wa, cut - wa
        left = cut
    if n > left:
        wa = max(0, left - context)
        yield buf[wa:n], left - wa, n - wa


def _pitch(src_median: float | None, ref: Reference, transpose: float, keep_pitch: bool) -> tuple[float, dict]:
    """The F0 multiplier (the source's register moved to the reference's unless kept, then transposed) and
    what to report of it."""
    ratio = 1.0
    if not keep_pitch and src_median and ref.f0_median:
        ratio = ref.f0_median / src_median
    ratio *= A.semitones_to_ratio(transpose)
    return ratio, {"source_f0_median": src_median, "reference_f0_median": ref.f0_median,
                   "pitch_shift_semitones": float(12 * np.log2(ratio))}


def _context(cfg) -> int:
    """Samples converted on each side of a piece: the model's receptive field, and at least the fade."""
    return max(int(CONTEXT_SECONDS * cfg.sample_rate), int(FADE_SECONDS * cfg.sample_rate))


def _cpu_workers(model: Model, workers: int) -> int:
    """Windows converted at once: `workers` on the CPU; one on a GPU, which runs one window at a time anyway."""
    return workers if model.device.type == "cpu" else 1


def _render(model: Model, windows: Iterator[Window], ref: Reference, ratio: float,
            f0s: list[np.ndarray] | None = None, strength: float = timbre.DEFAULT_STRENGTH,
            workers: int = 1) -> Iterator[np.ndarray]:
    """Convert window by window, `workers` windows at a time (threads.ordered_map); each piece's output is
    faded into by the previous window's overhang, and its timbre matched to the reference's by `strength`
    (timbre.py)."""
    cfg = model.recipe.audio
    fade = int(FADE_SECONDS * cfg.sample_rate)
    device = model.device
    workers = _cpu_workers(model, workers)

    def convert_window(job: tuple[int, Window]) -> tuple[np.ndarray, int, int]:
        k, (x, a, b) = job
        f0_src = f0s[k] if f0s is not None else A.f0(x, cfg)
        with torch.inference_mode():
            mel, energy = A.log_mel(torch.from_numpy(np.ascontiguousarray(x)).to(device), cfg, return_energy=True)
            f0 = torch.from_numpy(f0_src * ratio).to(device)
            out_mel = model.acoustic.convert(mel, f0, energy, ref.vector)
            if strength and ref.envelope is not None:
                own = timbre.envelope(out_mel.float().cpu().numpy(), f0_src)
                out_mel = timbre.match(out_mel, own, ref.envelope, strength)
            wav = model.render(out_mel.unsqueeze(0), f0.unsqueeze(0))[0].float().cpu().numpy()
        return np.pad(wav, (0, max(0, len(x) - len(wav)))), a, b

    if workers > 1:  # a streamed window is a view into a buffer that the next window overwrites
        windows = ((x.copy(), a, b) for x, a, b in windows)
    tail = None
    # each worker on one thread: intra-op threads on top would wait for each other (threads.py)
    with torch_threads(1) if workers > 1 else contextlib.nullcontext():
        for wav, a, b in ordered_map(convert_window, enumerate(windows), workers):
            piece = wav[a:b].copy()
            if tail is not None:
                n = min(len(tail), len(piece))
                w = np.linspace(0.0, 1.0, n, dtype=np.float32)
                piece[:n] = tail[:n] * (1 - w) + piece[:n] * w
            tail = wav[b : b + fade]
            yield np.clip(piece, -1.0, 1.0)


def convert(model: Model, y: np.ndarray, ref: Reference, transpose: float = 0.0, keep_pitch: bool = False,
            chunk_seconds: float = 20.0, strength: float = timbre.DEFAULT_STRENGTH, workers: int = 1
            ) -> tuple[Iterator[np.ndarray], dict]:
    """Convert cleaned source samples y [T] into the reference voice, in pieces of at most chunk_seconds,
    and in at least `workers` pieces of similar length when each can be MIN_PARALLEL_SECONDS long, so that
    the workers finish together.

    Returns (an iterator of output blocks that together are exactly T samples long, info). The pitch shift
    in `info` is known before the first block is produced.
    """
    cfg = model.recipe.audio
    workers = _cpu_workers(model, workers)
    seconds = len(y) / cfg.sample_rate
    count = max(math.ceil(seconds / chunk_seconds), min(workers, int(seconds / MIN_PARALLEL_SECONDS)))
    pieces = A.split_evenly(y, cfg.sample_rate, count, SPLIT_SLACK_SECONDS)
    windows = list(_windows(y, pieces, cfg.hop_length, _context(cfg)))
    # the source register first, and reused while rendering
    f0s = list(ordered_map(lambda w: A.f0(w[0], cfg), windows, workers))
    ratio, info = _pitch(A.voiced_median(np.concatenate(f0s) if f0s else np.zeros(0)), ref, transpose, keep_pitch)
    # one window alone runs on the process's threads: single-threaded workers only pay with windows to share
    blocks = _render(model, iter(windows), ref, ratio, f0s, strength, min(workers, len(windows)))
    return blocks, {**info, "chunks": len(pieces), "timbre": strength}


def convert_stream(model: Model, source: Path, ref: Reference, transpose: float = 0.0, keep_pitch: bool = False,
                   chunk_seconds: float = 20.0, strength: float = timbre.DEFAULT_STRENGTH, workers: int = 1
                   ) -> tuple[Iterator[np.ndarray], dict]:
    """Like convert, for a file of any length, in two passes over it so memory stays flat: the first
    measures its loudness (as audio.normalize_loudness would) and register, the second converts.

    Unlike `clean`, silence at the ends is kept: an hour-long recording is converted in its own timing.
    """
    cfg, prep = model.recipe.audio, model.recipe.prepare
    rms, peaks, f0s, peak, seconds = [], [], [], 0.0, 0.0
    for block in A.stream_audio(source, cfg.sample_rate):
        rms.append(A.frame_rms(block, A.LOUDNESS_FRAME))
        peaks.append(A.frame_peaks(block, A.LOUDNESS_FRAME))
        peak = max(peak, float(np.abs(block).max()))
        f0s.append(A.f0(block, cfg)[::4])  # every 4th frame is plenty for a median
        seconds += len(block) / cfg.sample_rate
    rms_all, peaks_all = np.concatenate(rms), np.concatenate(peaks)
    ceiling = A.outlier_ceiling(rms_all)
    declick = peak > ceiling
    if declick:  # as A.declick does to a file read whole: the frames holding outliers leave the level measure
        keep = peaks_all <= ceiling
        rms_all, peak = rms_all[keep], float(peaks_all[keep].max(initial=0.0))
    if peak < A.SILENCE_PEAK:
        raise A.AudioError(source, "silent")
    gain = A.loudness_gain(rms_all, peak, prep)
    ratio, info = _pitch(A.voiced_median(np.concatenate(f0s) if f0s else np.zeros(0)), ref, transpose, keep_pitch)
    blocks = A.stream_audio(source, cfg.sample_rate)
    if declick:
        blocks = (np.clip(b, -peak, peak) for b in blocks)
    windows = _stream_windows(blocks, gain, cfg.sample_rate, chunk_seconds, _context(cfg))
    return _render(model, windows, ref, ratio, strength=strength, workers=workers), {
        **info, "seconds": seconds, "streamed": True, "timbre": strength}


def _text_to_wav(text: str, folder: Path) -> Path:
    """Speak `text` with espeak-ng's base voice, as OpenVoice pairs a base speaker with a colour converter."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise UserError("--text needs espeak-ng: install it with `apt-get install espeak-ng` "
                        "(Debian/Ubuntu), `brew install espeak-ng` (macOS) or from github.com/espeak-ng")
    if not text.strip():
        raise UserError("--text is empty")
    path = folder / "text.wav"
    # the text on stdin, not as an argument: "-5 degrees" or "--help me" would be read as espeak-ng's options
    r = subprocess.run([exe, "-v", "en-us", "-s", "150", "-w", str(path), "--stdin"],
                       input=text.encode(errors="surrogateescape"), capture_output=True)
    if r.returncode != 0:
        said = r.stderr.decode(errors="replace").strip().splitlines()
        raise UserError(f"--text: espeak-ng failed ({said[0] if said else f'exit code {r.returncode}'})")
    return path


def synthesize_file(model: Model, ref: Reference, source: Path, out: Path, transpose: float = 0.0,
                    keep_pitch: bool = False, sample_rate: int | None = None, chunk_seconds: float = 20.0,
                    subtype: str = "PCM_16", stream: bool | None = None,
                    strength: float = timbre.DEFAULT_STRENGTH, workers: int = 1) -> dict:
    """Convert one source file into `out` (written block by block); strength: timbre matching (timbre.py);
    workers: windows converted at once, each on one thread (threads.render_workers).

    stream: read the source block by block in two passes (memory independent of its length; ends not
    trimmed); None = for sources longer than STREAM_SECONDS.
    """
    cfg = model.recipe.audio
    started = time.perf_counter()
    if stream is None:
        stream = _duration(source) > STREAM_SECONDS
    if stream:
        blocks, info = convert_stream(model, source, ref, transpose, keep_pitch, chunk_seconds, strength, workers)
        seconds = info.pop("seconds")
    else:
        y = A.clean(A.load_audio(source, cfg.sample_rate), model.recipe.prepare, source)
        check_long_enough(y, cfg, source)
        blocks, info = convert(model, y, ref, transpose, keep_pitch, chunk_seconds, strength, workers)
        seconds = len(y) / cfg.sample_rate
    rate = sample_rate or cfg.sample_rate
    write_wav(out, _resampled(blocks, cfg.sample_rate, rate), rate, subtype)
    elapsed = time.perf_counter() - started
    return {"source": str(source), "output": str(out), "seconds": seconds, "elapsed": elapsed,
            "x_real_time": seconds / max(elapsed, 1e-9), "sample_rate": rate, "reference_seconds": ref.seconds, **info}


def _resampled(blocks: Iterator[np.ndarray], rate: int, target: int) -> Iterator[np.ndarray]:
    if rate == target:
        yield from blocks
        return
    resampler = soxr.ResampleStream(rate, target, 1, dtype="float32", quality="HQ")
    for block in blocks:
        yield resampler.resample_chunk(block)
    yield resampler.resample_chunk(np.zeros(0, np.float32), last=True)


def write_wav(out: Path, blocks: Iterable[np.ndarray], rate: int, subtype: str = "PCM_16") -> None:
    """Write mono blocks to `out` through a temporary file beside it, so that a failure (a full disk, an
    unwritable path: one line naming `out`) never leaves a half-written file under the final name."""
    with writing(out.parent):
        out.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_beside(out, ".part")
    try:
        with writing(out):  # opened here first: libsndfile reports every failed open as "System error"
            tmp.open("wb").close()
        # A.sf_path: an output named after a source in another encoding (caf\xe9.wav) is written as named
        with writing(out), _sound_errors(out), sf.SoundFile(A.sf_path(tmp), "w", samplerate=rate, channels=1,
                                                            subtype=subtype, format="WAV") as f:
            for block in blocks:
                f.write(block)
        with writing(out):
            tmp.replace(out)
    finally:
        with contextlib.suppress(OSError):  # on a read-only disk this fails too, and would hide the real error
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _sound_errors(out: Path) -> Iterator[None]:
    """libsndfile reports a failed open or write without its cause; a full disk is the usual one, so when
    the disk is (nearly) full, say that."""
    try:
        yield
    except RuntimeError as e:  # soundfile.LibsndfileError is one; a model's RuntimeError passes unchanged
        if not isinstance(e, sf.LibsndfileError):
            raise
        st = os.statvfs(out.parent)
        if st.f_bavail * st.f_frsize < 1 << 20:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from None
        raise UserError(f"{out}: cannot write ({str(e).strip() or type(e).__name__})") from None


def _duration(path: Path) -> float:
    """Seconds of audio by the file's header; 0 if unreadable (load_audio then names the problem)."""
    if not Path(path).is_file():  # a named pipe would block the open (audio.check_file)
        return 0.0
    try:
        with A.quiet_decoder():
            return float(sf.info(A.sf_path(path)).duration)
    except Exception:  # any header libsndfile cannot parse
        return 0.0


def synthesize(model_path: Path, references: Sequence[Path], out: Path, source: Path | None = None,
               text: str | None = None, transpose: float = 0.0, keep_pitch: bool = False,
               sample_rate: int | None = None, chunk_seconds: float = 20.0, device: str | None = None,
               console: Console | None = None, strength: float = timbre.DEFAULT_STRENGTH, workers: int = 1
               ) -> list[dict]:
    """The `voiceclone synthesize` command: one file, a folder of files, or text; workers: windows converted
    at once on the CPU (threads.render_workers)."""
    console = console or stderr_console()
    if (source is None) == (text is None):
        raise UserError("give exactly one of --source or --text")
    timbre.check_strength(strength)
    check_transpose(transpose)
    # a piece shorter than the context converted on each side of it is mostly waste; 0 divides by zero
    if not 2 * CONTEXT_SECONDS <= chunk_seconds <= MAX_CHUNK_SECONDS:
        raise UserError(f"--chunk-seconds {chunk_seconds:g}: expected {2 * CONTEXT_SECONDS:g}-{MAX_CHUNK_SECONDS:g} s")
    check_sample_rate(sample_rate)
    check_out(out, source, references, folder=source is not None and source.is_dir())
    model, ref = load_voice(model_path, references, device, console)
    kwargs = dict(transpose=transpose, keep_pitch=keep_pitch, sample_rate=sample_rate, chunk_seconds=chunk_seconds,
                  strength=strength, workers=workers)
    results: list[dict] = []
    if text is not None:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                results.append(synthesize_file(model, ref, _text_to_wav(text, Path(tmp)), out, **kwargs))
            except A.AudioError as e:  # named after the text, not the temporary file the user never saw
                shown = text if len(text) <= 40 else text[:40] + "..."
                raise UserError(f"--text {shown!r}: espeak-ng made no speech of it ({e.reason})") from None
    elif source.is_dir():
        # linked subfolders are followed, as prepare follows them (Path.rglob passed them over without a word)
        named = sorted(p for here, _, files in walk_following_links(source) for p in (Path(here) / n for n in files)
                       if A.is_audio_file(p))
        files = [p for p in named if p.is_file()]
        if not files:
            shown = first_few([n.name for n in named])
            found = f" ({len(named)} named like audio, none a readable file: {shown})" if named else ""
            raise UserError(f"{source}: no audio files in this folder{found}")
        if out.suffix.lower() == ".wav":
            raise UserError(f"{out}: with a folder as --source, --out must be a folder")
        failed = []
        for p in named:  # a link to nothing, a pipe: said and skipped, as prepare lists them
            if not p.is_file():
                try:
                    A.check_file(p)
                except A.AudioError as e:
                    failed.append(str(e))
                    console.print(f"[yellow]skipped[/] {escape(one_line(str(e)))}", highlight=False)
        targets = _folder_targets(source, files, out)
        inputs = {f.resolve(): f for f in files}
        for t in targets.values():  # --out inside --source: an output may land on a source file
            if t.resolve() in inputs:
                raise UserError(f"{out}: converting {source} here would overwrite its file {inputs[t.resolve()]}; "
                                "choose another --out")
            # a --reference inside --out, named as a source's output (takes/v.wav -> out/v.wav), was replaced
            # by that conversion; realpath: the references were read, but Path.resolve raises on odd links
            for r in references:
                if os.path.realpath(r) == os.path.realpath(t):
                    raise UserError(f"{out}: converting {source} here would overwrite the --reference {r}; "
                                    "choose another --out")
        with Progress(TextColumn("converting"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=console) as bar:
            task = bar.add_task("convert", total=len(files))
            try:
                for f in files:
                    try:
                        results.append(synthesize_file(model, ref, f, targets[f], **kwargs))
                    except (A.AudioError, FileWriteError) as e:
                        if isinstance(e, FileWriteError) and e.errno not in ONE_OUTPUT_ERRNOS:
                            raise
                        failed.append(str(e))
                        console.print(f"[yellow]skipped[/] {escape(one_line(str(e)))}", highlight=False)
                    bar.advance(task)
            except KeyboardInterrupt:  # Ctrl-C: say what is done (each output is whole: write_wav renames)
                bar.stop()
                console.print(f"interrupted: {len(results)} of {len(files)} files converted into {out}",
                              highlight=False)
                raise
        if not results:
            raise UserError(f"{source}: no file could be converted ({failed[0]})")
    else:
        if not source.exists():
            A.check_file(source)  # missing, or a link that does not resolve: one line that says which
        results.append(synthesize_file(model, ref, source, out, **kwargs))
    _print_summary(console, results)
    return results


def _folder_targets(source: Path, files: list[Path], out: Path) -> dict[Path, Path]:
    """Each source file's output: the same name with .wav, or with .wav added to the whole name where two
    sources share a stem (a.wav and a.flac), so that no output overwrites another."""
    plain = {f: out / f.relative_to(source).with_suffix(".wav") for f in files}
    taken = Counter(plain.values())
    targets = {f: t if taken[t] == 1 or f.suffix == ".wav" else out / f.relative_to(source).with_name(f.name + ".wav")
               for f, t in plain.items()}
    # a longer name may still be another source's output (a.flac -> a.flac.wav beside a source a.flac.wav):
    # such a one takes ".wav" once more, until no two sources share an output
    used = Counter(targets.values())
    for f in files:
        while used[targets[f]] > 1 and f.suffix != ".wav":
            used[targets[f]] -= 1
            targets[f] = targets[f].with_name(targets[f].name + ".wav")
            used[targets[f]] += 1
    return targets


def _print_summary(console: Console, results: list[dict]) -> None:
    table = Table(title="synthesized", show_lines=False,
                  caption="reference: seconds of speech in the references; pitch shift in semitones (st)")
    table.add_column("output", overflow="fold")  # wrap, never cut: a folder's output names differ at the end
    for col in ("duration", "x real time", "reference", "pitch shift"):
        table.add_column(col, no_wrap=True)
    for r in results:
        table.add_row(r["output"], f"{r['seconds']:.2f} s", f"{r['x_real_time']:.1f}x",
                      f"{r['reference_seconds']:.1f} s", f"{r['pitch_shift_semitones']:+.2f} st")
    console.print(table)
