"""`voiceclone evaluate --run RUN` alone: a run's convergence status and curves from its histories (no
dataset, no model loaded), so a run still training can be followed. The full evaluation reuses
`model_convergence` for its convergence section."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from rich.console import Console

from voiceclone import run as R
from voiceclone.errors import stderr_console
from voiceclone.evaluation.convergence import Assessment, assess, should_stop
from voiceclone.evaluation.curves import plot_curves
from voiceclone.evaluation.printing import epoch_of, print_convergence, print_curves
from voiceclone.evaluation.report import header, write_report


def watch(run: Path | str, out: Path | str | None = None, plot: Path | str | None = None,
          console: Console | None = None) -> dict[str, Any]:
    """Convergence status and curves of a run from its histories alone (no dataset, no model loaded), so a
    run still training can be followed."""
    console = console or stderr_console()
    run = Path(run)
    convergence = run_convergence(run)
    report: dict[str, Any] = {**header(), "run": str(run), "convergence": convergence["report"]}
    print_curves(convergence, console)
    print_convergence(report["convergence"], console)
    if plot is not None:
        report["plot"] = plot_report(convergence, plot, console)
    if out is not None:
        report["out"] = str(write_report(report, out))
        console.print(f"wrote {out}", highlight=False)
    return report


def model_convergence(path: Path) -> dict[str, Any]:
    if path.is_dir():
        return run_convergence(path)
    return {"histories": {}, "assessments": {}, "stops": {},
            "report": {"available": False, "reason": f"{path.name} is a bundle: it carries no training history; "
                                                     "evaluate the run folder for convergence"}}


def _stage_folder(run: Path, stage: str) -> Path:
    return run if R.has_history(run) else R.stage_dir(run, stage)


def run_convergence(run: Path) -> dict[str, Any]:
    histories = R.run_histories(run)
    assessments: dict[str, Assessment] = {}
    stops: dict[str, int | None] = {}
    stages: dict[str, Any] = {}
    for stage, rows in histories.items():
        cfg = R.stage_convergence(_stage_folder(run, stage))
        named = stage if stage in R.STAGES else None  # a stage folder given itself is keyed by its own name
        a = assess(rows, cfg, monitor="unseen_loss", stage=named)
        assessments[stage] = a
        numbered = [epoch_of(row, k) for k, row in enumerate(rows, 1)]
        # where early stopping fires (or would have, with it off): the first epoch the detector says stop
        stop_epoch = next((numbered[k - 1] for k in range(1, len(rows) + 1)
                           if should_stop(assess(rows[:k], cfg, monitor="unseen_loss"))), None)
        last_epoch = max(numbered) if numbered else None
        stopped_early = stop_epoch is not None and stop_epoch == last_epoch
        stops[stage] = stop_epoch if stopped_early else None
        stages[stage] = {"status": a.status, "monitor": a.monitor, "best_epoch": a.best_epoch,
                         "best_value": a.best_value, "epochs": a.evidence["epochs"], "last_epoch": last_epoch,
                         "stop_epoch": stop_epoch, "stopped_early": stopped_early, "evidence": a.evidence,
                         "recommendation": a.recommendation, "summary": a.summary(),
                         "config": dataclasses.asdict(cfg)}
    return {"histories": histories, "assessments": assessments, "stops": stops,
            "report": {"available": True, "run": str(run), "stages": stages}}


def plot_report(convergence: dict[str, Any], path: Path | str, console: Console) -> dict[str, Any]:
    if not convergence["histories"]:
        console.print(f"[yellow]no curves:[/] {convergence['report']['reason']}", highlight=False)
        return {"written": False, "reason": convergence["report"]["reason"]}
    written = plot_curves(convergence["histories"], convergence["assessments"], path, convergence["stops"])
    console.print(f"wrote {written}", highlight=False)
    return {"written": True, "path": str(written)}
