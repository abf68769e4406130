"""The convergence detector of docs/architecture.md section 8: one pure function of the per-epoch history.

Training calls `assess` after every epoch (the status goes into the history row; `should_stop` drives early
stopping, after which the trainer restores the `best` weights) and `evaluate` calls it on a finished run.

Inputs. `history` is the list of rows of `history.jsonl`, e.g. {"epoch": 3, "train_loss": 1.2,
"val_loss": 1.1, "unseen_loss": 1.3}. Rows are ordered by "epoch"; when an epoch appears twice (a run
resumed after being killed between writing the row and the checkpoint) the later row wins. A value that
is missing or None means "not measured" and is skipped; a loss that went non-finite must be recorded as
NaN or Infinity (Python's json writes and reads both). The monitored key is `monitor` if any row has a
value for it, else "val_loss" (a single-speaker dataset has no unseen split), else `train_key`;
`Assessment.monitor` names the key actually used and `evidence["requested_monitor"]` is set when it
differs from the one asked for.

Quantities (W = cfg.window, P = cfg.patience, d = cfg.min_delta, F = cfg.diverge_factor; "points" are
epochs with a finite monitored value, "window" is the last W + 1 points):
- best: the lowest monitored value (earliest on ties): what the trainer's `best` checkpoint holds when it
  saves on every strict improvement.
- change over the window: least-squares slope over the window times its span in epochs, divided by the
  window's mean. A fitted line rather than last-minus-first, so one noisy epoch does not decide a trend.
- noise: RMS of second differences over the last 2W + 1 points, / sqrt(6) (white noise of std s gives
  second differences of std s * sqrt(6)), relative to the window mean; its 2-sigma bound on the change over
  the window is `noise_bound`. Curvature of a real curve also counts as noise, which only makes the
  overfitting rule more cautious; `converged` catches whatever it lets through.
- epochs since improvement: epochs since the last value that beat the running reference by more than d
  relative (the reference moves only on such improvements, as in Keras' EarlyStopping with min_delta).

Rules, first match wins:
1. `diverged`: the latest row has a non-finite training or monitored loss. (Checked before `too early`:
   a NaN in epoch 1 already says the run is broken.)
2. `too early`: fewer than W + 1 points.
3. `diverged`: the last two points are both more than (F - 1) * |best| above the best (for positive
   losses: above best * F) and the change over the window is positive. Two points, so a one-epoch spike
   does not end a run; the fitted slope, so a jump to a high plateau still counts as rising.
4. `overfitting`: the monitored loss rises over the window by more than max(d, noise_bound), the training
   loss falls over the same window by more than max(d, its own noise_bound), the train/validation gap
   widens, and the latest monitored value is more than d relative above the best.
5. `converged`: no improvement above d for at least P epochs.
6. `improving`: the change over the window is below -d (still falling by more than min_delta).
7. otherwise `improving` with evidence["slowing"] = True: the trend is flat but patience has not run out;
   the recommendation says how many epochs remain before early stopping and suggests a lower learning rate
   if the plateau persists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from voiceclone.config import ConvergenceConfig

STATUSES = ("too early", "improving", "converged", "overfitting", "diverged")
STOP_STATUSES = frozenset({"converged", "overfitting", "diverged"})
NOISE_SIGMAS = 3.0  # a trend must exceed this many standard errors of epoch-to-epoch noise to be "rising"
NOISE_SPAN = 4  # noise is estimated over the last NOISE_SPAN * window + 1 epochs


@dataclass(frozen=True)
class Assessment:
    """The detector's verdict on one history.

    status: one of STATUSES.
    best_epoch / best_value: epoch and value of the lowest finite monitored loss (None if there is none).
    monitor: the history key that was monitored (after any fallback).
    evidence: JSON-ready numbers behind the verdict (relative changes are fractions: -0.02 = -2%).
    recommendation: what to do, naming the numbers.
    """

    status: str
    best_epoch: int | None
    best_value: float | None
    monitor: str
    evidence: dict = field(default_factory=dict)
    recommendation: str = ""

    def summary(self) -> str:
        """One line for the terminal: status, monitored key, recommendation."""
        monitored = self.monitor
        requested = self.evidence.get("requested_monitor")
        if requested and requested != self.monitor:
            monitored = f"{self.monitor}; no {requested} in the history"
        return f"{self.status} ({monitored}): {self.recommendation}".replace("\n", " ")


def should_stop(a: Assessment) -> bool:
    """Early stopping: True for `converged`, `overfitting` and `diverged`."""
    return a.status in STOP_STATUSES


def assess(history: Sequence[Mapping[str, Any]], cfg: ConvergenceConfig, monitor: str = "unseen_loss",
           train_key: str = "train_loss") -> Assessment:
    """Classify a training history; see the module docstring for the exact rules and thresholds."""
    rows = _ordered(history)
    key = _choose_monitor(rows, monitor, train_key)
    w, d = cfg.window, cfg.min_delta
    ev: dict[str, Any] = {"epochs": len(rows), "window": w, "patience": cfg.patience, "min_delta": d}
    if key != monitor:
        ev["requested_monitor"] = monitor

    epochs: list[int] = []
    values: list[float] = []
    train: list[float] = []
    nonfinite: list[int] = []
    for row, epoch in rows:
        v, t = _number(row.get(key)), _number(row.get(train_key))
        if (v is not None and not math.isfinite(v)) or (t is not None and not math.isfinite(t)):
            nonfinite.append(epoch)
        if v is not None and math.isfinite(v):
            epochs.append(epoch)
            values.append(v)
            train.append(t if t is not None and math.isfinite(t) else math.nan)
    if nonfinite:
        ev["nonfinite_epochs"] = nonfinite
    n = len(values)
    ev["points"] = n
    best_i = int(np.argmin(values)) if n else None
    best_epoch = epochs[best_i] if best_i is not None else None
    best_value = values[best_i] if best_i is not None else None
    if n:
        ev["latest"] = values[-1]
        ev["epochs_since_best"] = epochs[-1] - best_epoch

    def verdict(status: str, recommendation: str) -> Assessment:
        return Assessment(status, best_epoch, best_value, key, ev, recommendation)

    use_best = _use_best(best_epoch, best_value, key)

    # 1. a non-finite loss in the latest row
    if rows:
        last_row, last_epoch = rows[-1]
        bad = [(k, _number(last_row.get(k))) for k in dict.fromkeys((train_key, key))]
        bad = [(k, x) for k, x in bad if x is not None and not math.isfinite(x)]
        if bad:
            what = ", ".join(f"{k} = {x}" for k, x in bad)
            return verdict("diverged", f"stop: {what} at epoch {last_epoch}; {use_best} and lower the learning rate")

    # 2. not enough points for a trend
    if n < w + 1:
        return verdict("too early", f"keep training: trends need {w + 1} epochs with {key}, have {n}")

    x = np.asarray(epochs[-(w + 1):], dtype=np.float64)
    y = np.asarray(values[-(w + 1):], dtype=np.float64)
    ty = np.asarray(train[-(w + 1):], dtype=np.float64)
    change = _relative_change(x, y)
    noise = _relative_noise(np.asarray(values[-(NOISE_SPAN * w + 1):]), float(np.mean(y)))
    bound = _noise_bound(x, noise)
    ev.update(change_over_window=change, noise=noise, noise_bound=bound)
    train_ok = bool(np.all(np.isfinite(ty)))
    train_change = _relative_change(x, ty) if train_ok else None
    train_bound = None
    if train_ok:
        tail = np.asarray(train[-(NOISE_SPAN * w + 1):])
        train_bound = _noise_bound(x, _relative_noise(tail[np.isfinite(tail)], float(np.mean(ty))))
    ev.update(train_change_over_window=train_change, train_noise_bound=train_bound)
    gap_now = values[-1] - train[-1] if math.isfinite(train[-1]) else None
    gap_best = values[best_i] - train[best_i] if math.isfinite(train[best_i]) else None
    gap_start = float(y[0] - ty[0]) if train_ok else None
    ev.update(gap_now=gap_now, gap_at_best=gap_best, gap_at_window_start=gap_start)
    ref_i = _last_significant_improvement(values, d)
    since = epochs[-1] - epochs[ref_i]
    ev["epochs_since_improvement"] = since
    ev["ratio_to_best"] = values[-1] / best_value if best_value > 0 else None
    gap_text = f"train/val gap {gap_best:.4g} at best, {gap_now:.4g} now" if gap_now is not None and \
        gap_best is not None else f"no {train_key} to compare"

    # 3. far above the best and rising
    allowed = (cfg.diverge_factor - 1.0) * abs(best_value)
    if n >= 2 and values[-1] - best_value > allowed and values[-2] - best_value > allowed and change > 0:
        ratio = f"{values[-1] / best_value:.2f}x its best" if best_value > 0 else "far above its best"
        return verdict("diverged", f"stop: {key} {values[-1]:.4g} at epoch {epochs[-1]} is {ratio} and rising "
                                   f"({_pct(change)} over the last {w} epochs); {use_best} and lower the "
                                   f"learning rate")

    # 4. validation rising while training still falls
    if (train_change is not None and gap_now is not None and gap_start is not None
            and change > max(d, bound) and train_change < -max(d, train_bound)
            and gap_now > gap_start and values[-1] > best_value + d * abs(best_value)):
        return verdict("overfitting", f"stop and {use_best}: {key} rose {_pct(change)} over the last {w} epochs "
                                      f"while {train_key} fell {_pct(train_change)}; {gap_text}; more data or "
                                      f"regularization (dropout, weight decay, augmentation)")

    # 5. a plateau for `patience` epochs
    if since >= cfg.patience:
        return verdict("converged", f"stop and {use_best}: no improvement above {_pct(d, sign=False)} for "
                                    f"{since} epochs ({_pct(change)} over the last {w}); {gap_text}; to go "
                                    f"further, lower the learning rate or add data")

    # 6. still falling
    if change < -d:
        return verdict("improving", f"keep training: {key} {_pct(change)} over the last {w} epochs, best "
                                    f"{best_value:.4g} at epoch {best_epoch}; {gap_text}")

    # 7. flat, patience not yet spent
    ev["slowing"] = True
    left = cfg.patience - since
    return verdict("improving", f"keep training, but progress has slowed: {key} {_pct(change)} over the last "
                                f"{w} epochs, no improvement above {_pct(d, sign=False)} for {since} epochs "
                                f"(early stop in {left} more); best {best_value:.4g} at epoch {best_epoch}; "
                                f"if the plateau persists, lower the learning rate")


# ---------------------------------------------------------------------------------------------------
# Helpers (pure).


def _ordered(history: Sequence[Mapping[str, Any]]) -> list[tuple[Mapping[str, Any], int]]:
    """(row, epoch) pairs sorted by epoch, the last row winning for a repeated epoch.

    Rows without an integer "epoch" are numbered by position (1-based).
    """
    by_epoch: dict[int, Mapping[str, Any]] = {}
    for i, row in enumerate(history):
        epoch = row.get("epoch")
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)):
            epoch = i + 1
        by_epoch[int(epoch)] = row
    return [(by_epoch[e], e) for e in sorted(by_epoch)]


def _number(value: Any) -> float | None:
    """A loss as float; None when not measured (missing, None, or not a number)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _choose_monitor(rows: list[tuple[Mapping[str, Any], int]], monitor: str, train_key: str) -> str:
    for key in (monitor, "val_loss", train_key):
        if any(_number(row.get(key)) is not None for row, _ in rows):
            return key
    return monitor


