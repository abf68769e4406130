"""The one audio front end: decoding, cleaning, the mel function, F0 and energy on one frame grid.

`prepare`, the training losses, `synthesize` and `evaluate` all call these functions, so a mel computed
anywhere in the project is the same mel. The frame grid: frame i covers the hop [i*hop, (i+1)*hop) at its
centre, and `n_frames = len(audio) // hop`; `features()` crops the audio to exactly `n_frames * hop`
samples, the length the vocoder produces.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numba
import numpy as np
import parselmouth
import soundfile as sf
import soxr
import torch

from voiceclone.config import AudioConfig, PrepareConfig
from voiceclone.errors import UserError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au")
LOG_FLOOR = 1e-5  # log(clamp(x, 1e-5)): HiFi-GAN's floor, about -11.5 in log-mel
SILENCE_PEAK = 1e-4  # a file whose peak stays below this (-80 dBFS) holds no usable signal
LOUDNESS_FRAME = 512  # samples per frame when measuring the active level


class AudioError(UserError):
    """A file that cannot be used; `reason` is the short tag that report.json counts by."""

    def __init__(self, path: Path | str, reason: str, detail: str = "") -> None:
        self.path, self.reason, self.detail = str(path), reason, detail
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))


# ---------------------------------------------------------------------------------------------------
# Decoding and cleaning (numpy, float32, mono).


def load_audio(path: Path | str, sample_rate: int) -> np.ndarray:
    """Decode any format libsndfile reads, mix to mono, resample with soxr (high quality). [T] float32.

    Raises AudioError with one of the reasons: missing, empty file, not audio, corrupt, truncated,
    no samples, non-finite samples.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "missing", "no such file")
    if path.stat().st_size == 0:
        raise AudioError(path, "empty file")
    try:
        with sf.SoundFile(str(path)) as f:
            declared, sr, log = f.frames, f.samplerate, f.extra_info
            y = f.read(dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile raises LibsndfileError, RuntimeError or TypeError by format
        message = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        reason = "not audio" if "not recognised" in message.lower() else "corrupt"
        raise AudioError(path, reason, message) from None
    if _truncated(log, declared, len(y)):
        raise AudioError(path, "truncated", f"{len(y)} of {declared} frames" if declared > len(y) else "")
    if y.size == 0:
        raise AudioError(path, "no samples")
    y = y.mean(axis=1) if y.shape[1] > 1 else y[:, 0]
    if not np.isfinite(y).all():
        raise AudioError(path, "non-finite samples")
    return resample(y, sr, sample_rate)


def resample(y: np.ndarray, rate: int, target: int) -> np.ndarray:
    """[T] at `rate` -> [T * target / rate] float32 at `target` (soxr, high quality)."""
    if rate != target:
        y = soxr.resample(y, rate, target, quality="HQ")
    return np.ascontiguousarray(y, dtype=np.float32)


def _truncated(log: str, declared: int, read: int) -> bool:
    """Whether libsndfile's log or frame count says the file ends before its header says it should.

    libsndfile quietly shortens a WAV whose data chunk runs past the end of the file ("data : N (should be
    M)"), so the log is the only witness; streaming writers declare 0 or 0xFFFFFFFF bytes, which is no
    truncation. Compressed streams (mp3, ogg) instead decode fewer frames than their header declares.
    """
    for m in re.finditer(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", log, re.MULTILINE):
        size, actual = int(m[1]), int(m[2])
        if 0 < size < 0xFFFFFFFF and actual < size:
            return True
    if "ended unexpectedly" in log:
        return True
    # 1% slack: mp3 frame counts from a Xing header are estimates
    return declared > 0 and read < 0.99 * declared


def trim_bounds(y: np.ndarray, top_db: float, frame_length: int = 1024, hop_length: int = 256) -> tuple[int, int]:
    """(start, end) of `y` [T] without the leading and trailing parts quieter than `top_db` below its loudest frame.

    The result of librosa.effects.trim (centred frames, constant padding, frame power in dB relative to
    the loudest frame), computed from one cumulative sum: importing librosa.effects costs seconds per process
    and its framing dominated the cleaning step. (0, 0) when nothing is above the threshold.
    """
    if y.size == 0:
        return 0, 0
    half = frame_length // 2
    sq = np.zeros(len(y) + 2 * half + 1)
    np.cumsum(np.square(y, dtype=np.float64), out=sq[half + 1 : half + 1 + len(y)])
    sq[half + 1 + len(y) :] = sq[half + len(y)]
    n = 1 + (len(y) + 2 * half - frame_length) // hop_length
    starts = np.arange(n) * hop_length
    power = (sq[starts + frame_length] - sq[starts]) / frame_length
    db = 10 * np.log10(np.maximum(power, 1e-10)) - 10 * np.log10(max(float(power.max()), 1e-10))
    loud = np.flatnonzero(db > -top_db)
    if loud.size == 0:
        return 0, 0
    return int(loud[0] * hop_length), int(min(len(y), (loud[-1] + 1) * hop_length))


def normalize_loudness(y: np.ndarray, prep: PrepareConfig) -> np.ndarray:
    """Scale `y` so that its active part (frames within trim_top_db of the loudest) has RMS prep.loudness_db
    dBFS, then lower it if needed so that the peak stays at or below 0.99. [T] -> [T] float32."""
    gain = loudness_gain(_frame_rms(y, LOUDNESS_FRAME), float(np.abs(y).max()) if y.size else 0.0, prep)
    return (y * gain).astype(np.float32)


def loudness_gain(frame_rms: np.ndarray, peak: float, prep: PrepareConfig) -> float:
    """The gain normalize_loudness applies, from the RMS of LOUDNESS_FRAME-sample frames and the peak, so a
    file read block by block gets exactly the treatment of one read whole."""
    active = frame_rms[frame_rms > frame_rms.max() * 10 ** (-prep.trim_top_db / 20)] if frame_rms.size else frame_rms
    level = float(np.sqrt(np.mean(active**2))) if active.size else 0.0
    gain = 10 ** (prep.loudness_db / 20) / max(level, 1e-8)
    if peak * gain > 0.99:  # never clip: loudness yields to the peak
        gain *= 0.99 / (peak * gain)
    return gain


def stream_audio(path: Path | str, sample_rate: int, block_seconds: float = 20.0) -> Iterator[np.ndarray]:
    """Decode block by block, mix to mono, resample with soxr's streaming resampler: [T_i] float32 blocks whose
    concatenation is the file at `sample_rate`. Memory does not depend on the file's length."""
    path = Path(path)
    try:
        f = sf.SoundFile(str(path))
    except Exception as e:  # libsndfile's error types vary by format
        raise AudioError(path, "unreadable", str(e).splitlines()[0][:120]) from None
    with f:
        rs = (soxr.ResampleStream(f.samplerate, sample_rate, 1, dtype="float32", quality="HQ")
              if f.samplerate != sample_rate else None)
        size = max(1, int(block_seconds * f.samplerate))
        while True:
            x = f.read(size, dtype="float32", always_2d=True).mean(axis=1)
            last = len(x) < size
            if not np.isfinite(x).all():
                raise AudioError(path, "non-finite samples")
            y = rs.resample_chunk(x, last=last) if rs is not None else x
            if len(y):
                yield np.ascontiguousarray(y, dtype=np.float32)
            if last:
                return


def clean(y: np.ndarray, prep: PrepareConfig, path: Path | str = "audio") -> np.ndarray:
    """Trim silence at both ends and bring the active part to the target loudness. [T] -> [T'] float32."""
    peak = float(np.abs(y).max()) if y.size else 0.0
    if peak < SILENCE_PEAK:
        raise AudioError(path, "silent")
    start, end = trim_bounds(y, prep.trim_top_db)
    return normalize_loudness(y[start:end], prep)


def utterances(y: np.ndarray, prep: PrepareConfig, sample_rate: int,
               path: Path | str = "audio") -> list[tuple[int, int, np.ndarray]]:
    """A decoded file -> the utterances `prepare` keeps: [(start, end, audio [end - start] float32)].

    Trims the ends, splits what is longer than prep.max_seconds at its quietest points, trims and
    normalizes every piece on its own, and drops pieces shorter than prep.min_seconds. start/end are
    sample positions in `y`. Raises AudioError "silent" or "too short" when nothing is left.
    """
    peak = float(np.abs(y).max()) if y.size else 0.0
    if peak < SILENCE_PEAK:
        raise AudioError(path, "silent")
    a, b = trim_bounds(y, prep.trim_top_db)
    min_len = int(prep.min_seconds * sample_rate)
    spans = split_at_quiet(y[a:b], sample_rate, prep.max_seconds, prep.min_seconds)
    pieces = []
    for s, e in spans:
        piece = y[a + s : a + e]
        if float(np.abs(piece).max(initial=0.0)) < SILENCE_PEAK:
            continue
        if len(spans) > 1:  # cuts land in pauses, so each piece gets its own trimmed ends
            ps, pe = trim_bounds(piece, prep.trim_top_db)
            s, e, piece = s + ps, s + pe, piece[ps:pe]
        if e - s >= min_len:
            pieces.append((a + s, a + e, normalize_loudness(piece, prep)))
    if not pieces:
        raise AudioError(path, "too short", f"{(b - a) / sample_rate:.2f} s after trimming, "
                                            f"minimum {prep.min_seconds:g} s")
    return pieces


def split_at_quiet(y: np.ndarray, sample_rate: int, max_seconds: float, min_seconds: float) -> list[tuple[int, int]]:
    """Cut `y` into pieces of at most max_seconds at its quietest 20 ms, keeping each side >= min_seconds.

    Returns (start, end) sample ranges covering `y`.
    """
    max_len, min_len = int(max_seconds * sample_rate), int(min_seconds * sample_rate)
    if len(y) <= max_len:
        return [(0, len(y))]
    win = max(1, sample_rate // 50)
    rms = _frame_rms(y, win)
    pieces, stack = [], [(0, len(y))]
    while stack:
        a, b = stack.pop()
        if b - a <= max_len:
            pieces.append((a, b))
            continue
        lo, hi = (a + min_len) // win + 1, (b - min_len) // win
        if hi <= lo:  # cannot split while keeping both sides long enough
            pieces.append((a, b))
            continue
        cut = (lo + int(np.argmin(rms[lo:hi]))) * win
        stack += [(cut, b), (a, cut)]
    return sorted(pieces)


def _frame_rms(y: np.ndarray, win: int) -> np.ndarray:
    n = max(1, len(y) // win)
    frames = y[: n * win].reshape(n, win) if len(y) >= win else y[None, :]
    return np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))


# ---------------------------------------------------------------------------------------------------
# THE mel function (torch; any batch shape, any device).


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default): linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / (200.0 / 3)
    log = hz >= 1000.0
    return np.where(log, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0), mel)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0)), mel * (200.0 / 3))


