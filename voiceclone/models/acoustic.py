"""The zero-shot acoustic model: (what is said, how high, who) -> mel.

    source mel --ContentEncoder--> content [B, C, T]   (instance-normalized, narrow: carries no speaker)
    reference mel --SpeakerEncoder--> speaker [B, S]   (attentive statistics pooling over any length)
    content + pitch (log-F0, voicing) + energy --Decoder(speaker)--> mel [B, n_mels, T]

During training the content input is perturbed (stages/augment.py) so the encoder cannot pass the source
voice through; the speaker comes from a *different* utterance of the target speaker. Inference code uses
this module only; nothing here imports training code.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from voiceclone.config import AcousticModelConfig, AudioConfig
from voiceclone.models.modules import ConvNeXtBlock, pitch_features

INSTANCE_NORM_EPS = 1e-5  # the content encoder's; a stream (and an ONNX runtime) normalizes with the same


def energy_features(energy: Tensor, mask: Tensor | None = None) -> Tensor:
    """energy [B, T] (log frame magnitude) -> [B, 1, T] relative to the segment mean, so loudness cancels."""
    if mask is None:
        mean = energy.mean(dim=1, keepdim=True)
    else:
        mean = (energy * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp(min=1)
    return (energy - mean).unsqueeze(1)


class ContentEncoder(nn.Module):
    """mel [B, n_mels, T] -> content [B, content_dim, T], instance-normalized (per-utterance statistics,
    the easiest place for a voice to hide, are removed at the input and at the bottleneck)."""

    def __init__(self, cfg: AcousticModelConfig, n_mels: int) -> None:
        super().__init__()
        self.inp = nn.Conv1d(n_mels, cfg.hidden, 1)
        self.blocks = nn.ModuleList(ConvNeXtBlock(cfg.hidden, 2 * cfg.hidden, cfg.kernel_size)
                                    for _ in range(cfg.encoder_layers))
        self.out = nn.Conv1d(cfg.hidden, cfg.content_dim, 1)

    def forward(self, mel: Tensor) -> Tensor:
        x = self.inp(_instance_norm(mel))
        for block in self.blocks:
            x = block(x)
        return _instance_norm(self.out(x))


class SpeakerEncoder(nn.Module):
    """reference mel [B, n_mels, R] (+ mask [B, R]) -> speaker vector [B, speaker_dim].

    Attentive statistics pooling: a learned weight per frame, then the weighted mean and standard deviation
    of the frame features, so any reference length gives one fixed-size vector.
    """

    def __init__(self, cfg: AcousticModelConfig, n_mels: int) -> None:
        super().__init__()
        self.inp = nn.Conv1d(n_mels, cfg.hidden, 3, padding=1)
        self.blocks = nn.ModuleList(ConvNeXtBlock(cfg.hidden, 2 * cfg.hidden, cfg.kernel_size)
                                    for _ in range(cfg.speaker_layers))
        self.attention = nn.Sequential(nn.Conv1d(cfg.hidden, cfg.hidden // 2, 1), nn.Tanh(),
                                       nn.Conv1d(cfg.hidden // 2, 1, 1))
        self.out = nn.Linear(2 * cfg.hidden, cfg.speaker_dim)

    def forward(self, mel: Tensor, mask: Tensor | None = None) -> Tensor:
        x = self.inp(mel)
        for block in self.blocks:
            x = block(x)
        logits = self.attention(x)  # [B, 1, R]
        if mask is not None:  # padding frames get no weight
            logits = logits.masked_fill(mask.unsqueeze(1) == 0, -1e4)
        w = torch.softmax(logits.float(), dim=-1).to(x.dtype)
        mean = (x * w).sum(-1)
        std = torch.sqrt((((x * x) * w).sum(-1) - mean * mean).clamp(min=1e-8))
        return self.out(torch.cat([mean, std], dim=1))


class Decoder(nn.Module):
    """content [B, C, T] + pitch [B, 2, T] + energy [B, 1, T], speaker [B, S] -> mel [B, n_mels, T]."""

    def __init__(self, cfg: AcousticModelConfig, n_mels: int) -> None:
        super().__init__()
        self.inp = nn.Conv1d(cfg.content_dim + 3, cfg.hidden, 1)
        self.pitch = nn.Conv1d(2, cfg.hidden, 3, padding=1)  # its own path, so pitch is never drowned out
        self.blocks = nn.ModuleList(ConvNeXtBlock(cfg.hidden, 2 * cfg.hidden, cfg.kernel_size, cond_dim=cfg.speaker_dim)
                                    for _ in range(cfg.decoder_layers))
        self.speaker_bias = nn.Linear(cfg.speaker_dim, cfg.hidden)
        self.norm = nn.LayerNorm(cfg.hidden)
        self.out = nn.Conv1d(cfg.hidden, n_mels, 1)

    def forward(self, content: Tensor, pitch: Tensor, energy: Tensor, speaker: Tensor) -> Tensor:
        x = self.inp(torch.cat([content, pitch, energy], dim=1)) + self.pitch(pitch)
        x = x + self.speaker_bias(speaker).unsqueeze(-1)
        for block in self.blocks:
            x = block(x, cond=speaker)
        return self.out(self.norm(x.transpose(1, 2)).transpose(1, 2))


class AcousticModel(nn.Module):
    """The whole converter. `n_speakers` sizes the auxiliary speaker classifier (training speakers only)."""

    def __init__(self, cfg: AcousticModelConfig, audio: AudioConfig, n_speakers: int) -> None:
        super().__init__()
        self.cfg, self.audio = cfg, audio
        self.content_encoder = ContentEncoder(cfg, audio.n_mels)
        self.speaker_encoder = SpeakerEncoder(cfg, audio.n_mels)
        self.decoder = Decoder(cfg, audio.n_mels)
        self.classifier = nn.Linear(cfg.speaker_dim, max(n_speakers, 1))
        self.voice: nn.Parameter | None = None  # a fine-tuned model's learned speaker vector [S]

    def learn_voice(self, initial: Tensor) -> None:
        """Give the model a learnable speaker vector (fine-tuning to one voice), starting from `initial` [S]."""
        self.voice = nn.Parameter(initial.detach().clone().reshape(self.cfg.speaker_dim))

    def forward(self, source_mel: Tensor, f0_hz: Tensor, energy: Tensor, reference_mel: Tensor | None,
                reference_mask: Tensor | None = None, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """source_mel [B, n_mels, T], f0_hz [B, T], energy [B, T], reference_mel [B, n_mels, R]
        -> (predicted mel [B, n_mels, T], speaker vector [B, S]).

        reference_mel None: use the learned voice (a fine-tuned model).
        """
        if reference_mel is None:
            if self.voice is None:
                raise ValueError("no reference given and the model has no learned voice")
            speaker = self.voice.unsqueeze(0).expand(source_mel.shape[0], -1)
        else:
            speaker = self.speaker_encoder(reference_mel, reference_mask)
        content = self.content_encoder(source_mel)
        mel = self.decoder(content, pitch_features(f0_hz), energy_features(energy, mask), speaker)
        return mel, speaker

    @torch.inference_mode()
    def embed(self, reference_mels: list[Tensor]) -> Tensor:
        """Average speaker vector of several references, each [n_mels, R_i] -> [S]."""
        vectors = [self.speaker_encoder(m.unsqueeze(0))[0] for m in reference_mels]
        return torch.stack(vectors).mean(0)

    @torch.inference_mode()
    def convert(self, source_mel: Tensor, f0_hz: Tensor, energy: Tensor, speaker: Tensor) -> Tensor:
        """One utterance: source_mel [n_mels, T], f0_hz [T], energy [T], speaker [S] -> mel [n_mels, T]."""
        content = self.content_encoder(source_mel.unsqueeze(0))
        out = self.decoder(content, pitch_features(f0_hz.unsqueeze(0)), energy_features(energy.unsqueeze(0)),
                           speaker.unsqueeze(0))
        return out[0]


def _instance_norm(x: Tensor) -> Tensor:
    """Normalize each channel over time: x [B, C, T]."""
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, keepdim=True, unbiased=False)
    return (x - mean) * torch.rsqrt(var + INSTANCE_NORM_EPS)
