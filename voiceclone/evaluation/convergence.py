"""The convergence detector of docs/architecture.md section 8: one pure function of the per-epoch history.

Training calls `assess` after every epoch (the status goes into the history row; `should_stop` drives early
stopping, after which the trainer restores the `best` weights; `reduces_lr` drives reduce-on-plateau) and
`evaluate` calls it on a finished run.

Inputs. `history` is the list of rows of `history.jsonl`, e.g. {"epoch": 3, "train_loss": 1.2,
"val_loss": 1.1, "unseen_loss": 1.3, "lr_drops": 0}. Rows are ordered by "epoch"; when an epoch appears
twice (a run resumed after being killed between writing the row and the checkpoint) the later row wins. A
value that is missing or None means "not measured" and is skipped; a loss that went non-finite must be
recorded as NaN or Infinity (Python's json writes and reads both). The monitored key is `monitor` if any
row has a value for it, else "val_loss" (a single-speaker dataset has no unseen split), else `train_key`;
`Assessment.monitor` names the key actually used and `evidence["requested_monitor"]` is set when it
differs from the one asked for. "lr_drops" (how many reduce-on-plateau drops the epoch was trained after)
is written by the trainer; a history without it was trained without reduce-on-plateau, and none is
proposed for it.

Why noise matters. A validation curve measured on a few voices jumps from epoch to epoch by more than the
progress it is meant to show. Comparing single epochs then lets one lucky low epoch set a reference that
later epochs cannot beat, and training stops while the curve underneath still falls. So every comparison
is made against the curve's measured noise:

Quantities (W = cfg.window, P = cfg.patience, d = cfg.min_delta, F = cfg.diverge_factor; "points" are
epochs with a finite monitored value, "window" is the last W + 1 points; all changes are relative to the
curve's level):
- noise (sigma): the robust standard deviation of one epoch's value around the local trend: the median
  absolute second difference over the last NOISE_SPAN * W + 1 points, / (0.6745 * sqrt(6)) (white noise of
  std s gives second differences of std s * sqrt(6); a median, so one spike or one kink does not count
  as noise); the RMS when there are fewer than MIN_ROBUST second differences.
- smoothed curve: the mean of the last W points at each epoch (its noise is sigma / sqrt(W)).
- improvement threshold: max(d, Z * sigma * sqrt(2 / W)), i.e. min_delta or Z standard errors of the
  difference of two smoothed values, whichever is larger. `evidence["improvement_threshold"]`.
- epochs since improvement: epochs since the smoothed curve last beat its running reference by more than
  the threshold (the reference moves only on such improvements, as in Keras' EarlyStopping with
  min_delta, but on the smoothed curve). The count restarts when the learning rate is dropped.
- trend: the least-squares line over the longest recent stretch (max(P, W) + 1 up to TREND_SPANS * P + 1
  points) that a line explains to within the noise (the residuals' robust variance within CHI_SIGMAS
  standard errors of sigma^2): a slow descent under noise gets a long stretch and so a well-measured slope, a kink into a
  plateau is cut off where the line stops fitting. `trend_gain` is how much lower the line projects the
  curve P epochs on (relative; positive = still falling), `trend_gain_se` its standard error for noise
  sigma. The trend "still promises more than min_delta" when trend_gain > max(d, Z_TREND * trend_gain_se).
- change over the window: the same fitted change over the window, and `noise_bound` NOISE_SIGMAS
  standard errors of it (used to call a rise real).
- best: the lowest monitored value (earliest on ties): what the trainer's `best` checkpoint holds.

Rules, first match wins:
1. `diverged`: the latest row has a non-finite training or monitored loss, or no epoch has a finite
   monitored value at all. (Checked before `too early`: a NaN in epoch 1 already says the run is broken.)
2. `too early`: fewer than W + 1 points.
3. `diverged`: the last two points are both more than (F - 1) * |best| above the best (for positive
   losses: above best * F) and the window is not falling back by more than its noise bound. Two points,
   so a one-epoch spike does not end a run; "not falling back" rather than "rising", so a run that blew
   up and then sat flat at a high loss is `diverged`, not a plateau.
4. `overfitting`: the monitored loss rises over the window by more than max(d, noise_bound), the training
   loss falls over the same window by more than max(d, its own noise_bound), the train/validation gap
   widens, and the latest monitored value is more than d relative above the best.
5. `converged`: no improvement above the threshold for at least P epochs, at least P + W + 1 points, and
   the trend does not promise more than min_delta: a longer run at the current settings is not expected
   to win more than d. When the history records "lr_drops" and fewer than cfg.max_lr_drops were made, the plateau is first
   answered by dropping the learning rate (evidence["reduce_lr"] = True; `should_stop` is False), and
   training stops only when the plateau holds at the lowest rate.
6. `improving`: the change over the window is below -max(d, noise_bound) (falling beyond the noise).
7. otherwise `improving` with evidence["slowing"] = True: the trend is flat within the noise but patience
   has not run out (or the longer trend still promises more than min_delta).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from voiceclone.config import ConvergenceConfig

STATUSES = ("too early", "improving", "converged", "overfitting", "diverged")
STOP_STATUSES = frozenset({"converged", "overfitting", "diverged"})
NOISE_SIGMAS = 3.0  # a window's rise must exceed this many standard errors of the noise to be real
Z = 2.0  # an improvement of the smoothed curve must exceed this many standard errors of the noise
TREND_SPANS = 4  # the trend line is fitted over at most TREND_SPANS * patience + 1 epochs
Z_TREND = 1.0  # a trend promising more than min_delta by this many standard errors keeps training going
CHI_SIGMAS = 1.0  # a line fits a stretch when its residual mean square is within this many s.e. of sigma^2
NOISE_SPAN = 4  # noise is estimated over the last NOISE_SPAN * window + 1 epochs
MIN_ROBUST = 5  # second differences needed for the median estimate; fewer use the RMS


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
    """Early stopping: True for `overfitting` and `diverged`, and for `converged` unless the plateau is to be
    answered by a learning-rate drop first (reduce-on-plateau)."""
    return a.status in STOP_STATUSES and not reduces_lr(a)


def reduces_lr(a: Assessment) -> bool:
    """Reduce-on-plateau: True when the plateau should drop the learning rate instead of stopping."""
    return a.status == "converged" and bool(a.evidence.get("reduce_lr"))


def lr_scale(drops: int, cfg: ConvergenceConfig) -> float:
    """The learning-rate multiplier after `drops` reduce-on-plateau drops (the schedule is multiplied by it)."""
    return cfg.lr_drop_factor ** max(0, int(drops))


def _regularizers(stage: str | None) -> str:
    """The regularization a stage's recipe offers: no model here has dropout, and only the acoustic model has
    content augmentation."""
    decay = f"a higher weight decay: --set {stage or '<stage>'}.train.weight_decay=..."
    return decay + (", or augmentation: --set acoustic.augment=true" if stage in ("acoustic", None) else "")


def assess(history: Sequence[Mapping[str, Any]], cfg: ConvergenceConfig, monitor: str = "unseen_loss",
           train_key: str = "train_loss", stage: str | None = None) -> Assessment:
    """Classify a training history; see the module docstring for the exact rules and thresholds. `stage`
    (acoustic, vocoder) names the settings the advice gives."""
    rows = _ordered(history)
    key = _choose_monitor(rows, monitor, train_key)
    w, d, patience = cfg.window, cfg.min_delta, cfg.patience
    ev: dict[str, Any] = {"epochs": len(rows), "window": w, "patience": patience, "min_delta": d}
    if key != monitor:
        ev["requested_monitor"] = monitor
    curve = _curve(rows, key, train_key)
    epochs, values = curve.epochs, curve.values
    if curve.nonfinite:
        ev["nonfinite_epochs"] = curve.nonfinite
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

    # 1. a non-finite loss in the latest row, or nothing finite at all
    if rows:
        last_row, last_epoch = rows[-1]
        bad = [(k, _number(last_row.get(k))) for k in dict.fromkeys((train_key, key))]
        bad = [(k, x) for k, x in bad if x is not None and not math.isfinite(x)]
        if bad:
            what = ", ".join(f"{k} = {x}" for k, x in bad)
            return verdict("diverged", f"stop: {what} at epoch {last_epoch}; {use_best} and lower the learning rate")
        if n == 0 and curve.nonfinite:
            return verdict("diverged", f"stop: no epoch has a finite {key} (non-finite losses at epochs "
                                       f"{_epochs_text(curve.nonfinite)}); train again with a lower learning rate")

    # 2. not enough points for a trend
    if n < w + 1:
        return verdict("too early", f"keep training: trends need {w + 1} epochs with {key}, have {n}")

    m = _measure(curve, best_i, cfg)
    ev.update(m.evidence())
    current_drops = curve.drops[-1]
    if current_drops is not None:
        ev.update(lr_drops=current_drops, max_lr_drops=cfg.max_lr_drops)
    gap_text = f"train/val gap {m.gap_best:.4g} at best, {m.gap_now:.4g} now" if m.gap_now is not None and \
        m.gap_best is not None else f"no {train_key} to compare"
    noise_text = f"noise {_pct(m.noise, sign=False)} per epoch"
    trend_text = (f"the trend of the last {m.trend_epochs} epochs projects {_pct(-m.gain)} "
                  f"± {_pct(m.gain_se, sign=False)} over the next {patience} ({noise_text})")

    # 3. far above the best and not coming back
    allowed = (cfg.diverge_factor - 1.0) * abs(best_value)
    if values[-1] - best_value > allowed and values[-2] - best_value > allowed and m.change >= -max(d, m.bound):
        ratio = f"{values[-1] / best_value:.2f}x its best" if best_value > 0 else "far above its best"
        trend = "and rising" if m.change > max(d, m.bound) else "and not coming back"
        return verdict("diverged", f"stop: {key} {values[-1]:.4g} at epoch {epochs[-1]} is {ratio} {trend} "
                                   f"({_pct(m.change)} over the last {w} epochs, {noise_text}); {use_best} and "
                                   f"lower the learning rate")

    # 4. validation rising while training still falls
    if (m.train_change is not None and m.gap_now is not None and m.gap_start is not None
            and m.change > max(d, m.bound) and m.train_change < -max(d, m.train_bound)
            and m.gap_now > m.gap_start and values[-1] > best_value + d * abs(best_value)):
        return verdict("overfitting", f"stop and {use_best}: {key} rose {_pct(m.change)} over the last {w} epochs, "
                                      f"beyond its noise bound {_pct(m.bound, sign=False)}, while {train_key} fell "
                                      f"{_pct(m.train_change)}; {gap_text}; more data or regularization "
                                      f"({_regularizers(stage)})")

    plateau = (f"no improvement of the smoothed {key} beyond {_pct(m.threshold, sign=False)} (the larger of "
               f"min_delta {_pct(d, sign=False)} and {Z:g} standard errors of the noise) for {m.since} epochs")
    # 5. a plateau for `patience` epochs that the trend does not promise to leave
    if m.since >= patience and n >= patience + w + 1 and not m.promising:
        why = "below min_delta" if m.gain <= d else "within its noise"
        if current_drops is not None and current_drops < cfg.max_lr_drops:
            ev["reduce_lr"] = True
            return verdict("converged", f"plateau at this learning rate: {plateau}; {trend_text}, {why}; "
                                        f"lowering the learning rate x{cfg.lr_drop_factor:g} (drop "
                                        f"{current_drops + 1} of {cfg.max_lr_drops}) and continuing; best "
                                        f"{best_value:.4g} at epoch {best_epoch}")
        lowest = " at the lowest learning rate" if current_drops else ""
        return verdict("converged", f"stop and {use_best}: {plateau}{lowest}; {trend_text}, {why}, so a longer "
                                    f"run is not expected to gain more than min_delta; {gap_text}; to go "
                                    f"further, lower the learning rate or add data")

    # 6. still falling beyond the noise
    if m.change < -max(d, m.bound):
        return verdict("improving", f"keep training: {key} {_pct(m.change)} over the last {w} epochs "
                                    f"({noise_text}), best {best_value:.4g} at epoch {best_epoch}; {gap_text}")

    # 7. flat within the noise: patience not yet spent, or a longer trend that still falls
    ev["slowing"] = True
    if m.since >= patience:
        return verdict("improving", f"keep training, but progress has slowed: {plateau}, yet {trend_text}, "
                                    f"beyond min_delta and the noise; best {best_value:.4g} at epoch {best_epoch}")
    left = patience - m.since
    if current_drops is not None and current_drops < cfg.max_lr_drops:  # reduce-on-plateau will act by itself
        then = f"if the plateau persists, training lowers the learning rate x{cfg.lr_drop_factor:g} itself"
    else:
        then = "if the plateau persists, lower the learning rate"
    return verdict("improving", f"keep training, but progress has slowed: {key} {_pct(m.change)} over the last "
                                f"{w} epochs, within the noise; {plateau} (plateau declared in {left} more "
                                f"without one); best {best_value:.4g} at epoch {best_epoch}; {then}")


@dataclass(frozen=True)
class _Curve:
    """The epochs with a finite monitored value, in order, and what training recorded beside each."""

    epochs: list[int]
    values: list[float]
    train: list[float]  # the training loss; NaN where it is missing or not finite
    drops: list[int | None]  # reduce-on-plateau drops the epoch was trained after; None: not recorded
    nonfinite: list[int]  # every epoch whose monitored or training loss is NaN or infinite


def _curve(rows: list[tuple[Mapping[str, Any], int]], key: str, train_key: str) -> _Curve:
    curve = _Curve([], [], [], [], [])
    for row, epoch in rows:
        v, t = _number(row.get(key)), _number(row.get(train_key))
        if (v is not None and not math.isfinite(v)) or (t is not None and not math.isfinite(t)):
            curve.nonfinite.append(epoch)
        if v is not None and math.isfinite(v):
            curve.epochs.append(epoch)
            curve.values.append(v)
            curve.train.append(t if t is not None and math.isfinite(t) else math.nan)
            curve.drops.append(_count(row.get("lr_drops")))
    return curve


@dataclass(frozen=True)
class _Measures:
    """The quantities of the module docstring, measured on the last epochs of a curve (relative changes are
    fractions of the curve's level; gaps are validation minus training, in the loss's units)."""

    change: float  # the fitted change over the window
    noise: float  # sigma, relative
    bound: float  # NOISE_SIGMAS standard errors of `change`
    train_change: float | None  # the training loss's change over the window; None if it is not all finite
    train_bound: float | None
    gap_now: float | None
    gap_best: float | None
    gap_start: float | None  # at the window's first epoch
    ratio_to_best: float | None
    threshold: float  # the improvement threshold
    since: int  # epochs since improvement
    trend_epochs: int
    gain: float  # trend_gain: how much lower the trend line projects the curve `patience` epochs on
    gain_se: float
    promising: bool  # the trend still promises more than min_delta

    def evidence(self) -> dict[str, Any]:
        """The JSON names the history rows and report.json have always used."""
        return dict(change_over_window=self.change, noise=self.noise, noise_bound=self.bound,
                    train_change_over_window=self.train_change, train_noise_bound=self.train_bound,
                    gap_now=self.gap_now, gap_at_best=self.gap_best, gap_at_window_start=self.gap_start,
                    ratio_to_best=self.ratio_to_best, improvement_threshold=self.threshold,
                    epochs_since_improvement=self.since, trend_epochs=self.trend_epochs, trend_gain=self.gain,
                    trend_gain_se=self.gain_se, promising=self.promising)


def _measure(curve: _Curve, best_i: int, cfg: ConvergenceConfig) -> _Measures:
    """The measures of a curve with at least window + 1 points; best_i indexes its lowest value."""
    w, epochs = cfg.window, curve.epochs
    # every measure is relative, so each curve is measured in units of its recent size (a power of two, exact):
    # below 1e-12 the level's floor (against division by zero) shrank every change to nothing, and losses
    # above 1e154 overflowed
    values, train = _normalized(curve.values, w + 1), _normalized(curve.train, w + 1)
    x = np.asarray(epochs[-(w + 1):], dtype=np.float64)
    y = np.asarray(values[-(w + 1):], dtype=np.float64)
    ty = np.asarray(train[-(w + 1):], dtype=np.float64)
    level = max(abs(float(np.mean(y))), 1e-12)
    noise = _relative_noise(np.asarray(values[-(NOISE_SPAN * w + 1):]), level)
    train_change = train_bound = None
    if train_ok := bool(np.all(np.isfinite(ty))):
        train_change = _relative_change(x, ty)
        tail = np.asarray(train[-(NOISE_SPAN * w + 1):])
        train_bound = _noise_bound(x, _relative_noise(tail[np.isfinite(tail)], float(np.mean(ty))))
    best_value = float(values[best_i])
    # the noise-aware plateau measures
    threshold = max(cfg.min_delta, Z * noise * math.sqrt(2.0 / w))
    ref_i = _last_significant_improvement(_trailing_mean(values, w), threshold)
    restart = _rate_start(epochs, curve.drops)  # the last epoch at the previous learning rate, if it was dropped
    # the trend: a line over the longest recent stretch it explains to within the noise, projected P epochs on
    p = cfg.patience
    tx, t_y = _trend_stretch(epochs, values, noise * level, max(p, w) + 1, TREND_SPANS * p + 1)
    slope, slope_se = _slope(tx, t_y, noise * level)
    gain, gain_se = -slope * p / level, slope_se * p / level
    return _Measures(
        change=_relative_change(x, y), noise=noise, bound=_noise_bound(x, noise),
        train_change=train_change, train_bound=train_bound,
        gap_now=_gap(curve, -1), gap_best=_gap(curve, best_i), gap_start=_gap(curve, -(w + 1)) if train_ok else None,
        ratio_to_best=values[-1] / best_value if best_value > 0 else None,
        threshold=threshold,
        since=epochs[-1] - max(epochs[ref_i], restart if restart is not None else epochs[0]),
        trend_epochs=int(tx[-1] - tx[0]), gain=gain, gain_se=gain_se,
        promising=gain > max(cfg.min_delta, Z_TREND * gain_se))


# ---------------------------------------------------------------------------------------------------
# Helpers (pure).


def _normalized(values: list[float], recent: int) -> np.ndarray:
    """`values` times the power of two that brings the largest finite magnitude of the last `recent` into
    [0.5, 1); exact."""
    y = np.asarray(values, dtype=np.float64)
    last = y[-recent:]
    top = float(np.max(np.abs(last[np.isfinite(last)]), initial=0.0))
    return np.ldexp(y, -math.frexp(top)[1]) if top > 0 else y


def _gap(curve: _Curve, i: int) -> float | None:
    """Validation minus training at index i, in the loss's units; None where training is not finite."""
    return curve.values[i] - curve.train[i] if math.isfinite(curve.train[i]) else None


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
    """Std of epoch-to-epoch noise of y around its local trend, relative to |scale| (0 if < 3 values).

    From second differences, which a straight line does not change: their median absolute value when
    there are MIN_ROBUST of them (a spike or a kink moves a median little), else their RMS.
    """
    if len(y) < 3:
        return 0.0
    d2 = np.diff(y, n=2)
    if len(d2) >= MIN_ROBUST:
        sigma = float(np.median(np.abs(d2))) / (0.6745 * math.sqrt(6.0))
    else:
        sigma = float(np.sqrt(np.mean(d2**2) / 6.0))
    return sigma / max(abs(scale), 1e-12)


