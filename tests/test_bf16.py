"""bf16 autocast, which only CUDA runs in practice, exercised on the CPU: every forward path of both stages
(content perturbation, virtual speakers, the consistency and cycle losses, the GAN and its feature matching,
validation) must run and train under it. CPU autocast casts the same layer types (convolutions, linear layers, matrix
products) to bf16 as CUDA does, so a dtype clash between a bf16 activation and a float32 tensor shows here."""

from __future__ import annotations

import json
import math

import pytest
import torch

from voiceclone.stages import tasks, validation
from voiceclone.train.command import train


@pytest.mark.parametrize("stage", ["acoustic", "vocoder"])
def test_a_stage_trains_and_validates_under_bf16_autocast(prepared_dataset, tmp_path, quiet, monkeypatch, stage):
    seen = []  # whether autocast was on where each mel loss was computed, in training and in validation
    mel_loss = tasks.masked_l1

    def spy(*args, **kwargs):
        seen.append(torch.is_autocast_enabled("cpu"))
        return mel_loss(*args, **kwargs)

    monkeypatch.setattr(tasks, "masked_l1", spy)
    monkeypatch.setattr(validation, "BF16_DEVICES", ("cuda", "cpu"))
    overrides = ["acoustic.train.batch_size=4", "acoustic.augment=true", "acoustic.loss.consistency=0.2",
                 "acoustic.loss.cycle=0.5", "vocoder.train.batch_size=4", "vocoder.gan.mel_only_steps=0"]  # the adversarial path from step 0
    if stage == "vocoder":  # it trains on the acoustic model's outputs, so that model's forward runs too
        train(prepared_dataset, tmp_path / "run", stage="acoustic", overrides=overrides, epochs=1,
              early_stop=False, console=quiet)
    train(prepared_dataset, tmp_path / "run", stage=stage, overrides=overrides, epochs=1, early_stop=False,
          console=quiet, finetune_on_acoustic=stage == "vocoder")
    assert seen and all(seen)  # every training step and validation batch ran under autocast
    rows = [json.loads(line) for line in (tmp_path / "run" / stage / "history.jsonl").read_text().splitlines()]
    assert rows[-1]["nonfinite_skipped"] == 0
    assert math.isfinite(rows[-1]["train_loss"]) and math.isfinite(rows[-1]["unseen_loss"])
    if stage == "vocoder":  # the discriminators and the adversarial losses ran too
        assert rows[-1]["train_discriminator_total"] > 0
        assert math.isfinite(rows[-1]["train_feature"]) and math.isfinite(rows[-1]["train_adversarial"])
    else:
        assert math.isfinite(rows[-1]["train_consistency"]) and math.isfinite(rows[-1]["train_cycle"])
