"""Fine-tuning a trained zero-shot model to one voice with a few minutes of audio.

Small data overfits fast, so three brakes (ULMFiT's recipe, applied to voice):
- frozen parts: `finetune.freeze` names parts that never change (the content encoder by default: it was
  trained on many voices and is what keeps the content speaker-free);
- gradual unfreezing: the first `frozen_blocks` decoder blocks start frozen and one more is released every
  `unfreeze_every` epochs, from the output side towards the input;
- layer-wise learning rates: each block's rate is the next (output-side) block's times `layer_lr_decay`,
  so early, general layers move least.
The speaker vector of the new voice can be learned (initialized from its own utterances).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from voiceclone.config import FinetuneConfig
from voiceclone.errors import UserError
from voiceclone.models.acoustic import AcousticModel

FREEZABLE = ("content_encoder", "speaker_encoder", "decoder")


def named_blocks(model: AcousticModel) -> list[tuple[str, nn.Module]]:
    """Trainable parts from input to output (the order layer-wise learning rates follow)."""
    dec = model.decoder
    return [("speaker_encoder", model.speaker_encoder), ("content_encoder", model.content_encoder),
            ("decoder.inp", dec.inp), ("decoder.pitch", dec.pitch), ("decoder.speaker_bias", dec.speaker_bias),
            *((f"decoder.blocks.{i}", b) for i, b in enumerate(dec.blocks)),
            ("decoder.out", nn.ModuleList([dec.norm, dec.out]))]


def check(ft: FinetuneConfig, trains_acoustic: bool = True, learned_voice: bool = False) -> None:
    """trains_acoustic: the acoustic model is fine-tuned (not the vocoder alone); learned_voice: the base is a
    fine-tune already, whose voice vector trains whatever is frozen."""
    for name in ft.freeze:
        if name not in FREEZABLE:
            raise UserError(f"finetune.freeze: unknown part {name!r} (known: {', '.join(FREEZABLE)})")
    # every parameter frozen: the first step's backward pass was a RuntimeError traceback from torch
    if trains_acoustic and set(FREEZABLE) <= set(ft.freeze) and not ft.learn_speaker and not learned_voice:
        raise UserError(f"finetune.freeze names every part ({', '.join(FREEZABLE)}) and finetune.learn_speaker is "
                        "false: the acoustic model would have nothing to train; unfreeze a part or learn the voice")


def layer_lrs(model: AcousticModel, ft: FinetuneConfig) -> dict[str, float]:
    """Base learning rate per named block: ft.lr at the output, times layer_lr_decay per block towards the input."""
    blocks = named_blocks(model)
    return {name: ft.lr * ft.layer_lr_decay ** (len(blocks) - 1 - depth) for depth, (name, _) in enumerate(blocks)}


def param_groups(model: AcousticModel, ft: FinetuneConfig) -> list[dict[str, Any]]:
    lrs = layer_lrs(model, ft)
    groups = [{"params": list(block.parameters()), "base_lr": lrs[name], "name": name}
              for name, block in named_blocks(model)]
    if model.voice is not None:  # the new voice itself learns at the full rate
        groups.append({"params": [model.voice], "base_lr": ft.lr, "name": "voice"})
    return groups


def frozen_decoder_blocks(epoch: int, ft: FinetuneConfig, n_blocks: int) -> int:
    """How many decoder blocks (counted from the input side) are still frozen during `epoch` (1-based)."""
    if ft.unfreeze_every <= 0:
        return 0
    released = (epoch - 1) // ft.unfreeze_every
    return max(0, min(ft.frozen_blocks, n_blocks) - released)


def apply_schedule(model: AcousticModel, ft: FinetuneConfig, epoch: int) -> list[str]:
    """Set requires_grad for `epoch`; returns the names of the frozen parts."""
    frozen = set(ft.freeze)
    if model.voice is not None:
        frozen.add("speaker_encoder")  # unused with a learned voice; kept as the measuring instrument
    n_frozen = frozen_decoder_blocks(epoch, ft, len(model.decoder.blocks))
    frozen.update(f"decoder.blocks.{i}" for i in range(n_frozen))
    names = []
    for name, block in named_blocks(model):
        off = name in frozen or name.split(".")[0] in frozen
        block.requires_grad_(not off)
        if off:
            names.append(name)
    model.classifier.requires_grad_(False)  # the base model's training speakers mean nothing here
    return names


@torch.no_grad()
def initial_voice(model: AcousticModel, mels: list[torch.Tensor]) -> torch.Tensor:
    """The new voice's starting vector: the mean speaker embedding of its own utterances, [n_mels, T] each."""
    was = model.training
    model.eval()
    vector = model.embed(mels)
    model.train(was)
    return vector.clone()
