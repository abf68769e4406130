"""The torch side of the dataset: segments of utterances (and their references) for training and validation.

Randomness is a pure function of (seed, epoch, index), so batches are identical whatever the number of
loader workers, and a resumed run draws exactly the segments an uninterrupted one would have drawn.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from voiceclone.audio import LOG_FLOOR, from_int16
from voiceclone.data.store import Split

FLOOR = float(np.log(LOG_FLOOR))


class Segments(TorchDataset):
    """Fixed-length segments of one split. Items are requested as (epoch, index) pairs.

    train=True: a random segment per (epoch, index). train=False (validation): fixed segments, the same every
    epoch; with cover=0 the middle one of each utterance, with cover=K up to K evenly spaced segments that
    together cover the utterance (an item is then one segment, and len() counts segments), so validation
    measures whole utterances and its value moves only when the model does; limit > 0 keeps at most that
    many of those segments, evenly spread over the split's utterances (in order, so over its speakers too).
    references: a pool of other utterances per speaker ([(Split, index)]); the reference is always a
    different utterance of the same speaker, so the target segment can never leak through it.
    Items: mel [frames, n_mels] float32, f0 [frames], energy [frames], mask [frames],
    optional audio [frames * hop], ref_mel [ref_frames, n_mels], ref_mask [ref_frames], ref_f0 [ref_frames],
    speaker (int, -1 if unknown).
    """

    def __init__(self, split: Split, frames: int, hop: int, seed: int, train: bool,
                 references: dict[str, list[tuple[Split, int]]] | None = None, ref_frames: int = 0,
                 with_audio: bool = False, speaker_ids: dict[str, int] | None = None, cover: int = 0,
                 limit: int = 0) -> None:
        self.split, self.frames, self.hop, self.seed, self.train = split, frames, hop, seed, train
        self.references, self.ref_frames = references, ref_frames
        self.with_audio, self.speaker_ids = with_audio, speaker_ids or {}
        self.fixed = None if train or cover <= 0 else fixed_segments(split, frames, cover)
        if not train and 0 < limit < len(self):
            fixed = self.fixed or fixed_segments(split, frames, 1)  # the middle segment of each utterance
            self.fixed = [fixed[int(k)] for k in np.linspace(0, len(fixed) - 1, limit).round()]

    def __len__(self) -> int:
        return len(self.split) if self.fixed is None else len(self.fixed)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, np.ndarray | int]:
        epoch, i = key
        if self.fixed is not None:
            i, start = self.fixed[i]
        rng = np.random.default_rng([self.seed, epoch if self.train else 0, i])
        s = self.split
        n = s.n_frames(i)
        if self.train:
            start = int(rng.integers(0, max(n - self.frames, 0) + 1))
        elif self.fixed is None:
            start = max(n - self.frames, 0) // 2
        item: dict[str, np.ndarray | int] = {}
        item["mel"], item["mask"] = _crop(s.mel(i), start, self.frames, FLOOR)
        item["f0"], _ = _crop(s.f0(i), start, self.frames, 0.0)
        item["energy"], _ = _crop(s.energy(i), start, self.frames, FLOOR)
        if self.with_audio:
            audio = from_int16(s.audio(i)[start * self.hop : (start + self.frames) * self.hop])
            item["audio"] = np.pad(audio, (0, self.frames * self.hop - len(audio)))
        if self.references is not None:
            ref_split, j = self._pick_reference(i, rng)
            rn = ref_split.n_frames(j)
            rstart = int(rng.integers(0, max(rn - self.ref_frames, 0) + 1)) if self.train else 0
            item["ref_mel"], item["ref_mask"] = _crop(ref_split.mel(j), rstart, self.ref_frames, FLOOR)
            item["ref_f0"], _ = _crop(ref_split.f0(j), rstart, self.ref_frames, 0.0)
        item["speaker"] = self.speaker_ids.get(s.speaker(i), -1)
        return item

    def _pick_reference(self, i: int, rng: np.random.Generator) -> tuple[Split, int]:
        pool = [(sp, j) for sp, j in self.references.get(self.split.speaker(i), [])
                if not (sp is self.split and j == i)]
        if not pool:  # a speaker with one utterance: nothing else to use (prepare warns about these)
            return self.split, i
        return pool[int(rng.integers(len(pool)))] if self.train else pool[i % len(pool)]


def fixed_segments(split: Split, frames: int, most: int) -> list[tuple[int, int]]:
    """(utterance, start frame) of up to `most` evenly spaced segments per utterance, covering it when
    ceil(n / frames) <= most (first and last frames included); utterances in order."""
    out = []
    for i in range(len(split)):
        n = split.n_frames(i)
        k = min(most, max(1, -(-n // frames)))
        last = max(n - frames, 0)
        out += [(i, int(round(j * last / (k - 1))) if k > 1 else last // 2) for j in range(k)]
    return out


def _crop(x: np.ndarray, start: int, length: int, fill: float) -> tuple[np.ndarray, np.ndarray]:
    """x [N, ...] -> (x[start:start+length] as float32, padded with `fill`; mask [length])."""
    seg = np.array(x[start : start + length], dtype=np.float32)  # a copy: memmaps are read-only
    mask = np.zeros(length, dtype=np.float32)
    mask[: len(seg)] = 1.0
    if len(seg) < length:
        pad = [(0, length - len(seg))] + [(0, 0)] * (seg.ndim - 1)
        seg = np.pad(seg, pad, constant_values=fill)
    return seg, mask


def reference_pool(*splits: Split) -> dict[str, list[tuple[Split, int]]]:
    """Every utterance of the given splits, grouped by speaker."""
    pool: dict[str, list[tuple[Split, int]]] = defaultdict(list)
    for split in splits:
        for i in range(len(split)):
            pool[split.speaker(i)].append((split, i))
    return dict(pool)


class EpochBatches(torch.utils.data.Sampler):
    """Batches of (epoch, index) keys: a fresh permutation each epoch, sharded by rank for DDP.

    `skip` batches of the first epoch are passed over without loading them (mid-epoch resume).
    """

    def __init__(self, n: int, batch_size: int, seed: int, shuffle: bool, rank: int = 0, world: int = 1,
                 drop_last: bool = True) -> None:
        self.n, self.batch_size, self.seed, self.shuffle = n, batch_size, seed, shuffle
        self.rank, self.world, self.drop_last = rank, world, drop_last
        self.epoch, self.skip = 1, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def _indices(self) -> np.ndarray:
        order = (np.random.default_rng([self.seed, self.epoch]).permutation(self.n) if self.shuffle
                 else np.arange(self.n))
        if self.drop_last:  # every rank must run the same number of steps, or DDP waits forever
            order = order[: self.n // self.world * self.world]
        return order[self.rank :: self.world]

    def __len__(self) -> int:
        per_rank = self.n // self.world if self.drop_last else len(range(self.rank, self.n, self.world))
        if self.drop_last and per_rank >= self.batch_size:
            return per_rank // self.batch_size
        return -(-per_rank // self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        idx = self._indices()
        for b in range(self.skip, len(self)):
            yield [(self.epoch, int(i)) for i in idx[b * self.batch_size : (b + 1) * self.batch_size]]
