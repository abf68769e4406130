"""The one training loop, shared by the acoustic model and the vocoder.

Vocabulary, as the display and the history use it: an *epoch* is one pass over the training utterances (one
random segment from each); an *iteration* (a *step*) is one optimizer update on one batch of segments.

After every epoch: validation on `val` (seen speakers) and `unseen` (held-out speakers, the monitored loss),
a row in `RUN/<stage>/history.jsonl`, the convergence status, checkpoint `last` (and `best` when the
monitored loss improves), all written by rank 0 alone. Resume restores everything the next step depends on,
so on CPU a run resumed at an epoch boundary reproduces the uninterrupted one exactly.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch.utils.data import DataLoader

from voiceclone import convergence
from voiceclone.bundle import load_model
from voiceclone.config import Recipe, load_recipe, recipe_from_dict
from voiceclone.curves import HISTORY_FILE, append_history, read_history
from voiceclone.data.dataset import EpochBatches, Segments
from voiceclone.data.store import Dataset
from voiceclone.errors import UserError
from voiceclone.train import checkpoint
from voiceclone.train import finetune as ft
from voiceclone.train import tboard
from voiceclone.train.tasks import Task, make_task

STAGES = ("acoustic", "vocoder")


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """The learning-rate multiplier at `step` (1-based): linear warmup, then cosine decay to `min_ratio`."""
    if warmup > 0 and step <= warmup:
        return step / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class Progression:
    """The counters a resumed run continues from."""

    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps (iterations) done
    batch_in_epoch: int = 0  # batches done in the unfinished epoch (after Ctrl-C)
    best_value: float = math.inf
    best_epoch: int = 0
    lr_scale: float = 1.0  # lowered after repeated non-finite losses
    lr_drops: int = 0  # reduce-on-plateau drops so far; the rate is multiplied by convergence.lr_scale(lr_drops)
    nonfinite: int = 0  # batches skipped for a non-finite loss, in all


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str | None) -> tuple[Distributed, torch.device]:
    """Join the process group when started by torchrun; choose the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if world > 1:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if use_cuda else "gloo")
        d = Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
        if use_cuda:
            torch.cuda.set_device(d.local_rank)
            return d, torch.device("cuda", d.local_rank)
        return d, torch.device("cpu")
    if device:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"--device {device}: CUDA is not available on this machine")
        return Distributed(), torch.device(device)
    return Distributed(), torch.device("cuda" if use_cuda else "cpu")


