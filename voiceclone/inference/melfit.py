"""The vocoder's output fitted to the mel it was asked for, above the bands that resolve harmonics.

The vocoder renders a mel only approximately: re-measured, its output's mel departs from the input by
3-4 dB per band and frame, and on real mels that departure is most of what copy synthesis loses of the
voice and the words (benchmarks/voice_loss.py: SECS 0.846 -> 0.900, WER 17.7 -> 7.7 when fitted back).

Fitting a *converted* mel in every band breaks the sound (DNSMOS 2.71 -> 1.58): below about 2 kHz a mel
band is narrower than the spacing of a voice's harmonics, so its energy says where harmonics are, and the
converted mel's harmonics need not sit where the F0 the vocoder renders puts them. From 2 kHz up a band is
150 Hz wide or more (Slaney's scale) and its energy is the spectral envelope's, which the vocoder should
follow. Fitted there only, the converted speech kept 5.5 more words in a hundred (95% interval 3.1-7.8)
and moved 0.004 nearer the target, for 0.04 of DNSMOS (50 held-out pairs,
benchmarks/results/zero_shot_quality-amd-epyc-2core.md).

The fit rescales the output's STFT, frame by frame, each bin by the filter-weighted mean of its bands' log
gains (mel wanted minus mel measured), and inverts it on the same frame grid. An inverse STFT of a rescaled
STFT is not exactly that STFT again, so more passes come closer to the mel; but on conversions one pass
judged as well as three (the same words and SECS, 0.01 more DNSMOS, the same 50 pairs) at a third of the
cost, so synthesis makes one. benchmarks/voice_loss.py, which measures how much of a real mel the fit can
restore, makes three.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from voiceclone import audio as A
from voiceclone.config import AudioConfig
from voiceclone.models.vocoder import ISTFT

FIT_FROM_HZ = 2000.0
PASSES = 1
GAIN_LIMIT = math.log(10.0)  # 20 dB in all: a band the vocoder left silent is not raised to speech


@functools.lru_cache(maxsize=8)
def _bin_weights(cfg: AudioConfig, from_hz: float) -> Tensor:
    """[bins, n_mels]: each STFT bin's weights on the bands it belongs to (rows sum to 1 where any band
    covers the bin), zero for the bands centred below from_hz."""
    basis = torch.from_numpy(A.mel_filterbank(cfg))  # [n_mels, bins]
    weights = basis / basis.sum(0, keepdim=True).clamp(min=1e-12)
    centres = torch.from_numpy(A.mel_band_edges(cfg)[1:-1])
    return (weights * (centres >= from_hz).to(weights.dtype)[:, None]).T.contiguous()


@functools.lru_cache(maxsize=8)
def _istft(cfg: AudioConfig, device: str) -> ISTFT:
    """One inverse STFT per config and device: the stream renders a block every few hundred ms, and each new
    module would build its window and copy it to the device again."""
    with torch.inference_mode(False):  # a normal tensor even when first asked for under inference_mode
        return ISTFT(cfg.n_fft, cfg.hop_length, cfg.win_length).to(device)


def fit_to_mel(audio: Tensor, mel: Tensor, cfg: AudioConfig, from_hz: float = FIT_FROM_HZ,
               passes: int = PASSES) -> Tensor:
    """audio [B, T * hop] (the vocoder's), mel [B, n_mels, T] (what it was given) -> audio [B, T * hop]."""
    frames = mel.shape[-1]
    if frames == 0 or passes <= 0 or from_hz >= cfg.sample_rate / 2:
        return audio
    weights = _bin_weights(cfg, from_hz).to(audio.device)
    istft = _istft(cfg, str(audio.device))
    x, wanted = audio.float(), mel.float()
    total = torch.zeros_like(wanted)  # each band's gain so far, held within GAIN_LIMIT over all passes
    for _ in range(passes):
        spec = A.spectrogram(x, cfg)  # [B, bins, T]
        step = (total + wanted - A.mel_of_spectrogram(spec, cfg)).clamp(-GAIN_LIMIT, GAIN_LIMIT) - total
        total = total + step
        x = istft((spec * torch.exp(weights @ step)).transpose(1, 2))
    return x.to(audio.dtype)
