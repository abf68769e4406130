"""The vocoder trained by the shared engine: pitch following, resume, the non-finite guard, fine-tuning on
the acoustic model's outputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from voiceclone import audio as A
from voiceclone.run import load_checkpoint
from voiceclone.data.store import Dataset
from voiceclone.errors import UserError
from voiceclone.evaluation.metrics import f0_metrics
from voiceclone.models.vocoder import Vocoder
from voiceclone.stages.tasks import VocoderTask
from voiceclone.train.command import train
from helpers import history

VOC = ["vocoder.train.batch_size=4", "vocoder.train.lr=2e-3", "vocoder.train.warmup_steps=5"]
GAN = VOC + ["vocoder.gan.mel_only_steps=3"]  # the discriminators join after 3 steps


def f0_error(generator: Vocoder, ds: Dataset) -> float:
    """Median F0 RMSE (cents) between the contour given and the one heard in the output, over `val`."""
    cfg, split = ds.audio, ds.split("val")
    errors = []
    with torch.inference_mode():
        for i in range(len(split)):
            mel = torch.from_numpy(np.array(split.mel(i), dtype=np.float32).T).unsqueeze(0)
            f0 = torch.from_numpy(np.array(split.f0(i))).unsqueeze(0)
            out = generator(mel, f0)[0].numpy()
            m = f0_metrics(split.f0(i), A.f0(out, cfg))
            errors.append(m["rmse_cents"] if m["rmse_cents"] is not None else 1200.0)
    return float(np.median(errors))


def test_the_output_follows_the_given_pitch_after_a_short_training(prepared_dataset, tmp_path, quiet):
    run = tmp_path / "run"
    train(prepared_dataset, run, stage="vocoder", overrides=VOC, epochs=20, early_stop=False, console=quiet)
    ds = Dataset.open(prepared_dataset)
    torch.manual_seed(0)
    untrained = Vocoder(ds.recipe.vocoder.model, ds.audio).eval()
    trained = Vocoder(ds.recipe.vocoder.model, ds.audio).eval()
    trained.load_state_dict(load_checkpoint(run / "vocoder/best.pt")["modules"]["generator"])
    before, after = f0_error(untrained, ds), f0_error(trained, ds)
    assert after < 50 and after < before / 5, (before, after)
    rows = history(run, "vocoder")
    assert "val_f0_rmse_cents" in rows[-1] and rows[-1]["val_f0_rmse_cents"] < rows[0]["val_f0_rmse_cents"]


def test_vocoder_resume_equals_an_uninterrupted_run_with_both_networks(prepared_dataset, tmp_path, quiet, request):
    train(prepared_dataset, tmp_path / "a", stage="vocoder", overrides=GAN, epochs=3, early_stop=False, console=quiet)
    request.getfixturevalue("interrupt_after_first_epoch")
    r = train(prepared_dataset, tmp_path / "b", stage="vocoder", overrides=GAN, epochs=3, early_stop=False,
              console=quiet)
    assert r["vocoder"]["interrupted"] and r["vocoder"]["epochs"] == 1
    train(prepared_dataset, tmp_path / "b", stage="vocoder", overrides=GAN, epochs=3, resume=True, early_stop=False,
          console=quiet)
    a, b = history(tmp_path / "a", "vocoder"), history(tmp_path / "b", "vocoder")
    assert [r["epoch"] for r in b] == [1, 2, 3]
    assert "train_discriminator" in a[-1] and "train_feature" in a[-1] and "train_adversarial" in a[-1]
    for ra, rb in zip(a, b):
        for key in ("train_loss", "val_loss", "train_discriminator", "train_adversarial"):
            if key in ra:
                assert ra[key] == pytest.approx(rb[key], rel=1e-5, abs=1e-6), (key, ra["epoch"])


@pytest.mark.parametrize("group", ["discriminator", "generator"])
def test_a_non_finite_loss_in_either_network_is_skipped(prepared_dataset, tmp_path, quiet, monkeypatch, group):
    original = VocoderTask.losses
    poisoned_steps = []

    def poisoned(self, g, batch, step):
        out = original(self, g, batch, step)
        if g == group and out and 5 <= step <= 6:
            poisoned_steps.append(step)
            name = next(iter(out))
            out[name] = out[name] * float("nan")
        return out

    monkeypatch.setattr(VocoderTask, "losses", poisoned)
    train(prepared_dataset, tmp_path / "run", stage="vocoder", overrides=GAN, epochs=2, early_stop=False,
          console=quiet)
    rows = history(tmp_path / "run", "vocoder")
    assert poisoned_steps == [5, 6] and rows[-1]["nonfinite_skipped"] == 2
    state = load_checkpoint(tmp_path / "run/vocoder/last.pt")
    for module in ("generator", "discriminators"):
        assert all(torch.isfinite(t).all() for t in state["modules"][module].values())
    assert all(isinstance(r["train_loss"], float) and math.isfinite(r["train_loss"]) for r in rows)


def test_finetune_on_the_acoustic_models_outputs(prepared_dataset, tmp_path, quiet):
    run = tmp_path / "run"
    train(prepared_dataset, run, stage="acoustic", overrides=["acoustic.train.batch_size=8"], epochs=1,
          early_stop=False, console=quiet)
    results = train(prepared_dataset, run, stage="vocoder", overrides=VOC, epochs=1, early_stop=False,
                    finetune_on_acoustic=True, console=quiet)
    assert results["vocoder"]["epochs"] == 1
    assert load_checkpoint(run / "vocoder/best.pt")["meta"]["finetuned_on_acoustic"] is True
    # resuming it on dataset mels would compare its validation with a best measured on other inputs
    with pytest.raises(UserError, match="resume it with --finetune-on-acoustic"):
        train(prepared_dataset, run, stage="vocoder", overrides=VOC, epochs=2, early_stop=False, resume=True,
              console=quiet)