class StopRequest:
    """Ctrl-C or SIGTERM: let the current step finish, then save and stop."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: no handlers, no graceful stop
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:  # a second Ctrl-C means now
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Trainer:
    def __init__(self, task: Task, stage_dir: Path, epochs: int, early_stop: bool, dist_info: Distributed,
                 console: Console, resume_command: str) -> None:
        self.task, self.dir, self.epochs, self.early_stop = task, stage_dir, epochs, early_stop
        self.dist, self.console, self.resume_command = dist_info, console, resume_command
        self.recipe = task.recipe
        self.cfg = task.train_cfg
        self.device = task.device
        self.progress = Progression()
        self.history: list[dict[str, Any]] = []
        self.scalars = None  # a tboard.Scalars when --tensorboard (rank 0 only)
        if dist_info.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [dist_info.local_rank] if self.device.type == "cuda" else None
            task.wrap(lambda m: DDP(m, device_ids=ids) if any(p.requires_grad for p in m.parameters()) else m)
        self.optimizers = {
            name: torch.optim.AdamW(groups, lr=self.cfg.lr, betas=(self.cfg.beta1, self.cfg.beta2),
                                    weight_decay=self.cfg.weight_decay)
            for name, groups in task.param_groups().items()
        }
        self.train_data = task.train_segments()
        self.sampler = EpochBatches(len(self.train_data), self.cfg.batch_size, self.cfg.seed, shuffle=True,
                                    rank=dist_info.rank, world=dist_info.world)
        if len(self.sampler) == 0:
            raise UserError(f"{task.dataset.path}: no training batch can be formed (0 training utterances)")
        self.loader = self._loader(self.train_data, self.sampler)
        self.val_data = {s: task.val_segments(s) for s in ("val", "unseen")}
        self.good_state = self._snapshot()

    # --- data ----------------------------------------------------------------------------------------

    def _loader(self, data: Segments, sampler: EpochBatches) -> DataLoader:
        workers = self.cfg.num_workers
        return DataLoader(data, batch_sampler=sampler, num_workers=workers, pin_memory=self.device.type == "cuda",
                          persistent_workers=False, prefetch_factor=4 if workers else None)

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda" and self.cfg.bf16)

    # --- state ---------------------------------------------------------------------------------------

    @property
    def steps_per_epoch(self) -> int:
        return len(self.sampler)

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def _snapshot(self) -> dict[str, Any]:
        return copy.deepcopy({"modules": {n: m.state_dict() for n, m in self.task.modules().items()},
                              "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()}})

    def _restore(self, state: dict[str, Any]) -> None:
        for name, module in self.task.modules().items():
            module.load_state_dict(state["modules"][name])
        for name, opt in self.optimizers.items():
            if name in state.get("optimizers", {}):
                opt.load_state_dict(state["optimizers"][name])

    def _checkpoint(self) -> dict[str, Any]:
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {**self._header(), "progress": dataclasses.asdict(self.progress), **self._snapshot(), "rng": rng}

    def _header(self) -> dict[str, Any]:
        """What every checkpoint carries to be read back without the command that wrote it."""
        return {"format": 1, "stage": self.task.stage, "recipe": self.recipe.to_dict(), "meta": self.task.meta()}

    def resume(self, state: dict[str, Any]) -> None:
        self._restore(state)
        self.progress = Progression(**state["progress"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        path = self.dir / HISTORY_FILE
        rows = read_history(path) if path.is_file() else []
        self.history = [r for r in rows if r["epoch"] <= self.progress.epoch]
        self.good_state = self._snapshot()

    def _save_last(self) -> None:
        if not self.dist.main:
            return
        if not all(checkpoint.all_finite(m) for m in self.task.modules().values()):
            self.console.print("[yellow]weights are not finite: `last` keeps the previous good state[/]")
            return
        checkpoint.save_atomic(self._checkpoint(), self.dir / "last.pt")

    def _save_best(self, epoch: int, value: float) -> None:
        if self.dist.main:
            checkpoint.save_atomic({**self._header(), "epoch": epoch, "value": value,
                                    "modules": {n: m.state_dict() for n, m in self.task.modules().items()}},
                                   self.dir / "best.pt")

    # --- one step ------------------------------------------------------------------------------------

    def _set_lr(self) -> float:
        factor = lr_factor(self.progress.step, self.cfg.warmup_steps, self.total_steps, self.cfg.lr_min_ratio)
        factor *= self.progress.lr_scale * convergence.lr_scale(self.progress.lr_drops, self.recipe.convergence)
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * factor
        return factor * self.cfg.lr

    def _train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float] | None:
        """One iteration: every optimizer group in the task's order. None when the batch was skipped."""
        values: dict[str, float] = {}
        weights = self.task.weights
        for group in self.task.groups:
            with self._autocast():
                losses = self.task.losses(group, batch, self.progress.step)
            if not losses:
                continue
            total = sum(weights[name] * value for name, value in losses.items())
            opt = self.optimizers[group]
            opt.zero_grad(set_to_none=True)
            finite = bool(torch.isfinite(total))
            if finite:
                total.backward()
                params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
                norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
                finite = bool(torch.isfinite(norm))
            if not finite:
                opt.zero_grad(set_to_none=True)
                return None
            opt.step()
            values.update({name: float(v.detach()) for name, v in losses.items()})
            values[f"{group}_total"] = float(total.detach())
        return values

    def _on_nonfinite(self, consecutive: int) -> int:
        self.progress.nonfinite += 1
        if consecutive < self.cfg.max_bad_steps:
            return consecutive
        self._restore(self.good_state)
        self.progress.lr_scale *= self.cfg.lr_backoff
        self.console.print(f"[yellow]{consecutive} non-finite losses in a row: reloaded the last good state, "
                           f"learning rate x{self.progress.lr_scale:g}[/]")
        return 0

    # --- validation ----------------------------------------------------------------------------------

    def validate(self, split: str) -> dict[str, float] | None:
        data = self.val_data[split]
        if data is None:
            return None
        return validation_losses(self.task, data, self.cfg.batch_size, self.dist, self.cfg.bf16)

    # --- the loop ------------------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        p, task = self.progress, self.task
        monitor_key = "unseen_loss" if self.val_data["unseen"] is not None else "val_loss"
        consecutive_bad = 0
        result: dict[str, Any] = {"stage": task.stage, "interrupted": False, "early_stopped": False}
        display = _Display(self.console, task.stage, self.epochs, self.steps_per_epoch, enabled=self.dist.main)
        for module in task.modules().values():
            module.train()
        with StopRequest() as stop, display:
            display.update(p, self.history, None)
            while p.epoch < self.epochs:
                epoch = p.epoch + 1
                task.on_epoch_start(epoch)
                self.sampler.set_epoch(epoch, skip=p.batch_in_epoch)
                started, seen, sums = time.time(), 0, {}
                for batch in self.loader:
                    p.step += 1
                    lr = self._set_lr()
                    values = self._train_step(self._to_device(batch))
                    p.batch_in_epoch += 1
                    if values is None:
                        consecutive_bad = self._on_nonfinite(consecutive_bad + 1)
                    else:
                        consecutive_bad = 0
                        seen += len(batch["mel"]) * self.dist.world
                        for k, v in values.items():
                            sums[k] = sums.get(k, 0.0) + v
                    display.update(p, self.history, sums.get(task.monitor, 0) / max(1, p.batch_in_epoch))
                    if stop.requested:
                        break
                if stop.requested and p.batch_in_epoch < self.steps_per_epoch:
                    self._save_last()
                    self._barrier()
                    result["interrupted"] = self._announce_stop(display, f"in epoch {epoch} after step {p.step}")
                    break
                n_batches = max(1, p.batch_in_epoch)
                row = self._epoch_row(epoch, sums, n_batches, seen, time.time() - started, lr)
                p.epoch, p.batch_in_epoch = epoch, 0
                assessment = convergence.assess(self.history + [row], self.recipe.convergence, monitor=monitor_key)
                row["status"] = assessment.status
                self.history.append(row)
                dropped = convergence.reduces_lr(assessment)  # reduce-on-plateau: next epochs at a lower rate
                p.lr_drops += int(dropped)  # before _save_last, so a resumed run continues at the lowered rate
                value = row.get(assessment.monitor)
                value = value if value is not None else math.nan
                improved = math.isfinite(value) and value < p.best_value
                if improved:
                    p.best_value, p.best_epoch = value, epoch
                    self._save_best(epoch, value)
                if self.dist.main:
                    append_history(self.dir / HISTORY_FILE, row)
                    if self.scalars is not None:
                        self.scalars.write(row)
                self.good_state = self._snapshot()
                self._save_last()
                self._barrier()
                display.epoch_done(row, p)
                if dropped and self.dist.main:
                    self.console.print(f"{task.stage}: plateau at epoch {epoch}; learning rate x"
                                       f"{self.recipe.convergence.lr_drop_factor:g} (drop {p.lr_drops} of "
                                       f"{self.recipe.convergence.max_lr_drops}): {assessment.summary()}",
                                       highlight=False, soft_wrap=True)
                if stop.requested:
                    result["interrupted"] = self._announce_stop(display, f"after epoch {epoch}")
                    break
                if self.early_stop and convergence.should_stop(assessment):
                    result["early_stopped"] = True
                    self._restore_best()
                    if self.dist.main:
                        display.stop()
                        self.console.print(f"[bold]Early stop at epoch {epoch}[/]: {assessment.summary()}")
                    break
        if self.scalars is not None:
            self.scalars.close()
        result["assessment"] = convergence.assess(self.history, self.recipe.convergence, monitor=monitor_key)
        result["best_epoch"], result["best_value"] = p.best_epoch, p.best_value
        result["epochs"] = p.epoch
        return result

    def _announce_stop(self, display: "_Display", when: str) -> bool:
        if self.dist.main:
            display.stop()
            self.console.print(f"[yellow]Stopped {when}; saved {self.dir / 'last.pt'}.[/] Resume with:\n"
                               f"  {self.resume_command}", highlight=False, soft_wrap=True)
        return True

    def _restore_best(self) -> None:
        best = self.dir / "best.pt"
        if best.is_file():
            self._restore({"modules": checkpoint.load(best, self.device)["modules"]})

    def _barrier(self) -> None:
        if self.dist.world > 1:
            dist.barrier()

    def _epoch_row(self, epoch: int, sums: dict[str, float], n: int, seen: int, seconds: float,
                   lr: float) -> dict[str, Any]:
        val = self.validate("val")
        unseen = self.validate("unseen")
        monitor = self.task.monitor
        row: dict[str, Any] = {
            "epoch": epoch, "step": self.progress.step,
            "train_loss": sums.get(monitor, math.nan) / n,
            "val_loss": val[monitor] if val else None,
            "unseen_loss": unseen[monitor] if unseen else None,
            "lr": lr, "seconds": round(seconds, 3), "samples_per_second": round(seen / max(seconds, 1e-9), 2),
            "nonfinite_skipped": self.progress.nonfinite, "lr_drops": self.progress.lr_drops,
        }
        for k, v in sorted(sums.items()):
            row[f"train_{k}"] = v / n
        for split, values in (("val", val), ("unseen", unseen)):
            for k, v in (values or {}).items():
                if k != monitor:
                    row[f"{split}_{k}"] = v
        return row


