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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader

from voiceclone import run as R
from voiceclone.data.dataset import EpochBatches, Segments
from voiceclone.errors import UserError
from voiceclone.evaluation import convergence
from voiceclone.stages.tasks import Task
from voiceclone.stages.validation import mixed_precision, validation_losses
from voiceclone.threads import ThreadGovernor
from voiceclone.train.display import Display
from voiceclone.train.distributed import Distributed, StopRequest
from voiceclone.train.ema import WeightAverage


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
    # the unfinished epoch's loss sums and samples: a run stopped mid-epoch logs the whole epoch's mean
    epoch_sums: dict[str, float] = field(default_factory=dict)
    epoch_seen: int = 0
    epoch_trained: int = 0  # the batches in epoch_sums: skipped ones are in batch_in_epoch but add no loss

    @classmethod
    def restored(cls, saved: dict[str, Any]) -> "Progression":
        """The counters of a resume checkpoint, each checked: they are used only once training runs, so a
        negative epoch or a best value that is a string stopped a resumed run with a traceback, one epoch
        of work lost. ValueError or TypeError names the counter."""
        progress = cls(**saved)  # an unknown counter: TypeError
        for f in dataclasses.fields(cls):
            value = getattr(progress, f.name)
            if f.type == "int" and (type(value) is not int or value < 0):
                raise ValueError(f"progress.{f.name} must be a whole number >= 0, got {value!r}")
        if not _number(progress.best_value) or math.isnan(progress.best_value):
            raise ValueError(f"progress.best_value must be a number, got {progress.best_value!r}")
        if not _number(progress.lr_scale) or not 0 < progress.lr_scale <= 1:
            raise ValueError(f"progress.lr_scale must be a number in (0, 1], got {progress.lr_scale!r}")
        if not isinstance(progress.epoch_sums, dict) or not all(
                isinstance(k, str) and _number(v) for k, v in progress.epoch_sums.items()):
            raise ValueError("progress.epoch_sums must map loss names to numbers")
        return progress


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


