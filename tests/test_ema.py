"""Weight averaging (voiceclone/train/ema.py): the average's arithmetic, and what validation and best.pt hold."""

from __future__ import annotations

import pytest
import torch
from rich.console import Console
from torch import nn

from voiceclone.errors import UserError
from voiceclone.config import load_recipe
from voiceclone.run import load_checkpoint
from voiceclone.train.command import train
from voiceclone.train.ema import WeightAverage

QUIET = Console(quiet=True)
FAST = ["acoustic.train.batch_size=8", "acoustic.train.segment_frames=48", "acoustic.train.warmup_steps=10",
        "acoustic.train.lr=3e-3"]


def test_the_average_follows_its_recurrence_and_is_swapped_in_and_out():
    net = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(0.0)
    avg = WeightAverage({"net": net}, decay=0.9)
    expected = 0.0
    for n in range(1, 41):
        with torch.no_grad():
            net.weight.fill_(float(n))
        avg.update({"net": net})
        d = min(0.9, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * n
    assert avg.shadow["net"]["weight"].item() == pytest.approx(expected, rel=1e-5)
    assert 30 < expected < 40  # behind the raw weight (40), as an average is
    with avg.applied({"net": net}):
        assert net.weight.item() == pytest.approx(expected, rel=1e-5)
    assert net.weight.item() == 40.0


def test_best_holds_the_average_and_last_holds_both(make_dataset, tmp_path):
    ds = make_dataset(tmp_path / "d", speakers=6, utterances=6, seconds=1.6, seed=4)
    train(ds, tmp_path / "run", overrides=FAST + ["acoustic.train.ema=0.9"], epochs=1, early_stop=False,
          console=QUIET)
    best = load_checkpoint(tmp_path / "run/acoustic/best.pt")
    last = load_checkpoint(tmp_path / "run/acoustic/last.pt")
    assert best["averaged"] is True and best["epoch"] == 1
    for k, v in best["modules"]["model"].items():
        assert torch.equal(v, last["ema"]["shadow"]["model"][k]), k
    raw = last["modules"]["model"]
    assert any(not torch.equal(v, raw[k]) for k, v in best["modules"]["model"].items() if v.is_floating_point())


@pytest.mark.parametrize("value", ["1.0", "-0.1"])
def test_a_decay_outside_zero_to_one_is_refused(value):
    with pytest.raises(UserError, match="train.ema"):
        load_recipe("demo", [f"acoustic.train.ema={value}"])
