"""The recipe options of the zero-shot quality levers: defaults keep the old behaviour, each option trains."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import default_collate

from voiceclone.config import PerturbConfig, load_recipe
from voiceclone.data.store import Dataset
from voiceclone.errors import UserError
from voiceclone.stages import augment
from voiceclone.stages.losses import aam_softmax_loss
from voiceclone.stages.tasks import AcousticTask, _frozen_call


def _batch(task: AcousticTask, n: int = 4) -> dict[str, torch.Tensor]:
    segments = task.train_segments()
    return default_collate([segments[(1, i)] for i in range(n)])


def test_default_perturbation_is_the_original_one():
    cfg = load_recipe("demo").audio
    mel = torch.randn(3, cfg.n_mels, 20)
    a = augment.perturb_content(mel, cfg, torch.Generator().manual_seed(0))
    b = augment.perturb_content(mel, cfg, torch.Generator().manual_seed(0), PerturbConfig())
    assert torch.equal(a, b)


def test_aam_softmax_is_cross_entropy_without_margin_and_harder_with_it():
    emb, weight, labels = torch.randn(8, 16), torch.randn(5, 16), torch.randint(0, 5, (8,))
    cos = torch.nn.functional.normalize(emb) @ torch.nn.functional.normalize(weight).T
    plain = torch.nn.functional.cross_entropy(10 * cos, labels)
    assert math.isclose(float(aam_softmax_loss(emb, weight, labels, 0.0, 10.0)), float(plain), rel_tol=1e-4)
    assert float(aam_softmax_loss(emb, weight, labels, 0.3, 10.0)) > float(plain)


@pytest.mark.parametrize("overrides, names", [
    ((), {"mel", "speaker"}),
    (("acoustic.loss.consistency=0.5", "acoustic.model.speaker_loss=aam", "acoustic.perturb.eq_terms=8"),
     {"mel", "speaker", "consistency"}),
    (("acoustic.loss.cycle=0.5",), {"mel", "speaker", "cycle"}),
    (("acoustic.loss.cycle=0.5", "acoustic.loss.consistency=0.2", "acoustic.augment=true"),
     {"mel", "speaker", "consistency", "cycle"}),
])
def test_lever_options_give_finite_named_losses_and_gradients(prepared_dataset, overrides, names):
    recipe = load_recipe("demo", overrides)
    task = AcousticTask(recipe, Dataset.open(prepared_dataset), torch.device("cpu"))
    losses = task.losses("model", _batch(task), step=1)
    assert set(losses) == names
    assert all(torch.isfinite(v) for v in losses.values())
    if "consistency" in losses:  # it teaches the decoder to render the other voice
        task.model.zero_grad()
        losses["consistency"].backward(retain_graph=True)  # the cycle term shares its conversion
        assert float(task.model.decoder.out.weight.grad.abs().sum()) > 0
    if "cycle" in losses:  # it teaches the decoder to keep the words in the other voice
        task.model.zero_grad()
        losses["cycle"].backward()
        assert float(task.model.decoder.out.weight.grad.abs().sum()) > 0


def test_frozen_call_passes_gradients_to_the_input_only():
    layer = torch.nn.Linear(3, 2)
    x = torch.randn(4, 3, requires_grad=True)
    _frozen_call(layer, x).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert layer.weight.grad is None and layer.bias.grad is None


def test_unknown_speaker_loss_is_a_one_line_error():
    with pytest.raises(UserError, match="acoustic.model.speaker_loss"):
        load_recipe("demo", ["acoustic.model.speaker_loss=triplet"])
