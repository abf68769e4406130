"""Training-time perturbations of log-mel spectrograms (training only; inference never imports this).

Two different jobs (docs/architecture.md section 6):
- content perturbation: the content encoder's input is warped along frequency (a formant shift, FreeVC's
  spectrogram-resize idea), tilted by a random EQ and a random gain, so the encoder cannot pass the source
  voice through to the decoder;
- virtual speakers: one random warp applied to both the target and the reference (and F0 scaled to
  match), so the decoder sees a continuum of timbres instead of a few dozen points.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from voiceclone.audio import LOG_FLOOR, mel_band_edges
from voiceclone.config import AudioConfig, PerturbConfig


def warp_frequency(mel: Tensor, ratio: Tensor, cfg: AudioConfig) -> Tensor:
    """Move the spectral content of each item from f to f * ratio (ratio > 1: smaller vocal tract).

    mel [B, n_mels, T] log-mel, ratio [B] -> [B, n_mels, T]. Bands whose source lies above fmax get the floor.
    """
    centres = torch.as_tensor(mel_band_edges(cfg)[1:-1], dtype=torch.float32, device=mel.device)  # [M]
    src_hz = centres[None, :] / ratio[:, None].float()  # [B, M]: where each output band reads from
    # fractional band index of src_hz, by linear interpolation over the (monotonic) band centres
    idx = torch.searchsorted(centres, src_hz.contiguous()).clamp(1, len(centres) - 1)
    lo_hz, hi_hz = centres[idx - 1], centres[idx]
    frac = ((src_hz - lo_hz) / (hi_hz - lo_hz)).clamp(0, 1)
    lo = torch.gather(mel, 1, (idx - 1).unsqueeze(-1).expand(-1, -1, mel.shape[-1]))
    hi = torch.gather(mel, 1, idx.unsqueeze(-1).expand(-1, -1, mel.shape[-1]))
    out = lo + (hi - lo) * frac.unsqueeze(-1).to(mel.dtype)
    beyond = (src_hz > centres[-1]).unsqueeze(-1)
    return torch.where(beyond, torch.full_like(out, float(np.log(LOG_FLOOR))), out)


def random_ratio(batch: int, max_semitones: float, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> Tensor:
    """Log-uniform ratios within +-max_semitones: [B]."""
    u = torch.rand(batch, generator=generator) * 2 - 1
    return (2 ** (u * max_semitones / 12)).to(device)


def perturb_content(mel: Tensor, cfg: AudioConfig, generator: torch.Generator | None = None,
                    perturb: PerturbConfig | None = None) -> Tensor:
    """Formant shift, random EQ (a smooth curve over frequency) and gain; the defaults (+-3 semitones,
    3 cosine terms of +-0.35 neper, +-0.7 neper = +-6 dB) are the original settings.

    mel [B, n_mels, T] -> [B, n_mels, T]
    """
    p = perturb or PerturbConfig()
    b, m, _ = mel.shape
    out = warp_frequency(mel, random_ratio(b, p.formant_semitones, generator, mel.device), cfg)
    # smooth EQ: a random combination of low-order cosines over the band axis
    k = torch.arange(1, p.eq_terms + 1, dtype=torch.float32)
    basis = torch.cos(torch.pi * k[:, None] * torch.linspace(0, 1, m)[None, :])  # [K, M]
    coeffs = (torch.rand(b, p.eq_terms, generator=generator) * 2 - 1) * p.eq_depth
    eq = (coeffs @ basis).to(mel.device)  # [B, M] in ln units
    gain = ((torch.rand(b, 1, generator=generator) * 2 - 1) * p.gain).to(mel.device)
    return out + (eq + gain).unsqueeze(-1).to(mel.dtype)
