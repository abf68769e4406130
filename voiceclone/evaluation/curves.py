"""Drawing training curves (histories as run.py reads them) into a PNG. No torch here, so `evaluate`
can draw a run without loading the training stack.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Mapping

from voiceclone.errors import writing
from voiceclone.evaluation.convergence import Assessment
from voiceclone.files import tmp_beside, write_atomic

CURVES = (("train_loss", "train", "tab:blue"), ("val_loss", "val (seen speakers)", "tab:orange"),
          ("unseen_loss", "unseen speakers", "tab:green"))
LOG_SCALE_SPAN = 10.0  # a y range wider than this factor is drawn on a log axis


def plot_curves(histories: Mapping[str, list[dict[str, Any]]], assessments: Mapping[str, Assessment],
                path: Path | str, early_stop_epochs: Mapping[str, int | None] | None = None) -> Path:
    """Draw one panel per stage and write a PNG; returns its path.

    Each panel: train_loss, val_loss and unseen_loss against epoch (keys a stage lacks are left out; None
    and non-finite values are gaps), the best epoch of the stage's assessment marked on its monitored
    curve, the early-stop epoch marked if given, the status in the title; a log y axis when the plotted
    values span more than LOG_SCALE_SPAN (10x).
    """
    if not histories:
        raise ValueError("plot_curves: no stage histories to draw")
    # The figure is drawn on an explicit Agg canvas instead of through pyplot, so no global backend is set
    # or changed and this works on machines without a display.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    early_stop_epochs = early_stop_epochs or {}
    fig = Figure(figsize=(8.0, 3.2 * len(histories)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(histories), 1, squeeze=False)[:, 0]
    for ax, (stage, rows) in zip(axes, histories.items()):
        assessment = assessments.get(stage)
        plotted: list[float] = []
        for key, label, color in CURVES:
            points = _points(rows, key)
            if not points:
                continue
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="." if len(xs) < 60 else None, color=color, label=label)
            plotted.extend(y for y in ys if math.isfinite(y))
        if assessment is not None and assessment.best_epoch is not None and assessment.best_value is not None:
            ax.axvline(assessment.best_epoch, color="0.4", linestyle=":", linewidth=1)
            ax.plot([assessment.best_epoch], [assessment.best_value], marker="*", markersize=12, color="gold",
                    markeredgecolor="black", linestyle="none",
                    label=f"best: epoch {assessment.best_epoch} ({assessment.monitor} {assessment.best_value:.4g})")
        stop = early_stop_epochs.get(stage)
        if stop is not None:
            ax.axvline(stop, color="tab:red", linestyle="--", linewidth=1.2, label=f"early stop: epoch {stop}")
        positive = [y for y in plotted if y > 0]
        if positive and len(positive) == len(plotted) and max(positive) > LOG_SCALE_SPAN * min(positive):
            ax.set_yscale("log")
        title = stage if assessment is None else f"{stage}: {assessment.status}"
        ax.set_title(title if plotted else f"{title} (no epochs recorded)")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="upper right")
    path = Path(path)
    # drawn in memory, then written beside and renamed over the path: a full disk or a kill leaves the
    # previous figure whole, never a truncated PNG under its name
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, buffer.getbuffer(), tmp_beside(path))
    return path


def _points(rows: list[dict[str, Any]], key: str) -> list[tuple[float, float]]:
    """(epoch, value) for the rows that recorded `key`; non-finite values become NaN gaps in the line."""
    points = []
    for i, row in enumerate(rows):
        value = row.get(key)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        epoch = row.get("epoch")
        if isinstance(epoch, bool) or not isinstance(epoch, (int, float)):
            epoch = i + 1
        points.append((float(epoch), float(value) if math.isfinite(value) else math.nan))
    return points
