"""What a training run shows on the terminal: a live progress line and one printed row per epoch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

if TYPE_CHECKING:
    from voiceclone.train.loop import Progression


class Display:
    """The live line (epoch i/N, iteration j/M, running loss, last validation, best epoch, ETA) and
    one printed row per epoch. Where nothing can be redrawn (a pipe, a log file, the vocoder's worker process
    of train/beside.py) the rows say it all: the live line is left out, not printed once, cut short, at the end."""

    def __init__(self, console: Console, stage: str, epochs: int, steps: int, enabled: bool) -> None:
        self.console, self.stage, self.epochs, self.steps, self.enabled = console, stage, epochs, steps, enabled
        self.bar = Progress(TextColumn("[bold]{task.fields[stage]}[/] epoch {task.fields[epoch]}/{task.fields[epochs]}"),
                            TextColumn("iter {task.fields[iter]}/{task.fields[steps]}"), BarColumn(),
                            MofNCompleteColumn(), TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                            console=console, transient=False,
                            disable=not enabled or not console.is_interactive)
        self.task_id = self.bar.add_task("train", total=epochs * steps, stage=stage, epoch=0, epochs=epochs,
                                         iter=0, steps=steps, info="")
        self.stopped = False

    def __enter__(self) -> "Display":
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
