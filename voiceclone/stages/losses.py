"""GAN losses of the vocoder: least-squares adversarial terms and feature matching.

Each loss is averaged over sub-discriminators (as Vocos does, not summed as HiFi-GAN does), so its size and
the meaning of its weight in `VocoderLossWeights` do not change with the number of periods or resolutions.
The mel L1 is not here: the trainer computes it through `audio.log_mel`, the project's one mel function.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def discriminator_loss(real_logits: Sequence[Tensor], fake_logits: Sequence[Tensor]) -> Tensor:
    """Least squares: real scored towards 1, generated towards 0. Pass logits of *detached* fake audio.

    real_logits, fake_logits: one [B, N_i] per sub-discriminator -> scalar.
    """
    _check(real_logits, fake_logits, "logits")
    terms = [torch.mean((1 - r.float()) ** 2) + torch.mean(f.float() ** 2) for r, f in zip(real_logits, fake_logits)]
    return torch.stack(terms).mean()


def generator_adversarial_loss(fake_logits: Sequence[Tensor]) -> Tensor:
    """Least squares: the generator wants its audio scored 1. fake_logits: one [B, N_i] each -> scalar."""
    if len(fake_logits) == 0:
        raise ValueError("no discriminator logits")
    return torch.stack([torch.mean((1 - f.float()) ** 2) for f in fake_logits]).mean()


def feature_matching_loss(real_feats: Sequence[Sequence[Tensor]], fake_feats: Sequence[Sequence[Tensor]]) -> Tensor:
    """L1 between the discriminators' activations on real and generated audio: per sub-discriminator the
    sum over its layers of the mean absolute difference, then the mean over sub-discriminators.

    Real activations are targets and are detached here. Each argument: per sub-discriminator a list of
    maps [B, ...] of equal shapes -> scalar.
    """
    _check(real_feats, fake_feats, "feature lists")
    terms = []
    for reals, fakes in zip(real_feats, fake_feats):
        _check(reals, fakes, "feature maps of one discriminator")
        terms.append(sum(torch.mean(torch.abs(r.detach().float() - f.float())) for r, f in zip(reals, fakes)))
    return torch.stack(terms).mean()


def _check(real: Sequence, fake: Sequence, what: str) -> None:
    if len(real) != len(fake) or len(real) == 0:
        raise ValueError(f"real and generated {what} must be equally many and not none ({len(real)} vs {len(fake)})")


def aam_softmax_loss(embedding: Tensor, weight: Tensor, labels: Tensor, margin: float, scale: float) -> Tensor:
    """Additive angular margin softmax (ArcFace / AAM-softmax, as speaker verifiers are trained).

    embedding [B, D], weight [C, D] (one row per class), labels [B] -> scalar. Embeddings and class rows are
    compared by cosine; the true class must win by `margin` radians, so classes spread over the sphere.
    """
    normalize = torch.nn.functional.normalize
    cos = normalize(embedding.float(), dim=1) @ normalize(weight.float(), dim=1).T
    theta = torch.acos(cos.clamp(-1 + 1e-6, 1 - 1e-6))
    target = torch.nn.functional.one_hot(labels, cos.shape[1]).bool()
    logits = scale * torch.where(target, torch.cos(theta + margin), cos)
    return torch.nn.functional.cross_entropy(logits, labels)