def mel_band_edges(cfg: AudioConfig) -> np.ndarray:
    """[n_mels + 2] Hz: band k rises from edges[k] to its centre edges[k + 1] and falls to edges[k + 2]."""
    return _mel_to_hz(np.linspace(_hz_to_mel(cfg.fmin), _hz_to_mel(cfg.fmax), cfg.n_mels + 2))


def mel_filterbank(cfg: AudioConfig) -> np.ndarray:
    """librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax, htk=False, norm="slaney"): [n_mels, n_fft // 2 + 1]
    float32. The same numbers (tests/test_audio.py compares them) without importing librosa.filters, which
    takes over a second in every process that computes a mel."""
    freqs = np.linspace(0, cfg.sample_rate / 2, 1 + cfg.n_fft // 2)
    edges = mel_band_edges(cfg)
    widths = np.diff(edges)
    ramps = edges[:, None] - freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper)) * (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.astype(np.float32)


@functools.lru_cache(maxsize=16)
def _mel_basis(cfg: AudioConfig, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    # normal tensors even when first asked for under inference_mode: training reuses them under autograd
    with torch.inference_mode(False):
        return (torch.from_numpy(mel_filterbank(cfg)).to(device), torch.hann_window(cfg.win_length).to(device))


def log_mel(audio: torch.Tensor, cfg: AudioConfig, return_energy: bool = False):
    """Log-mel spectrogram on the project's frame grid.

    audio: [..., T] float, in [-1, 1]
    returns: mel [..., n_mels, T // hop] = log(clamp(mel_basis @ |STFT|, 1e-5)) (magnitude, as HiFi-GAN);
             with return_energy, also energy [..., T // hop] = log(clamp(L2 norm of the frame's |STFT|, 1e-5))
    """
    shape = audio.shape
    n = shape[-1] // cfg.hop_length
    if n == 0:  # shorter than one hop: no frame, and torch.stft would reject the padded input
        mel = audio.new_zeros(*shape[:-1], cfg.n_mels, 0, dtype=torch.float32)
        return (mel, audio.new_zeros(*shape[:-1], 0, dtype=torch.float32)) if return_energy else mel
    x = audio.reshape(-1, shape[-1]).float()
    pad = (cfg.n_fft - cfg.hop_length) // 2
    # reflect padding needs pad < T; very short clips fall back to zeros
    mode = "reflect" if x.shape[-1] > pad else "constant"
    x = torch.nn.functional.pad(x.unsqueeze(1), (pad, cfg.n_fft - cfg.hop_length - pad), mode=mode).squeeze(1)
    basis, window = _mel_basis(cfg, str(x.device))
    spec = torch.stft(x, cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length, window=window,
                      center=False, return_complex=True)
    power = spec.real[..., :n] ** 2 + spec.imag[..., :n] ** 2
    # HiFi-GAN's magnitude, sqrt(power + 1e-9): a finite gradient at 0, and 3x faster than complex abs()
    mel = torch.log(torch.clamp(basis @ torch.sqrt(power + 1e-9), min=LOG_FLOOR)).reshape(*shape[:-1], cfg.n_mels, n)
    if not return_energy:
        return mel
    # log(clamp(sqrt(p), floor)) as 0.5 log(clamp(p, floor^2)): no sqrt, so no infinite gradient at silence
    energy = 0.5 * torch.log(torch.clamp(power.sum(dim=-2), min=LOG_FLOOR**2)).reshape(*shape[:-1], n)
    return mel, energy


# ---------------------------------------------------------------------------------------------------
# F0: Praat's autocorrelation method (Boersma 1993) on the same grid.
#
# `f0_ac` is that method re-implemented for speed: every frame at once with numpy FFTs, candidates from the
# windowed autocorrelation divided by the window's own, Praat's candidate strengths and costs, and Praat's
# path finder (compiled with numba). Praat itself (`f0_praat`, kept as the reference) refines each
# candidate with a sinc-70 Brent search and costs about 8 ms per second of speech per core, which alone
# held `prepare` under 130x real time. `f0_ac` is about 5x faster, agrees with Praat to about 2 cents
# (median) on speech and is nearer the true contour on synthetic voices (tests/test_audio.py checks both).

PERIODS_PER_WINDOW = 3.0  # Praat's defaults for To Pitch (ac) from here ...
SILENCE_THRESHOLD = 0.03
VOICING_THRESHOLD = 0.45
OCTAVE_COST = 0.01
OCTAVE_JUMP_COST = 0.35
VOICED_UNVOICED_COST = 0.14  # ... to here
MAX_CANDIDATES = 6  # Praat keeps 15; speech has rarely more than a few strong peaks in the lag range
ANALYSIS_RATE = 8000  # Hz, roughly: decimated by an integer factor towards this rate (periodicity needs no more)
LAG_OVERSAMPLING = 2  # autocorrelation at half-sample lags: short periods (high F0) need the resolution


def _fft_size(n: int) -> int:
    """The smallest 2^k, 3 * 2^k or 5 * 2^k >= n: FFTs are fastest on these, also at twice the size."""
    return min(m << max(0, (n - 1) // m).bit_length() for m in (1, 3, 5))


@functools.lru_cache(maxsize=16)
def _ac_window(width: int, nfft: int, n_lags: int) -> tuple[np.ndarray, np.ndarray]:
    """Praat's Hanning window [width] and the reciprocal of its normalized autocorrelation [n_lags] at the
    oversampled lags (every lag used stays below the window length, where that is positive)."""
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(1, width + 1) / (width + 1))
    ac = np.fft.irfft(np.abs(np.fft.rfft(window, nfft)) ** 2, nfft * LAG_OVERSAMPLING)[:n_lags]
    return window.astype(np.float32), (ac[0] / ac).astype(np.float32)


@numba.njit(cache=True)
def _pitch_path(delta: np.ndarray, logf: np.ndarray, vuv_cost: float, jump_cost: float) -> np.ndarray:
    """Praat's path finder. delta [n, k]: local strength of candidate j in frame t (-inf: none; column 0 is
    the unvoiced candidate), logf [n, k]: log2 of its frequency. Returns [n] the chosen column per frame,
    maximizing total strength minus octave-jump and voiced/unvoiced transition costs."""
    n, k = delta.shape
    best = delta[0].copy()
    new = np.empty(k)
    back = np.zeros((n, k), dtype=np.int64)
    for t in range(1, n):
        for j in range(k):
            if delta[t, j] == -np.inf:
                new[j] = -np.inf
                continue
            top, arg = -np.inf, 0
            for i in range(k):
                if best[i] == -np.inf:
                    continue
                if i == 0 and j == 0:
                    cost = 0.0
                elif i == 0 or j == 0:
                    cost = vuv_cost
                else:
                    cost = jump_cost * abs(logf[t - 1, i] - logf[t, j])
                if best[i] - cost > top:
                    top, arg = best[i] - cost, i
            new[j] = top + delta[t, j]
            back[t, j] = arg
        best[:] = new
    path = np.zeros(n, dtype=np.int64)
    path[n - 1] = np.argmax(best)
    for t in range(n - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    return path


def f0_ac(y: np.ndarray, cfg: AudioConfig) -> np.ndarray:
    """F0 in Hz per frame, 0 where unvoiced, by Praat's autocorrelation method. y: [T] -> [T // hop] float32.

    Frame i is analysed centred at (i + 0.5) * hop samples, the centre of mel frame i, with a Hanning
    window of PERIODS_PER_WINDOW periods of cfg.f0_min; candidates lie in [cfg.f0_min, cfg.f0_max].
    """
    hop, sr = cfg.hop_length, cfg.sample_rate
    n = len(y) // hop
    out = np.zeros(n, dtype=np.float32)
    if n == 0 or not np.any(y):
        return out
    factor = max(1, round(sr / max(ANALYSIS_RATE, 7 * cfg.f0_max)))  # an integer ratio resamples fastest
    fs = sr / factor
    # soxr's low quality: its gentler anti-alias filter cannot move a periodicity, and it is twice as fast
    x = soxr.resample(y, sr, fs, quality="LQ") if factor > 1 else np.asarray(y, dtype=np.float32)
    width = int(PERIODS_PER_WINDOW / cfg.f0_min * fs) // 2 * 2
    half, period = width // 2, int(fs / cfg.f0_min)
    max_lag, min_lag = min(period + 2, width - 1), max(2, int(fs / cfg.f0_max))
    nfft = _fft_size(width + max_lag + 2)  # no circular wrap up to max_lag
    n_lags = max_lag * LAG_OVERSAMPLING + 2
    window, window_ac_inverse = _ac_window(width, nfft, n_lags)

    padded = np.zeros(len(x) + width + 1, dtype=np.float32)
    padded[half : half + len(x)] = x
    centres = np.round((np.arange(n) + 0.5) * (hop / factor)).astype(np.int64)
    frames = np.lib.stride_tricks.sliding_window_view(padded, width)[centres]  # [n, width], centred on centres[i]
    frames -= frames[:, max(half - period, 0) : half + period].mean(axis=1, keepdims=True)  # Praat: +-1 period
    frames *= window
    global_peak = float(np.abs(x - x.mean()).max())
    local_peak = np.abs(frames[:, half - period // 2 : half + period // 2]).max(axis=1)
    # torch's FFTs (MKL) take a third of the time of numpy's or scipy's at these sizes
    spec = torch.fft.rfft(torch.from_numpy(frames), nfft, dim=1)
    # zero-padding the power spectrum = sinc interpolation of the autocorrelation at the oversampled lags
    ac = torch.fft.irfft(spec.real**2 + spec.imag**2, nfft * LAG_OVERSAMPLING, dim=1)[:, :n_lags].numpy()
    energy0 = ac[:, 0]
    scale = np.divide(1.0, energy0, out=np.zeros_like(energy0), where=energy0 > 0)  # silent frames: r = 0
    r = (ac * scale[:, None]) * window_ac_inverse

    # candidates: local maxima of r above half the voicing threshold, refined by a parabola
    a, b = min_lag * LAG_OVERSAMPLING, max_lag * LAG_OVERSAMPLING
    mid, left, right = r[:, a : b + 1], r[:, a - 1 : b], r[:, a + 1 : b + 2]
    fi, li = np.nonzero((mid > left) & (mid >= right) & (mid > 0.5 * VOICING_THRESHOLD))
    rm, rl, rr = mid[fi, li], left[fi, li], right[fi, li]
    slope, curve = 0.5 * (rr - rl), 2 * rm - rl - rr
    with np.errstate(divide="ignore", invalid="ignore"):  # a flat top rounds the curvature to 0 in float32
        shift = np.clip(np.nan_to_num(slope / curve), -0.5, 0.5)  # the vertex is within half a lag of the peak
    freq = fs * LAG_OVERSAMPLING / (li + a + shift)
    strength = rm + 0.5 * slope * shift
    strength = np.where(strength > 1, 1 / strength, strength)  # Praat: peaks above 1 (short windows) reflect
    ok = (freq >= cfg.f0_min) & (freq <= cfg.f0_max)
    fi, freq, strength = fi[ok], freq[ok], strength[ok]
    # each frame keeps its MAX_CANDIDATES best, ranked as Praat ranks them (a slight bonus for high F0);
    # np.nonzero listed them frame by frame, so sorting is only needed when some frame has too many
    rank = np.arange(len(fi)) - np.searchsorted(fi, fi)
    if len(rank) and rank.max() >= MAX_CANDIDATES:
        order = np.lexsort((-(strength - OCTAVE_COST * np.log2(cfg.f0_min / freq)), fi))
        fi, freq, strength = fi[order], freq[order], strength[order]
    keep = rank < MAX_CANDIDATES
    fi, freq, strength, col = fi[keep], freq[keep], strength[keep], rank[keep] + 1

    delta = np.full((n, MAX_CANDIDATES + 1), -np.inf)
    logf = np.zeros((n, MAX_CANDIDATES + 1))
    hz = np.zeros((n, MAX_CANDIDATES + 1))
    delta[fi, col] = strength - OCTAVE_COST * np.log2(cfg.f0_max / freq)
    logf[fi, col], hz[fi, col] = np.log2(freq), freq
    intensity = np.minimum(local_peak / max(global_peak, 1e-12), 1.0)
    delta[:, 0] = VOICING_THRESHOLD + np.maximum(2.0 - intensity / (SILENCE_THRESHOLD / (1 + VOICING_THRESHOLD)), 0.0)
    per_step = 0.01 / (hop / sr)  # Praat scales its transition costs to a 10 ms time step
    path = _pitch_path(delta, logf, VOICED_UNVOICED_COST * per_step, OCTAVE_JUMP_COST * per_step)
    out[:] = hz[np.arange(n), path]
    return out


def f0_praat(y: np.ndarray, cfg: AudioConfig) -> np.ndarray:
    """F0 in Hz per frame, 0 where unvoiced, from Praat itself (parselmouth). y: [T] -> [T // hop] float32.

    The reference `f0_ac` is checked against. Praat centres its own frame grid in the sound, up to half a
    frame away from ours, so its values are interpolated (in log frequency between voiced neighbours, else
    the nearest) to our frame centres (i + 0.5) * hop.
    """
    n = len(y) // cfg.hop_length
    out = np.zeros(n, dtype=np.float32)
    if n == 0:
        return out
    snd = parselmouth.Sound(y.astype(np.float64), sampling_frequency=cfg.sample_rate)
    step = cfg.hop_length / cfg.sample_rate
    try:
        pitch = snd.to_pitch_ac(time_step=step, pitch_floor=cfg.f0_min, pitch_ceiling=cfg.f0_max,
                                very_accurate=False)
    except parselmouth.PraatError:  # too short for one analysis window: all unvoiced
        return out
    values = np.nan_to_num(pitch.selected_array["frequency"].astype(np.float64), nan=0.0)
    if values.size == 0:
        return out
    if values.size == 1:
        out[:] = values[0]
        return out
    u = np.clip(((np.arange(n) + 0.5) * step - pitch.x1) / pitch.dx, 0, values.size - 1)
    k = np.minimum(np.floor(u).astype(int), values.size - 2)
    w = u - k
    lo, hi = values[k], values[k + 1]
    res = np.where(w < 0.5, lo, hi)
    both = (lo > 0) & (hi > 0)
    res[both] = np.exp((1 - w[both]) * np.log(lo[both]) + w[both] * np.log(hi[both]))
    out[:] = res
    return out


def f0(y: np.ndarray, cfg: AudioConfig) -> np.ndarray:
    """The project's F0 extractor: [T] -> [T // hop] float32 Hz, 0 = unvoiced. One entry point, so another
    (a GPU one) can be chosen here."""
    return f0_ac(y, cfg)


# ---------------------------------------------------------------------------------------------------
# All features of one utterance.


@dataclass
class Features:
    audio: np.ndarray  # [n_frames * hop] float32
    mel: np.ndarray  # [n_frames, n_mels] float32 (time-major, as stored)
    f0: np.ndarray  # [n_frames] float32, Hz, 0 = unvoiced
    energy: np.ndarray  # [n_frames] float32

    @property
    def n_frames(self) -> int:
        return len(self.f0)


def features(y: np.ndarray, cfg: AudioConfig) -> Features:
    """Every feature of one utterance on the one frame grid. y: [T] -> Features with n_frames = T // hop
    (audio cropped to n_frames * hop samples, the length the vocoder produces)."""
    n = len(y) // cfg.hop_length
    y = np.ascontiguousarray(y[: n * cfg.hop_length], dtype=np.float32)
    with torch.inference_mode():
        mel, energy = log_mel(torch.from_numpy(y), cfg, return_energy=True)
    return Features(audio=y, mel=mel.T.contiguous().numpy(), f0=f0(y, cfg), energy=energy.numpy())


def semitones_to_ratio(semitones: float) -> float:
    return 2.0 ** (semitones / 12.0)


def cents(ratio: np.ndarray | float) -> np.ndarray | float:
    return 1200.0 * np.log2(ratio)


def is_audio_file(path: Path) -> bool:
    return path.suffix.lower() in AUDIO_EXTENSIONS and not path.name.startswith(".")
