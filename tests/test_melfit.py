"""inference/melfit.py: the vocoder's output fitted to its mel above the bands that resolve harmonics."""

from __future__ import annotations

import numpy as np
import torch

from voiceclone import audio as A
from voiceclone.config import AudioConfig
from voiceclone.inference import melfit
from voiceclone.synthetic import make_speakers, synth_utterance

CFG = AudioConfig(sample_rate=16000, n_fft=1024, win_length=1024, hop_length=256, n_mels=80, fmin=0.0, fmax=8000.0)


def _speech(seconds: float = 1.5) -> torch.Tensor:
    y, _ = synth_utterance(make_speakers(1, seed=3)[0], seconds, CFG.sample_rate, seed=3)
    return torch.from_numpy(y[: len(y) // CFG.hop_length * CFG.hop_length].astype(np.float32))


def _tilted(y: torch.Tensor, db: float) -> torch.Tensor:
    """y with everything above 2.5 kHz `db` louder (an FFT-domain shelf), the same length."""
    spec = torch.fft.rfft(y.double())
    freqs = torch.fft.rfftfreq(len(y), 1 / CFG.sample_rate)
    spec[freqs > 2500] *= 10 ** (db / 20)
    return torch.fft.irfft(spec, n=len(y)).float()


def _band_error(y: torch.Tensor, mel: torch.Tensor) -> tuple[float, float]:
    """Mean |log-mel difference| below 1.5 kHz and above 2.5 kHz (bands by centre)."""
    centres = torch.from_numpy(A.mel_band_edges(CFG)[1:-1])
    err = (A.log_mel(y, CFG) - mel).abs().mean(-1)
    return float(err[centres < 1500].mean()), float(err[centres > 2500].mean())


def test_the_high_bands_are_brought_back_to_the_mel_and_the_low_ones_left_alone():
    y = _speech()
    mel = A.log_mel(y, CFG)
    off = _tilted(y, -9.0)  # a vocoder 9 dB short in the upper bands
    fitted = melfit.fit_to_mel(off[None], mel[None], CFG)[0]
    assert fitted.shape == y.shape
    low_before, high_before = _band_error(off, mel)
    low_after, high_after = _band_error(fitted, mel)
    assert high_before > 0.9  # 9 dB is about 1 neper
    assert high_after < 0.2 * high_before
    assert low_after < low_before + 0.05  # below 2 kHz the fit does not act


def test_audio_that_already_has_its_mel_is_left_nearly_unchanged():
    y = _speech()
    fitted = melfit.fit_to_mel(y[None], A.log_mel(y, CFG)[None], CFG)[0]
    assert float((fitted - y).abs().max()) < 1e-3


def test_a_band_moves_by_20_db_at_most_over_all_passes():
    y = _speech()
    mel = A.log_mel(y, CFG)
    fitted = melfit.fit_to_mel(y[None], (mel + 5.0)[None], CFG, passes=5)[0]  # asks for +43 dB
    _, high = _band_error(fitted, mel)
    assert 1.5 < high < melfit.GAIN_LIMIT + 0.3


def test_nothing_to_fit_returns_the_audio():
    empty = torch.zeros(1, 0)
    assert melfit.fit_to_mel(empty, torch.zeros(1, CFG.n_mels, 0), CFG) is empty
    y = _speech()[None]
    assert melfit.fit_to_mel(y, A.log_mel(y, CFG), CFG, passes=0) is y
    assert melfit.fit_to_mel(y, A.log_mel(y, CFG), CFG, from_hz=CFG.sample_rate) is y