@torch.no_grad()
def validation_losses(task: Task, data: Segments, batch_size: int, dist_info: Distributed | None = None,
                      bf16: bool = True) -> dict[str, float]:
    """Mean of each per-item validation value over a split (sharded over ranks, then all-reduced).

    The one definition of "validation loss": training and `evaluate` both call it. NaN items are left out
    of their value's mean (e.g. F0 error on an all-unvoiced segment).
    """
    dist_info = dist_info or Distributed()
    device = task.device
    was_training = {name: m.training for name, m in task.modules().items()}
    for module in task.modules().values():
        module.eval()
    sampler = EpochBatches(len(data), batch_size, 0, shuffle=False, rank=dist_info.rank, world=dist_info.world,
                           drop_last=False)
    loader = DataLoader(data, batch_sampler=sampler, num_workers=0)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, torch.Tensor] = {}
    for batch in loader:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda" and bf16):
            values = task.val_losses({k: v.to(device) for k, v in batch.items()})
        for name, v in values.items():
            v = v.float()
            ok = torch.isfinite(v)
            sums[name] = sums.get(name, 0) + torch.where(ok, v, 0).sum().double()
            counts[name] = counts.get(name, 0) + ok.sum().double()
    names = sorted(sums)
    if dist_info.world > 1:
        packed = torch.stack([torch.stack([sums[n], counts[n]]) for n in names]).to(device)
        dist.all_reduce(packed)
        sums = {n: packed[i, 0] for i, n in enumerate(names)}
        counts = {n: packed[i, 1] for i, n in enumerate(names)}
    for name, module in task.modules().items():
        module.train(was_training[name])
    return {n: float(sums[n] / counts[n]) if counts[n] > 0 else math.nan for n in names}


