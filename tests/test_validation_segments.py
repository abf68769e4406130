"""Validation segments: fixed, several per utterance, covering it, with a fixed reference per utterance."""

from __future__ import annotations

import numpy as np

from voiceclone.data.dataset import Segments, fixed_segments


class FakeSplit:
    """The part of store.Split that Segments reads, over utterances of given lengths (2 speakers)."""

    def __init__(self, lengths, n_mels=4):
        self.lengths = lengths
        self.n_mels = n_mels

    def __len__(self):
        return len(self.lengths)

    def n_frames(self, i):
        return self.lengths[i]

    def speaker(self, i):
        return "ab"[i % 2]

    def mel(self, i):
        return np.arange(self.lengths[i] * self.n_mels, dtype=np.float32).reshape(-1, self.n_mels) + 1000 * i

    def f0(self, i):
        return np.full(self.lengths[i], 100.0 + i, dtype=np.float32)

    def energy(self, i):
        return np.zeros(self.lengths[i], dtype=np.float32)


def test_fixed_segments_cover_each_utterance_up_to_the_cap():
    split = FakeSplit([30, 100, 250, 1000])
    segs = fixed_segments(split, 48, 6)
    by_utt = {i: [s for u, s in segs if u == i] for i in range(4)}
    assert by_utt[0] == [0]  # shorter than a segment: one, padded
    assert by_utt[1] == [0, 26, 52]  # ceil(100 / 48) = 3 segments, first and last frame included
    assert len(by_utt[2]) == 6 and by_utt[2][0] == 0 and by_utt[2][-1] == 250 - 48
    covered = np.zeros(250, bool)
    for s in by_utt[2]:
        covered[s:s + 48] = True
    assert covered.all()
    assert len(by_utt[3]) == 6  # capped: evenly spaced over the utterance
    assert by_utt[3][-1] == 1000 - 48


def test_validation_items_are_the_same_every_epoch_and_each_utterance_keeps_its_reference():
    split = FakeSplit([100, 120, 200, 90])
    pool = {"a": [(split, 0), (split, 2)], "b": [(split, 1), (split, 3)]}
    val = Segments(split, 48, 256, seed=1, train=False, references=pool, ref_frames=64, cover=6)
    assert len(val) == len(fixed_segments(split, 48, 6)) > len(split)
    for k in range(len(val)):
        a, b = val[(1, k)], val[(7, k)]
        assert all(np.array_equal(a[name], b[name]) for name in a)
    # every segment of utterance 2 is conditioned on the same reference (utterance 0, from frame 0)
    refs = {val[(1, k)]["ref_mel"].tobytes() for k, (u, _) in enumerate(val.fixed) if u == 2}
    assert len(refs) == 1
    # without cover: one middle segment per utterance, as before
    assert len(Segments(split, 48, 256, seed=1, train=False, references=pool, ref_frames=64)) == len(split)


def test_each_stage_validates_on_as_many_segments_per_utterance_as_its_recipe_says(make_dataset, tmp_path):
    import pytest
    import torch

    from voiceclone.config import load_recipe
    from voiceclone.data.store import Dataset
    from voiceclone.errors import UserError
    from voiceclone.stages.tasks import make_task

    dataset = Dataset.open(make_dataset(tmp_path, speakers=3, utterances=3, seconds=3.0, seed=2))
    for stage in ("acoustic", "vocoder"):
        counts = {}
        for n in (1, 6):
            recipe = load_recipe("demo", [f"{stage}.train.val_segments={n}", f"{stage}.train.segment_frames=32"])
            counts[n] = len(make_task(stage, recipe, dataset, torch.device("cpu")).val_segments("val"))
        assert counts[1] == len(dataset.split("val")) < counts[6], (stage, counts)
    with pytest.raises(UserError, match="val_segments"):
        load_recipe("demo", ["vocoder.train.val_segments=0"])


def test_a_limit_keeps_that_many_segments_spread_over_the_utterances_and_the_same_every_epoch():
    split = FakeSplit([100, 120, 200, 90, 300, 60, 150, 250])
    full = Segments(split, 48, 256, seed=1, train=False, cover=6)
    capped = Segments(split, 48, 256, seed=1, train=False, cover=6, limit=8)
    assert len(full) > 8 and len(capped) == 8
    assert set(capped.fixed) <= set(full.fixed)
    assert capped.fixed[0] == full.fixed[0] and capped.fixed[-1] == full.fixed[-1]  # first and last kept
    assert len({u for u, _ in capped.fixed}) >= 6  # spread over the utterances, not the first ones' segments
    for k in range(len(capped)):
        a, b = capped[(1, k)], capped[(9, k)]
        assert all(np.array_equal(a[name], b[name]) for name in a)
    # without cover the middle segments are capped alike; a limit above the count changes nothing
    assert len(Segments(split, 48, 256, seed=1, train=False, limit=3)) == 3
    assert Segments(split, 48, 256, seed=1, train=False, cover=6, limit=10_000).fixed == full.fixed


def test_training_validates_on_the_capped_segments_and_evaluate_on_all(make_dataset, tmp_path):
    import pytest
    import torch

    from voiceclone.config import load_recipe
    from voiceclone.data.store import Dataset
    from voiceclone.errors import UserError
    from voiceclone.stages.tasks import make_task

    dataset = Dataset.open(make_dataset(tmp_path, speakers=3, utterances=3, seconds=3.0, seed=2))
    for stage in ("acoustic", "vocoder"):
        recipe = load_recipe("demo", [f"{stage}.train.val_max_segments=2", f"{stage}.train.segment_frames=32"])
        task = make_task(stage, recipe, dataset, torch.device("cpu"))
        assert len(task.val_segments("val")) == 2 < len(task.val_segments("val", whole=True)), stage
    with pytest.raises(UserError, match="val_max_segments"):
        load_recipe("demo", ["vocoder.train.val_max_segments=-1"])
