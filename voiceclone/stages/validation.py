"""The one definition of "validation loss": training (after every epoch) and `evaluate` both call it."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from voiceclone.data.dataset import EpochBatches, Segments
from voiceclone.stages.tasks import Task


BF16_DEVICES = ("cuda",)  # elsewhere bf16 is emulated or slow: autocast stays off


def mixed_precision(device: torch.device, bf16: bool):
    """bf16 autocast for the forward passes (training steps and validation) when the recipe asks for it
    (`train.bf16`) and the device runs it natively; a no-op context otherwise."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and device.type in BF16_DEVICES)


@torch.no_grad()
def validation_losses(task: Task, data: Segments, batch_size: int, rank: int = 0, world: int = 1,
                      bf16: bool = True) -> dict[str, float]:
    """Mean of each per-item validation value over a split (sharded over ranks, then all-reduced).

    The one definition of "validation loss": training and `evaluate` both call it. NaN items are left out
    of their value's mean (e.g. F0 error on an all-unvoiced segment).
    """
    device = task.device
    was_training = {name: m.training for name, m in task.modules().items()}
    for module in task.modules().values():
        module.eval()
    sampler = EpochBatches(len(data), batch_size, 0, shuffle=False, rank=rank, world=world,
                           drop_last=False)
    loader = DataLoader(data, batch_sampler=sampler, num_workers=0)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, torch.Tensor] = {}
    for batch in loader:
        with mixed_precision(device, bf16):
            values = task.val_losses({k: v.to(device) for k, v in batch.items()})
        for name, v in values.items():
            v = v.float()
            ok = torch.isfinite(v)
            sums[name] = sums.get(name, 0) + torch.where(ok, v, 0).sum().double()
            counts[name] = counts.get(name, 0) + ok.sum().double()
    names = sorted(sums)
    if world > 1:
        packed = torch.stack([torch.stack([sums[n], counts[n]]) for n in names]).to(device)
        dist.all_reduce(packed)
        sums = {n: packed[i, 0] for i, n in enumerate(names)}
        counts = {n: packed[i, 1] for i, n in enumerate(names)}
    for name, module in task.modules().items():
        module.train(was_training[name])
    return {n: float(sums[n] / counts[n]) if counts[n] > 0 else math.nan for n in names}