class _Display:
    """The live line (epoch i/N, iteration j/M, running loss, last validation, best epoch, ETA) and
    one printed row per epoch."""

    def __init__(self, console: Console, stage: str, epochs: int, steps: int, enabled: bool) -> None:
        self.console, self.stage, self.epochs, self.steps, self.enabled = console, stage, epochs, steps, enabled
        self.bar = Progress(TextColumn("[bold]{task.fields[stage]}[/] epoch {task.fields[epoch]}/{task.fields[epochs]}"),
                            TextColumn("iter {task.fields[iter]}/{task.fields[steps]}"), BarColumn(),
                            MofNCompleteColumn(), TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                            console=console, transient=False, disable=not enabled)
        self.task_id = self.bar.add_task("train", total=epochs * steps, stage=stage, epoch=0, epochs=epochs,
                                         iter=0, steps=steps, info="")
        self.stopped = False

    def __enter__(self) -> "_Display":
        self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if not self.stopped:
            self.bar.stop()
            self.stopped = True

    def update(self, p: Progression, history: Sequence[dict], running: float | None) -> None:
        last = history[-1] if history else {}
        val = last.get("unseen_loss") if last.get("unseen_loss") is not None else last.get("val_loss")
        info = f"loss {running:.4f}" if running else ""
        if val is not None:
            info += f"  val {val:.4f}  best @{p.best_epoch}"
        self.bar.update(self.task_id, completed=p.step, epoch=p.epoch + (1 if p.batch_in_epoch else 0),
                        iter=p.batch_in_epoch, info=info)

    def epoch_done(self, row: dict[str, Any], p: Progression) -> None:
        if not self.enabled:
            return

        def f(x):
            return "-" if x is None else f"{x:.4f}"

        self.console.print(f"{self.stage} epoch {row['epoch']:>3}/{self.epochs} step {row['step']:>6} | loss "
                           f"train {f(row['train_loss'])} val {f(row['val_loss'])} unseen {f(row['unseen_loss'])} | "
                           f"lr {row['lr']:.1e} | {row['seconds']:.1f}s | {row['status']}"
                           + (" *best*" if p.best_epoch == row["epoch"] else ""), highlight=False, soft_wrap=True)