def _trend_stretch(epochs: list[int], values: list[float], sigma: float, shortest: int,
                   longest: int) -> tuple[np.ndarray, np.ndarray]:
    """The longest recent stretch (shortest..longest points) that a straight line fits to within the noise.

    A stretch is accepted when its residuals' mean square is within 2 standard errors of sigma^2 (a
    chi-square test with n - 2 degrees of freedom): a slow descent under noise gets a long stretch and so a
    well-measured slope, while a kink into a plateau is cut off where the line stops fitting.
    """
    x_all = np.asarray(epochs, dtype=np.float64)
    y_all = np.asarray(values, dtype=np.float64)
    shortest = min(shortest, len(x_all))
    for k in range(min(longest, len(x_all)), shortest, -1):
        x, y = x_all[-k:], y_all[-k:]
        r = y - np.polyval(np.polyfit(x, y, 1), x)
        # robust spread of the residuals (a spike is noise, not a misfit); a median-based variance has
        # 1 / 0.37 times the variance of a mean square, hence the wider tolerance
        spread = 1.4826 * float(np.median(np.abs(r - np.median(r)))) * math.sqrt(k / (k - 2))
        # standard deviations, not variances: the square of an old loss far above the recent ones overflowed
        if spread <= max(sigma, 1e-12) * math.sqrt(1.0 + CHI_SIGMAS * math.sqrt(2.0 / (0.37 * (k - 2)))):
            return x, y
    return x_all[-shortest:], y_all[-shortest:]


