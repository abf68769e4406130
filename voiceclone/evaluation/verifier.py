"""The model-based speaker verifier: a voiceclone model's own speaker encoder (this model's, or another bundle's or
run's) as the embedding function speaker similarity is measured with. It never enters training. The independent
judges (Resemblyzer, Whisper, DNSMOS) are in judges.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from voiceclone import audio as A
from voiceclone.config import AudioConfig
from voiceclone.evaluation.report import identity
from voiceclone.inference.bundle import load_model
from voiceclone.models.acoustic import AcousticModel


@dataclasses.dataclass
class Verifier:
    """The speaker-embedding function similarity is judged with: a model's speaker encoder behind that model's
    own audio front end, fed with waveforms (resampled to its rate when it differs)."""

    acoustic: AcousticModel
    audio: AudioConfig
    identity: dict[str, Any]

    @classmethod
    def from_path(cls, path: Path | str, device: torch.device) -> "Verifier":
        """An external encoder: another voiceclone bundle or run folder (never an unpickled file)."""
        path = Path(path)
        model = load_model(path, need_vocoder=False, device=device)
        return cls(model.acoustic, model.recipe.audio, {"which": "external", **identity(path, model),
                                                        "sample_rate": model.recipe.audio.sample_rate})

    def embed(self, y: np.ndarray, sample_rate: int) -> np.ndarray:
        """y [T] float in [-1, 1] at `sample_rate` -> embedding [S]."""
        y = A.resample(y, sample_rate, self.audio.sample_rate)
        device = next(self.acoustic.parameters()).device
        with torch.inference_mode():
            mel = A.log_mel(torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32)).to(device), self.audio)
            return self.acoustic.embed([mel]).float().cpu().numpy()
