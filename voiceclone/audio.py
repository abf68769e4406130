"""The one audio front end: decoding, cleaning, the mel function, F0 and energy on one frame grid.

`prepare`, the training losses, `synthesize` and `evaluate` all call these functions, so a mel computed
anywhere in the project is the same mel. The frame grid: frame i covers the hop [i*hop, (i+1)*hop) at its
centre, and `n_frames = len(audio) // hop`; `features()` crops the audio to exactly `n_frames * hop`
samples, the length the vocoder produces.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import parselmouth
import soundfile as sf
import torch

from voiceclone.config import AudioConfig, PrepareConfig
from voiceclone.errors import UserError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au")
LOG_FLOOR = 1e-5  # log(clamp(x, 1e-5)): HiFi-GAN's floor, about -11.5 in log-mel


class AudioError(UserError):
    """A file that cannot be used; `reason` is the short tag that report.json counts by."""

    def __init__(self, path: Path | str, reason: str, detail: str = "") -> None:
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))


# ---------------------------------------------------------------------------------------------------
# Decoding and cleaning (numpy, float32, mono).


def load_audio(path: Path | str, sample_rate: int) -> np.ndarray:
    """Decode any format libsndfile reads, mix to mono, resample with soxr (high quality). [T] float32."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "missing", "no such file")
    if path.stat().st_size == 0:
        raise AudioError(path, "empty file")
    try:
        y, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile raises LibsndfileError, RuntimeError or TypeError by format
        raise AudioError(path, "unreadable", str(e).splitlines()[0][:120]) from None
    if y.size == 0:
        raise AudioError(path, "no samples")
    y = y.mean(axis=1)
    if not np.isfinite(y).all():
        raise AudioError(path, "non-finite samples")
    if sr != sample_rate:
        y = librosa.resample(y, orig_sr=sr, target_sr=sample_rate, res_type="soxr_hq")
    return np.ascontiguousarray(y, dtype=np.float32)


def clean(y: np.ndarray, prep: PrepareConfig, path: Path | str = "audio") -> np.ndarray:
    """Trim silence at both ends and bring the active part to the target loudness."""
    peak = float(np.abs(y).max()) if y.size else 0.0
    if peak < 1e-4:
        raise AudioError(path, "silent")
    y, _ = librosa.effects.trim(y, top_db=prep.trim_top_db, frame_length=1024, hop_length=256)
    rms = _frame_rms(y, 512)
    active = rms[rms > rms.max() * 10 ** (-prep.trim_top_db / 20)]
    level = float(np.sqrt(np.mean(active**2))) if active.size else float(np.sqrt(np.mean(y**2)))
    gain = 10 ** (prep.loudness_db / 20) / max(level, 1e-8)
    y = y * gain
    peak = float(np.abs(y).max())
    if peak > 0.99:  # never clip: loudness yields to the peak
        y = y * (0.99 / peak)
    return y.astype(np.float32)


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


@functools.lru_cache(maxsize=16)
def _mel_basis(cfg: AudioConfig, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    basis = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin,
                                fmax=cfg.fmax, htk=False, norm="slaney")
    return (torch.from_numpy(basis).float().to(device), torch.hann_window(cfg.win_length).to(device))


def log_mel(audio: torch.Tensor, cfg: AudioConfig, return_energy: bool = False):
    """Log-mel spectrogram on the project's frame grid.

    audio: [..., T] float, in [-1, 1]
    returns: mel [..., n_mels, T // hop] = log(clamp(mel_power, 1e-5));
             with return_energy, also energy [..., T // hop] = log(clamp(frame L2 magnitude, 1e-5))
    """
    shape = audio.shape
    x = audio.reshape(-1, shape[-1]).float()
    pad = (cfg.n_fft - cfg.hop_length) // 2
    # reflect padding needs pad < T; very short clips fall back to zeros
    mode = "reflect" if x.shape[-1] > pad else "constant"
    x = torch.nn.functional.pad(x.unsqueeze(1), (pad, cfg.n_fft - cfg.hop_length - pad), mode=mode).squeeze(1)
    basis, window = _mel_basis(cfg, str(x.device))
    spec = torch.stft(x, cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length, window=window,
                      center=False, return_complex=True)
    mag = spec.abs()  # HiFi-GAN's convention: mel of magnitude, not power
    n = shape[-1] // cfg.hop_length
    mag = mag[..., :n]
    mel = torch.log(torch.clamp(basis @ mag, min=LOG_FLOOR)).reshape(*shape[:-1], cfg.n_mels, n)
    if not return_energy:
        return mel
    energy = torch.log(torch.clamp(mag.norm(dim=-2), min=LOG_FLOOR)).reshape(*shape[:-1], n)
    return mel, energy


# ---------------------------------------------------------------------------------------------------
# F0 (Praat's autocorrelation method) on the same grid.


def f0_praat(y: np.ndarray, cfg: AudioConfig) -> np.ndarray:
    """F0 in Hz per frame, 0 where unvoiced. y: [T] float -> [T // hop] float32.

    Frame i is centred at (i + 0.5) * hop samples, the centre of the mel frame i.
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
    values = pitch.selected_array["frequency"].astype(np.float32)
    if values.size == 0:
        return out
    t = (np.arange(n) + 0.5) * step
    idx = np.clip(np.round((t - pitch.x1) / pitch.dx).astype(int), 0, values.size - 1)
    out[:] = values[idx]
    out[~np.isfinite(out)] = 0.0
    return out


def f0(y: np.ndarray, cfg: AudioConfig) -> np.ndarray:
    """The project's F0 extractor. One entry point, so another (a GPU one) can be chosen here."""
    return f0_praat(y, cfg)


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
