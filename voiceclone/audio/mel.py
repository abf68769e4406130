"""THE mel function (torch; any batch shape, any device) and the frame energy, on the project's frame grid.

Frame i covers the hop [i*hop, (i+1)*hop) at its centre, and `n_frames = len(audio) // hop`. Every mel in
the project (prepare, the training losses, synthesize, evaluate) is computed here, so it is the same mel.
"""

from __future__ import annotations

import functools

import torch

from voiceclone.config import AudioConfig
from voiceclone.melscale import mel_filterbank

LOG_FLOOR = 1e-5  # log(clamp(x, 1e-5)): HiFi-GAN's floor, about -11.5 in log-mel


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
    spec = spectrogram(audio, cfg)
    power = spec.real**2 + spec.imag**2
    mel = _log_mel_of_power(power, cfg)
    if not return_energy:
        return mel
    # log(clamp(sqrt(p), floor)) as 0.5 log(clamp(p, floor^2)): no sqrt, so no infinite gradient at silence
    energy = 0.5 * torch.log(torch.clamp(power.sum(dim=-2), min=LOG_FLOOR**2))
    return mel, energy


def spectrogram(audio: torch.Tensor, cfg: AudioConfig) -> torch.Tensor:
    """The STFT that log_mel measures: audio [..., T] -> complex [..., n_fft // 2 + 1, T // hop], frame i
    centred on the hop [i*hop, (i+1)*hop) (the inverse on this grid is models.vocoder.ISTFT)."""
    shape = audio.shape
    n = shape[-1] // cfg.hop_length
    bins = cfg.n_fft // 2 + 1
    if n == 0:  # shorter than one hop: no frame, and torch.stft would reject the padded input
        return torch.zeros(*shape[:-1], bins, 0, dtype=torch.complex64, device=audio.device)
    x = audio.reshape(-1, shape[-1]).float()
    pad = (cfg.n_fft - cfg.hop_length) // 2
    # reflect padding needs pad < T; very short clips fall back to zeros
    mode = "reflect" if x.shape[-1] > pad else "constant"
    x = torch.nn.functional.pad(x.unsqueeze(1), (pad, cfg.n_fft - cfg.hop_length - pad), mode=mode).squeeze(1)
    _, window = _mel_basis(cfg, str(x.device))
    spec = torch.stft(x, cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length, window=window,
                      center=False, return_complex=True)
    return spec[..., :n].reshape(*shape[:-1], bins, n)


def mel_of_spectrogram(spec: torch.Tensor, cfg: AudioConfig) -> torch.Tensor:
    """log_mel of audio whose `spectrogram` is spec [..., bins, T] -> [..., n_mels, T]."""
    return _log_mel_of_power(spec.real**2 + spec.imag**2, cfg)


def _log_mel_of_power(power: torch.Tensor, cfg: AudioConfig) -> torch.Tensor:
    basis, _ = _mel_basis(cfg, str(power.device))
    # HiFi-GAN's magnitude, sqrt(power + 1e-9): a finite gradient at 0, and 3x faster than complex abs()
    return torch.log(torch.clamp(basis @ torch.sqrt(power + 1e-9), min=LOG_FLOOR))
