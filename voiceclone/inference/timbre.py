"""Timbre matching: the converted mel's long-term spectral envelope moved onto the reference's.

A small converter trained on a few hundred voices renders an unseen voice nearer the average voice than the
voice is: outputs of one source converted into different targets are more alike than the targets (measured in
benchmarks/results/zero_shot_levers-amd-epyc-2core.md). The long-term average spectrum of the voiced frames is
much of what tells one voice from another (vocal-tract length, tilt, nasality), and the reference gives it
directly. So after the acoustic model, each mel bin of the output is shifted by `strength` times the difference
between the reference's envelope and the output's own, measured over voiced frames, with the average over bins
removed from both so the loudness stays the source's. The shift is constant in time: what is said, its pitch
and its dynamics are untouched; `strength` 0 leaves the model's output as it is.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from voiceclone.errors import UserError
from voiceclone.inference import TIMBRE_STRENGTH

DEFAULT_STRENGTH = TIMBRE_STRENGTH  # full matching; 0 = the model's own envelope
MAX_STRENGTH = 2.0
MIN_VOICED_FRAMES = 25  # about 0.3-0.6 s: fewer make the envelope a property of the words, not the voice


def envelope(mel: np.ndarray, f0: np.ndarray) -> np.ndarray | None:
    """mel [n_mels, T] (log), f0 [T'] (0 = unvoiced; the shorter of T and T' is used) -> the mean log-mel of the
    voiced frames [n_mels] minus its mean over bins; None with fewer than MIN_VOICED_FRAMES voiced frames."""
    n = min(mel.shape[1], len(f0))
    voiced = np.asarray(f0[:n]) > 0
    if int(voiced.sum()) < MIN_VOICED_FRAMES:
        return None
    return level_removed(np.asarray(mel[:, :n], dtype=np.float64)[:, voiced].mean(1))


def level_removed(mean: np.ndarray) -> np.ndarray:
    """A mean log-mel [n_mels] as an envelope: its mean over bins (the level) subtracted."""
    return (mean - mean.mean()).astype(np.float32)


def shift(own: np.ndarray | None, target: np.ndarray | None, strength: float) -> np.ndarray | None:
    """The per-bin shift [n_mels] that moves `own` envelope `strength` of the way to `target`; None when
    there is nothing to do (strength 0, or either envelope unknown)."""
    if not strength or own is None or target is None:
        return None
    return (strength * (target - own)).astype(np.float32)


def match(mel: Tensor, own: np.ndarray | None, target: np.ndarray | None, strength: float) -> Tensor:
    """mel [n_mels, T] shifted per bin by strength * (target - own); unchanged when either envelope is None."""
    d = shift(own, target, strength)
    return mel if d is None else mel + torch.from_numpy(d).to(device=mel.device, dtype=mel.dtype).unsqueeze(1)


def check_strength(strength: float) -> None:
    """--timbre is a fraction of the way to the reference's envelope; far past 1 it only exaggerates."""
    if not 0.0 <= strength <= MAX_STRENGTH:
        raise UserError(f"--timbre {strength}: expected 0-{MAX_STRENGTH:g} (0 = the model's own timbre, "
                        "1 = the reference's long-term spectrum)")
