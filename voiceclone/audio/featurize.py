"""All features of one utterance (audio, log-mel, F0, energy) on the one frame grid: what `prepare` stores
and `synthesize` computes for its inputs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from voiceclone.audio.mel import log_mel
from voiceclone.audio.pitch import f0
from voiceclone.config import AudioConfig


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