# ---------------------------------------------------------------------------------------------------
# Entry point: dataset and run-folder checks, then one Trainer per stage.


def resolve_recipe(dataset: Dataset, recipe: str | None, overrides: Sequence[str]) -> Recipe:
    """The dataset's own recipe unless one is named; its audio settings must match the dataset's."""
    r = load_recipe(recipe, overrides) if recipe else recipe_from_dict(dataset.recipe.to_dict(), overrides)
    if r.audio != dataset.audio:
        diff = _differences(dataclasses.asdict(dataset.audio), dataclasses.asdict(r.audio), "audio")
        raise UserError(f"{dataset.path}: prepared with a different audio config than recipe '{r.name}' "
                        f"({'; '.join(diff)}); prepare it again with this recipe, or train without --recipe")
    return r


def _differences(a: dict, b: dict, prefix: str) -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
            out += _differences(a[k], b[k], f"{prefix}.{k}")
        elif a.get(k) != b.get(k):
            out.append(f"{prefix}.{k}: {a.get(k)!r} vs {b.get(k)!r}")
    return out


def check_splits(dataset: Dataset, stage: str, need_unseen: bool) -> None:
    train = dataset.split("train")
    if len(train) == 0:
        raise UserError(f"{dataset.path}: the train split is empty")
    if stage == "acoustic" and need_unseen:
        speakers = {train.speaker(i) for i in range(len(train))}
        if len(speakers) < 2:
            raise UserError(f"{dataset.path}: {len(speakers)} training speaker(s); the zero-shot model needs at "
                            "least 2 (use --finetune to adapt a trained model to one voice)")
        if len(dataset.split("unseen")) < 2:
            raise UserError(f"{dataset.path}: too few unseen-speaker utterances for speaker-disjoint validation; "
                            "prepare with at least 3 speakers or name some with --unseen-speakers")
    if len(dataset.split("val")) + len(dataset.split("unseen")) == 0:
        raise UserError(f"{dataset.path}: no validation utterances (val and unseen are empty)")


def train(data: Path, run: Path, stage: str = "acoustic", recipe: str | None = None,
          overrides: Sequence[str] = (), epochs: int | None = None, resume: bool = False,
          device: str | None = None, early_stop: bool | None = None, finetune_on_acoustic: bool = False,
          init_from: Path | None = None, finetune: bool = False,
          console: Console | None = None, tensorboard: bool = False) -> dict[str, dict[str, Any]]:
    """Train one stage or both ('all': acoustic, then vocoder). Returns each stage's result.

    With `finetune`, `init_from` (a run folder or bundle) is adapted to the dataset's voice using the
    recipe's [finetune] settings; its architecture and audio settings are the base model's.
    """
    console = console or Console(stderr=True)
    if stage not in (*STAGES, "all"):
        raise UserError(f"--stage {stage!r}: expected acoustic, vocoder or all")
    if finetune and init_from is None:
        raise UserError("--finetune needs --init-from MODEL (a run folder or a .safetensors bundle)")
    if init_from is not None and not finetune:
        raise UserError("--init-from starts a fine-tune: add --finetune (other training starts from scratch, "
                        "or continues a run with --resume)")
    if tensorboard:
        tboard.require()
    dataset = Dataset.open(data)
    base = None
    if finetune:
        base = load_model(init_from, need_vocoder=stage != "acoustic")
        base_recipe = recipe_from_dict(base.recipe.to_dict(), overrides, source=str(init_from))
        if base_recipe.audio != dataset.audio:
            diff = _differences(dataclasses.asdict(dataset.audio), dataclasses.asdict(base_recipe.audio), "audio")
            raise UserError(f"{init_from}: the base model's audio config differs from {dataset.path}'s "
                            f"({'; '.join(diff[:3])}); prepare the voice's data with the base model's recipe")
        ft.check(base_recipe.finetune)
    else:
        base_recipe = resolve_recipe(dataset, recipe, overrides)
    dist_info, dev = setup_distributed(device)
    if finetune and dist_info.world > 1:
        raise UserError("fine-tuning runs on one device; start it without torchrun")
    results = {}
    for s in STAGES if stage == "all" else (stage,):
        results[s] = _train_stage(dataset, Path(run), s, base_recipe, epochs, resume, dev, dist_info, early_stop,
                                  finetune_on_acoustic and s == "vocoder", console, data, recipe, overrides,
                                  base, init_from, tensorboard)
        if results[s]["interrupted"]:
            break
    return results


