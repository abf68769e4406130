"""Slaney's mel scale and librosa's filter bank, in numpy alone: the audio config checks its bands with them
(config.py) without importing torch, and the mel function (audio/mel.py) builds its basis from them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from voiceclone.config import AudioConfig


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


def empty_bands(cfg: "AudioConfig") -> int:
    """How many bands hold no FFT bin: their mel is the log floor for every sound. A bin has weight in band k
    when it lies strictly between the band's outer edges; counted without building the filter bank, which
    at the largest sizes the config allows is 512 x 8193."""
    freqs = np.linspace(0, cfg.sample_rate / 2, 1 + cfg.n_fft // 2)
    edges = mel_band_edges(cfg)
    first = np.searchsorted(freqs, edges[:-2], side="right")  # each band's first bin above its lower edge
    inside = (first < len(freqs)) & (freqs[np.minimum(first, len(freqs) - 1)] < edges[2:])
    return int((~inside).sum())