class Trainer:
    def __init__(self, task: Task, stage_dir: Path, epochs: int, early_stop: bool, dist_info: Distributed,
                 console: Console, resume_command: str, threads: ThreadGovernor | None = None) -> None:
        self.task, self.dir, self.epochs, self.early_stop = task, stage_dir, epochs, early_stop
        self.threads = threads  # chooses torch's threads again after every epoch
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
            # fused: one kernel over all parameters instead of a dozen small ops per tensor; on the tiny demo
            # vocoder (a step of ~16 ms on 2 CPU cores) that saved 7% of the step
            name: torch.optim.AdamW(groups, lr=self.cfg.lr, betas=(self.cfg.beta1, self.cfg.beta2),
                                    weight_decay=self.cfg.weight_decay,
                                    fused=self.device.type in ("cpu", "cuda") or None)
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
        self.ema = WeightAverage(self._averaged(), self.cfg.ema) if self.cfg.ema > 0 else None

    # --- data ----------------------------------------------------------------------------------------

    def _loader(self, data: Segments, sampler: EpochBatches) -> DataLoader:
        workers = self.cfg.num_workers
        return DataLoader(data, batch_sampler=sampler, num_workers=workers, pin_memory=self.device.type == "cuda",
                          persistent_workers=False, prefetch_factor=4 if workers else None)

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    # --- state ---------------------------------------------------------------------------------------

    @property
    def steps_per_epoch(self) -> int:
        return len(self.sampler)

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def _averaged(self) -> dict[str, nn.Module]:
        """The networks inference uses, whose weight average (train/ema.py) is validated and kept as best."""
        modules = self.task.modules()
        return {name: modules[name] for name in self.task.averaged}

    def _validation_weights(self):
        """Within the block the networks hold the weights that are validated and saved as best."""
        return self.ema.applied(self._averaged()) if self.ema is not None else contextlib.nullcontext()

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
        ema = {"ema": self.ema.state_dict()} if self.ema is not None else {}
        return {**self._header(), "progress": dataclasses.asdict(self.progress), **self._snapshot(), "rng": rng,
                "history": self.history, **ema}  # the rows of exactly the epochs these weights have seen

    def _header(self) -> dict[str, Any]:
        """What every checkpoint carries to be read back without the command that wrote it."""
        return {"format": 1, "stage": self.task.stage, "recipe": self.recipe.to_dict(), "meta": self.task.meta(),
                "dataset": R.dataset_identity(self.task.dataset)}

    def resume(self, state: dict[str, Any]) -> None:
        # the optimizers' saved rates would win over the recipe's: keep the recipe's (a lower --set ...lr after
        # `diverged` is the advice), and say when they changed
        fresh = {n: [g["base_lr"] for g in o.param_groups] for n, o in self.optimizers.items()}
        self._restore(state)
        changed = []
        for name, opt in self.optimizers.items():
            for group, lr in zip(opt.param_groups, fresh[name]):
                if not math.isclose(group.get("base_lr", lr), lr):
                    changed.append((group.get("base_lr"), lr))
                group["base_lr"] = lr
        if changed and self.dist.main:
            old, new = changed[-1]
            self.console.print(f"{self.task.stage}: learning rate {old:g} -> {new:g} (the recipe's, with --set)",
                               highlight=False)
        self.progress = Progression.restored(state["progress"])
        self._recount_stopped_epoch(state["recipe"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        if "history" in state:
            rows = [dict(r) for r in state["history"]]
        else:  # a checkpoint from before they carried their rows
            rows = R.read_history(self.dir / R.HISTORY_FILE) if R.has_history(self.dir) else []
        self.history = [r for r in rows if r["epoch"] <= self.progress.epoch]
        if self.dist.main:  # a torn last line, rows of epochs redone after a kill: the file says what the weights saw
            R.write_history(self.dir / R.HISTORY_FILE, self.history)
        self.good_state = self._snapshot()
        if self.ema is not None:  # a checkpoint without an average (written with ema off) starts one here
            if "ema" in state:
                self.ema.load_state_dict(state["ema"], self.device)
            else:
                self.ema = WeightAverage(self._averaged(), self.cfg.ema)

    def _recount_stopped_epoch(self, saved_recipe: Any) -> None:
        """A stopped epoch's place is counted in batches of the size it trained with. Resumed with another
        --set ...batch_size, those counts skipped items the run never saw (a larger batch) or trained some
        twice (a smaller one): the place is counted again in the new batches, rounded up so that no item
        trains twice in the epoch."""
        p = self.progress
        stage = saved_recipe.get(self.task.stage) if isinstance(saved_recipe, dict) else None
        saved = stage.get("train", {}).get("batch_size") if isinstance(stage, dict) else None
        if not p.batch_in_epoch or type(saved) is not int or saved < 1 or saved == self.cfg.batch_size:
            return
        items = p.batch_in_epoch * saved
        p.batch_in_epoch = -(-items // self.cfg.batch_size)
        if self.dist.main:
            self.console.print(f"{self.task.stage}: the stopped epoch had {items} items in batches of {saved}; it "
                               f"goes on in batches of {self.cfg.batch_size} after {p.batch_in_epoch * self.cfg.batch_size}",
                               highlight=False)

    def _save_last(self) -> None:
        if not self.dist.main:
            return
        if not all(R.all_finite(m) for m in self.task.modules().values()):
            self.console.print("[yellow]weights are not finite: `last` keeps the previous good state[/]")
            return
        R.save_atomic(self._checkpoint(), self.dir / R.LAST_FILE)

    def _save_best(self, epoch: int, value: float) -> None:
        if self.dist.main:
            averaged = self.ema.shadow if self.ema is not None else {}
            modules = {n: averaged.get(n) or m.state_dict() for n, m in self.task.modules().items()}
            R.save_atomic({**self._header(), "epoch": epoch, "value": value, "modules": modules,
                           "averaged": self.ema is not None}, self.dir / R.BEST_FILE)

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
            with mixed_precision(self.device, self.cfg.bf16):
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
        self.console.print(f"[yellow]{self.task.stage}: {consecutive} non-finite losses in a row: reloaded the last "
                           f"good state, learning rate x{self.progress.lr_scale:g}[/]")
        return 0

    # --- validation ----------------------------------------------------------------------------------

    def validate(self, split: str) -> dict[str, float] | None:
        data = self.val_data[split]
        if data is None:
            return None
        return validation_losses(self.task, data, self.cfg.batch_size, self.dist.rank, self.dist.world,
                                 self.cfg.bf16)

    # --- the loop ------------------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        p, task = self.progress, self.task
        monitor_key = "unseen_loss" if self.val_data["unseen"] is not None else "val_loss"
        consecutive_bad = 0
        result: dict[str, Any] = {"stage": task.stage, "interrupted": False, "early_stopped": False}
        display = Display(self.console, task.stage, self.epochs, self.steps_per_epoch, enabled=self.dist.main)
        for module in task.modules().values():
            module.train()
        with StopRequest() as stop, display:
            display.update(p, self.history, None)
            while p.epoch < self.epochs:
                epoch = p.epoch + 1
                task.on_epoch_start(epoch)
                self.sampler.set_epoch(epoch, skip=p.batch_in_epoch)
                started = time.time()
                # a checkpoint from before epoch_trained was kept counted the skipped batches in, as it divided
                sums, seen, trained = ((dict(p.epoch_sums), p.epoch_seen, p.epoch_trained or p.batch_in_epoch)
                                       if p.batch_in_epoch else ({}, 0, 0))
                rng = torch.get_rng_state() if p.batch_in_epoch else None
                batches = iter(self.loader)  # draws its workers' base seed from torch's generator
                if rng is not None:
                    # resumed mid-epoch: the stopped run drew that seed at the start of this epoch, before the
                    # state it saved; a second draw would shift every later random number (the augmentation)
                    torch.set_rng_state(rng)
                # the epoch's rate so far: a resumed position may lie past the end of the epoch as it is counted now
                # (a larger batch size, a dataset of fewer utterances), which then has no batch left to train
                lr = self._set_lr()
                for batch in batches:
                    p.step += 1
                    lr = self._set_lr()
                    values = self._train_step(self._to_device(batch))
                    p.batch_in_epoch += 1
                    if values is None:
                        consecutive_bad = self._on_nonfinite(consecutive_bad + 1)
                    else:
                        consecutive_bad = 0
                        trained += 1
                        if self.ema is not None:
                            self.ema.update(self._averaged())
                        seen += len(batch["mel"]) * self.dist.world
                        for k, v in values.items():
                            sums[k] = sums.get(k, 0.0) + v
                    display.update(p, self.history, sums.get(task.monitor, 0) / max(1, trained))
                    if self._agreed(stop):
                        break
                if self._agreed(stop) and p.batch_in_epoch < self.steps_per_epoch:
                    p.epoch_sums, p.epoch_seen, p.epoch_trained = sums, seen, trained
                    self._save_last()
                    self._barrier()
                    result["interrupted"] = self._announce_stop(display, f"in epoch {epoch} after step {p.step}")
                    break
                assessment = self._end_epoch(epoch, sums, trained, seen, started, lr, monitor_key, display)
                if self._agreed(stop):
                    result["interrupted"] = self._announce_stop(display, f"after epoch {epoch}")
                    break
                if self.early_stop and convergence.should_stop(assessment):
                    result["early_stopped"] = True
                    self._restore_best()
                    if self.dist.main:
                        display.stop()
                        self.console.print(f"[bold]{task.stage}: early stop at epoch {epoch}[/]: "
                                           f"{assessment.summary()}")
                    break
        if self.scalars is not None:
            self.scalars.close()
        result["assessment"] = convergence.assess(self.history, self.recipe.convergence, monitor=monitor_key,
                                                   stage=task.stage)
        result["best_epoch"], result["best_value"] = p.best_epoch, p.best_value
        result["epochs"] = p.epoch
        return result

    def _end_epoch(self, epoch: int, sums: dict[str, float], trained: int, seen: int, started: float, lr: float,
                   monitor_key: str, display: Display) -> convergence.Assessment:
        """Close a finished epoch: validate, assess convergence, lower the learning rate on a plateau, record
        the history row, save `best` when the monitored loss improved, then `last`; returns the assessment
        (fit decides on an early stop from it). The training losses are means over the `trained` batches
        whose losses are in `sums`: a skipped batch counted as a zero loss lowered them."""
        p = self.progress
        with self._validation_weights():
            row = self._epoch_row(epoch, sums, max(1, trained), seen, time.time() - started, lr)
        p.epoch, p.batch_in_epoch, p.epoch_sums, p.epoch_seen, p.epoch_trained = epoch, 0, {}, 0, 0
        assessment = convergence.assess(self.history + [row], self.recipe.convergence, monitor=monitor_key,
                                        stage=self.task.stage)
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
            R.append_history(self.dir / R.HISTORY_FILE, row)
            if self.scalars is not None:
                self.scalars.write(row)
        self.good_state = self._snapshot()
        self._save_last()
        self._barrier()
        display.epoch_done(row, p)
        if self.threads is not None:  # a neighbour may have started or stopped during the epoch
            self.threads.update()
        if dropped and self.dist.main:
            self.console.print(f"{self.task.stage}: plateau at epoch {epoch}; learning rate x"
                               f"{self.recipe.convergence.lr_drop_factor:g} (drop {p.lr_drops} of "
                               f"{self.recipe.convergence.max_lr_drops}): {assessment.summary()}",
                               highlight=False, soft_wrap=True)
        return assessment

    def _announce_stop(self, display: Display, when: str) -> bool:
        if self.dist.main:
            display.stop()
            self.console.print(f"[yellow]Stopped {when}; saved {self.dir / R.LAST_FILE}.[/] Resume with:\n"
                               f"  {self.resume_command}", highlight=False, soft_wrap=True)
        return True

    def _restore_best(self) -> None:
        best = self.dir / R.BEST_FILE
        if best.is_file():
            self._restore({"modules": R.load_checkpoint(best, self.device)["modules"]})

    def _agreed(self, stop: StopRequest) -> bool:
        """Whether any rank was asked to stop. A signal reaches the ranks one by one (a stop sent to one of
        them, torchrun passing a Ctrl-C on): a rank that stopped alone left the others in the next step's
        gradient exchange, which failed with a gloo traceback once it exited, their epoch unsaved."""
        if self.dist.world == 1:
            return stop.requested
        # not written into `stop`: this rank's own signal, when it comes, must not count as a second Ctrl-C
        flag = torch.tensor([float(stop.requested)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

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