def _slope(x: np.ndarray, y: np.ndarray, sigma: float) -> tuple[float, float]:
    """Least-squares slope of y over x [per epoch] and its standard error for i.i.d. noise of std sigma."""
    xc = x - x.mean()
    sxx = float(np.dot(xc, xc))
    return float(np.dot(xc, y - y.mean()) / sxx), sigma / math.sqrt(sxx)


def _trailing_mean(values: list[float], k: int) -> list[float]:
    """Each value replaced by the mean of it and the k - 1 before it (fewer at the start)."""
    c = np.concatenate([[0.0], np.cumsum(values)])
    return [float((c[i + 1] - c[max(0, i + 1 - k)]) / (i + 1 - max(0, i + 1 - k))) for i in range(len(values))]


def _rate_start(epochs: list[int], drops: list[int | None]) -> int | None:
    """The last epoch trained before the current learning-rate drop (None when there was no drop)."""
    for i in range(len(drops) - 1, 0, -1):
        if drops[i] is not None and drops[i - 1] is not None and drops[i] != drops[i - 1]:
            return epochs[i - 1]
    return None


def _count(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else None


def _epochs_text(epochs: list[int]) -> str:
    return ", ".join(map(str, epochs)) if len(epochs) <= 4 else f"{epochs[0]}-{epochs[-1]}"


def _noise_bound(x: np.ndarray, noise: float) -> float:
    """NOISE_SIGMAS standard errors of the fitted change over x, for i.i.d. noise of relative std `noise`."""
    xc = x - x.mean()
    return NOISE_SIGMAS * noise * float(x[-1] - x[0]) / math.sqrt(float(np.dot(xc, xc)))


def _last_significant_improvement(values: list[float], threshold: float) -> int:
    """Index of the last value that beat the running reference by more than `threshold` relative."""
    ref_i = 0
    for i in range(1, len(values)):
        if values[i] < values[ref_i] - threshold * abs(values[ref_i]):
            ref_i = i
    return ref_i


def _use_best(best_epoch: int | None, best_value: float | None, key: str) -> str:
    if best_epoch is None:
        return "no finite value to return to: restart"
    return f"use epoch {best_epoch} (best, {key} {best_value:.4g})"


def _pct(fraction: float, sign: bool = True) -> str:
    return f"{fraction * 100:+.2f}%" if sign else f"{fraction * 100:.2f}%"
