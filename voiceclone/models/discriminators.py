"""The vocoder's discriminators: multi-period (HiFi-GAN) and multi-resolution spectrogram (UnivNet, Vocos).

Every sub-discriminator maps audio [B, T] to logits [B, N] (one realness score per patch, N depending on T)
and the list of its hidden activations, which feature matching compares between real and generated audio.
Nothing here mixes items of a batch, so a trainer may score real and generated audio in one call and
split the outputs along the batch dimension.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from voiceclone.config import VocoderModelConfig

LRELU_SLOPE = 0.1  # HiFi-GAN's and UnivNet's


def _pad_right(x: Tensor, amount: int) -> Tensor:
    """x [B, T] -> [B, T + amount]; reflect where the clip is long enough, zeros otherwise."""
    if amount == 0:
        return x
    mode = "reflect" if x.shape[-1] > amount else "constant"
    return F.pad(x.unsqueeze(1), (0, amount), mode=mode).squeeze(1)


class PeriodDiscriminator(nn.Module):
    """Audio folded into [T / period, period] columns, scored by 2-D convs that never mix columns.

    Channels grow as HiFi-GAN's (32, 128, 512, 1024, 1024) when `channels` is 32.
    """

    def __init__(self, period: int, channels: int) -> None:
        super().__init__()
        self.period = period
        sizes = (1, channels, 4 * channels, 16 * channels, 32 * channels)
        self.convs = nn.ModuleList(
            weight_norm(nn.Conv2d(a, b, (5, 1), stride=(3, 1), padding=(2, 0))) for a, b in zip(sizes, sizes[1:]))
        self.convs.append(weight_norm(nn.Conv2d(sizes[-1], sizes[-1], (5, 1), padding=(2, 0))))
        self.post = weight_norm(nn.Conv2d(sizes[-1], 1, (3, 1), padding=(1, 0)))

    def forward(self, audio: Tensor) -> tuple[Tensor, list[Tensor]]:
        """audio [B, T] -> (logits [B, N], feature maps [B, C_i, H_i, period])."""
        batch, length = audio.shape
        x = _pad_right(audio, -length % self.period)
        return _score(x.view(batch, 1, -1, self.period), self.convs, self.post)


class ResolutionDiscriminator(nn.Module):
    """2-D convs over one STFT magnitude (frequency x time), UnivNet's layout; strides shrink time only."""

    def __init__(self, n_fft: int, hop_length: int, win_length: int, channels: int) -> None:
        super().__init__()
        self.n_fft, self.hop, self.win = n_fft, hop_length, win_length
        self.register_buffer("window", torch.hann_window(win_length), persistent=False)
        c = channels
        self.convs = nn.ModuleList([
            weight_norm(nn.Conv2d(1, c, (3, 9), padding=(1, 4))),
            weight_norm(nn.Conv2d(c, c, (3, 9), stride=(1, 2), padding=(1, 4))),
            weight_norm(nn.Conv2d(c, c, (3, 9), stride=(1, 2), padding=(1, 4))),
            weight_norm(nn.Conv2d(c, c, (3, 9), stride=(1, 2), padding=(1, 4))),
            weight_norm(nn.Conv2d(c, c, (3, 3), padding=(1, 1))),
        ])
        self.post = weight_norm(nn.Conv2d(c, 1, (3, 3), padding=(1, 1)))

    def spectrogram(self, audio: Tensor) -> Tensor:
        """audio [B, T] -> magnitude [B, 1, n_fft // 2 + 1, T // hop + 1] (centred frames)."""
        pad = self.n_fft // 2
        x = audio.float().unsqueeze(1)
        # reflect padding needs pad < T; very short clips fall back to zeros
        x = F.pad(x, (pad, pad), mode="reflect" if audio.shape[-1] > pad else "constant").squeeze(1)
        spec = torch.stft(x, self.n_fft, hop_length=self.hop, win_length=self.win, window=self.window,
                          center=False, normalized=True, return_complex=True)
        return spec.abs().unsqueeze(1)

    def forward(self, audio: Tensor) -> tuple[Tensor, list[Tensor]]:
        """audio [B, T] -> (logits [B, N], feature maps [B, C, F, T_i])."""
        return _score(self.spectrogram(audio), self.convs, self.post)


def _score(x: Tensor, convs: nn.ModuleList, post: nn.Module) -> tuple[Tensor, list[Tensor]]:
    """Run a conv stack: x [B, 1, H, W] -> (logits [B, N], every layer's output as a feature map)."""
    feats = []
    for conv in convs:
        x = F.leaky_relu(conv(x), LRELU_SLOPE)
        feats.append(x)
    x = post(x)
    feats.append(x)
    return x.flatten(1), feats


class Discriminators(nn.Module):
    """All sub-discriminators: one PeriodDiscriminator per cfg.mpd_periods entry, then one
    ResolutionDiscriminator per cfg.mrd_resolutions entry (n_fft, hop, win). `names` labels them in
    that order, for logging per-discriminator losses."""

    def __init__(self, cfg: VocoderModelConfig) -> None:
        super().__init__()
        subs: list[nn.Module] = [PeriodDiscriminator(p, cfg.mpd_channels) for p in cfg.mpd_periods]
        subs += [ResolutionDiscriminator(n, h, w, cfg.mrd_channels) for n, h, w in cfg.mrd_resolutions]
        self.subs = nn.ModuleList(subs)
        self.names = [f"mpd{p}" for p in cfg.mpd_periods] + [f"mrd{n}" for n, _, _ in cfg.mrd_resolutions]

    def forward(self, audio: Tensor) -> tuple[list[Tensor], list[list[Tensor]]]:
        """audio [B, T] -> (logits: one [B, N_i] per sub-discriminator,
        feature maps: one list per sub-discriminator, each map with batch first)."""
        if audio.dim() != 2:
            raise ValueError(f"audio must be [B, T], got {tuple(audio.shape)}")
        logits, feats = [], []
        for sub in self.subs:
            score, maps = sub(audio)
            logits.append(score)
            feats.append(maps)
        return logits, feats