def _finetune_recipe(recipe: Recipe, stage: str) -> Recipe:
    """The stage's training settings for fine-tuning: the [finetune] rate and epochs, a short warmup."""
    f = recipe.finetune
    stage_cfg = getattr(recipe, stage)
    train_cfg = dataclasses.replace(stage_cfg.train, lr=f.lr, epochs=f.epochs,
                                    warmup_steps=min(stage_cfg.train.warmup_steps, 10))
    return dataclasses.replace(recipe, **{stage: dataclasses.replace(stage_cfg, train=train_cfg)})


def _train_stage(dataset: Dataset, run: Path, stage: str, recipe: Recipe, epochs: int | None, resume: bool,
                 device: torch.device, dist_info: Distributed, early_stop: bool | None, on_acoustic: bool,
                 console: Console, data: Path, recipe_arg: str | None, overrides: Sequence[str],
                 base=None, init_from: Path | None = None, tensorboard: bool = False) -> dict[str, Any]:
    finetuning = base is not None
    if finetuning:
        recipe = _finetune_recipe(recipe, stage)
    check_splits(dataset, stage, need_unseen=not finetuning)
    stage_dir = run / stage
    last = stage_dir / "last.pt"
    state = None
    if resume and last.is_file():
        state = checkpoint.load(last, device)
        saved = recipe_from_dict(state["recipe"], source=str(last))
        fixed = ("audio", stage)
        diff = [d for key in fixed for d in _differences(dataclasses.asdict(getattr(saved, key)),
                                                          dataclasses.asdict(getattr(recipe, key)), key)
                if not d.startswith(f"{stage}.train.")]
        if diff:
            raise UserError(f"{last}: the run was made with other settings ({'; '.join(diff[:4])}); "
                            "resume without changing them, or start a new --run")
    elif (last.is_file() or (stage_dir / HISTORY_FILE).is_file()) and not resume:
        raise UserError(f"{stage_dir}: a run is already here; continue it with --resume or choose another --run")
    if dist_info.main:
        stage_dir.mkdir(parents=True, exist_ok=True)
        (stage_dir / "config.json").write_text(recipe.to_json())
    n_epochs = epochs or getattr(recipe, stage).train.epochs
    kwargs: dict[str, Any] = {}
    if finetuning:
        kwargs.update(finetune=recipe.finetune, base_source=str(init_from),
                      base=base.acoustic if stage == "acoustic" else base.vocoder)
        if stage == "acoustic":
            kwargs["speakers"] = base.meta["acoustic"].get("speakers", [])
    if stage == "acoustic" and state is not None:
        kwargs["speakers"] = state["meta"]["speakers"]
    if stage == "vocoder" and on_acoustic:
        kwargs["acoustic"] = load_model(run, need_vocoder=False, device=device).acoustic
    torch.manual_seed(getattr(recipe, stage).train.seed)
    task = make_task(stage, recipe, dataset, device, **kwargs)
    command = (f"voiceclone train --data {data} --run {run} --stage {stage} --resume"
               + (f" --recipe {recipe_arg}" if recipe_arg else "")
               + (f" --init-from {init_from} --finetune" if finetuning else "")
               + "".join(f" --set {o}" for o in overrides) + (f" --epochs {epochs}" if epochs else ""))
    trainer = Trainer(task, stage_dir, n_epochs, recipe.convergence.early_stop if early_stop is None else early_stop,
                      dist_info, console, command)
    if tensorboard and dist_info.main:
        trainer.scalars = tboard.Scalars(stage_dir, stage)
    if state is not None:
        trainer.resume(state)
        if dist_info.main:
            console.print(f"Resuming {stage} from epoch {trainer.progress.epoch}, step {trainer.progress.step}.")
    baseline = None
    if finetuning and state is None and trainer.val_data["val"] is not None:
        task.on_epoch_start(1)
        baseline = trainer.validate("val")
    result = trainer.fit()
    if baseline is not None:
        result["baseline_val_loss"] = baseline[task.monitor]
        if dist_info.main:
            console.print(f"{stage}: held-out loss of the base model {baseline[task.monitor]:.4f} -> fine-tuned "
                          f"{result['best_value']:.4f} (epoch {result['best_epoch']})", highlight=False)
    return result