def _relative_change(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of y over x [epochs], times the span of x, / |mean(y)|. Dimensionless."""
    xc = x - x.mean()
    slope = float(np.dot(xc, y - y.mean()) / np.dot(xc, xc))
    return slope * float(x[-1] - x[0]) / max(abs(float(np.mean(y))), 1e-12)


def _relative_noise(y: np.ndarray, scale: float) -> float:
    """Std of epoch-to-epoch noise of y, relative to |scale|, from second differences (0 if < 3 values)."""
    if len(y) < 3:
        return 0.0
    d2 = np.diff(y, n=2)
    return float(np.sqrt(np.mean(d2**2) / 6.0)) / max(abs(scale), 1e-12)


def _noise_bound(x: np.ndarray, noise: float) -> float:
    """NOISE_SIGMAS standard errors of the fitted change over x, for i.i.d. noise of relative std `noise`."""
    xc = x - x.mean()
    return NOISE_SIGMAS * noise * float(x[-1] - x[0]) / math.sqrt(float(np.dot(xc, xc)))


def _last_significant_improvement(values: list[float], min_delta: float) -> int:
    """Index of the last value that beat the running reference by more than min_delta relative."""
    ref_i = 0
    for i in range(1, len(values)):
        if values[i] < values[ref_i] - min_delta * abs(values[ref_i]):
            ref_i = i
    return ref_i


def _use_best(best_epoch: int | None, best_value: float | None, key: str) -> str:
    if best_epoch is None:
        return "no finite value to return to: restart"
    return f"use epoch {best_epoch} (best, {key} {best_value:.4g})"


def _pct(fraction: float, sign: bool = True) -> str:
    return f"{fraction * 100:+.2f}%" if sign else f"{fraction * 100:.2f}%"
