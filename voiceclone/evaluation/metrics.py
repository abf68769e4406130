"""Objective metrics (docs/architecture.md, "Evaluation"), each saying exactly what it measures. numpy only.

- F0: over frames voiced in BOTH contours, RMSE in cents and in Hz, gross pitch error (share of frames with
  |f_est / f_ref - 1| > 0.2) and Pearson correlation in Hz; over all compared frames, the V/UV error (share
  of frames whose voicing decisions differ). A frame is voiced when its F0 is finite and > 0.
- MCD: mel-cepstral distortion in dB between two log-mel spectrograms on the same frame grid. The
  "cepstrum" is the cosine series c_d = (1/N) sum_n ln S_n cos(pi d (n + 1/2) / N) of the natural-log mel
  magnitude (c0..c_order; not the orthonormal DCT, see mel_cepstrum); c0 (overall level) is excluded; frames are compared one to one (no DTW), which is right for conversion and copy-synthesis,
  where the output keeps the source's frames. It is not SPTK's mel-generalized cepstrum, so its values
  rank systems consistently here but do not compare to MCD figures computed with SPTK/WORLD features.
- Speaker similarity: cosine of two speaker embeddings; the caller names the encoder that produced them.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import scipy.fft

GROSS_ERROR = 0.2  # |f'/f - 1| above this is a gross pitch error (the usual GPE definition)
MCD_SCALE = 10.0 / math.log(10.0)  # natural-log cepstra -> dB


def f0_metrics(reference_hz: np.ndarray, estimate_hz: np.ndarray) -> dict[str, Any]:
    """Compare an F0 contour with a reference one, frame by frame.

    reference_hz, estimate_hz: [T] Hz, 0 (or negative / non-finite) = unvoiced. Contours of different
    length are compared over their common prefix, whose length is returned as "frames".
    Returns {"rmse_cents", "rmse_hz", "gpe", "corr", "voiced_frames", "vuv_error", "frames"}; a value that
    cannot be computed (no frames voiced in both; for "corr", fewer than 2 such frames or a constant
    contour) is None.
    """
    ref = np.asarray(reference_hz, dtype=np.float64).reshape(-1)
    est = np.asarray(estimate_hz, dtype=np.float64).reshape(-1)
    t = min(len(ref), len(est))
    ref, est = ref[:t], est[:t]
    ref_v = np.isfinite(ref) & (ref > 0)
    est_v = np.isfinite(est) & (est > 0)
    both = ref_v & est_v
    n = int(both.sum())
    out: dict[str, Any] = {"rmse_cents": None, "rmse_hz": None, "gpe": None, "corr": None,
                           "voiced_frames": n, "vuv_error": float(np.mean(ref_v != est_v)) if t else None,
                           "frames": t}
    if n == 0:
        return out
    r, e = ref[both], est[both]
    cents = 1200.0 * np.log2(e / r)
    out["rmse_cents"] = float(np.sqrt(np.mean(cents**2)))
    out["rmse_hz"] = float(np.sqrt(np.mean((e - r) ** 2)))
    out["gpe"] = float(np.mean(np.abs(e / r - 1.0) > GROSS_ERROR))
    if n >= 2 and np.ptp(r) > 0 and np.ptp(e) > 0:
        out["corr"] = float(np.corrcoef(r, e)[0, 1])
    return out


def mel_cepstrum(log_mel: np.ndarray, order: int = 13) -> np.ndarray:
    """[T, n_mels] natural-log mel magnitude -> [T, order + 1] mel-cepstrum c0..c_order.

    The cosine-series convention of the real cepstrum, log S_n = c0 + 2 sum_d c_d cos(pi d (n + 1/2) / N):
    c_d = (1/N) sum_n log S_n cos(pi d (n + 1/2) / N), the scale on which the usual MCD formula is stated.
    (An orthonormal DCT would inflate every c_d, and so the MCD, by sqrt(2N): about 12.6x for 80 bands.)
    """
    x = np.asarray(log_mel, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"log_mel must be [T, n_mels], got shape {x.shape}")
    if not 1 <= order < x.shape[1]:
        raise ValueError(f"order must be in [1, n_mels - 1] = [1, {x.shape[1] - 1}], got {order}")
    return scipy.fft.dct(x, type=2, norm=None, axis=1)[:, : order + 1] / (2 * x.shape[1])


def mcd(log_mel_a: np.ndarray, log_mel_b: np.ndarray, order: int = 13) -> dict[str, Any]:
    """Mel-cepstral distortion in dB, frame by frame, c1..c_order.

    log_mel_a, log_mel_b: [T, n_mels] natural-log mel magnitude on the same frame grid; different T are
    compared over the common prefix. Per frame: (10 / ln 10) * sqrt(2 * sum_{d=1..order} (c_d - c'_d)^2);
    "mcd_db" is the mean over frames (None for zero frames).
    """
    a, b = np.asarray(log_mel_a), np.asarray(log_mel_b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"log mels must be [T, n_mels] with equal n_mels, got {a.shape} and {b.shape}")
    t = min(len(a), len(b))
    out: dict[str, Any] = {"mcd_db": None, "order": order, "c0": "excluded",
                           "alignment": "frame-aligned by construction (no DTW)", "frames": t}
    ca, cb = mel_cepstrum(a[:t], order), mel_cepstrum(b[:t], order)
    if t:
        diff = ca[:, 1:] - cb[:, 1:]
        out["mcd_db"] = float(np.mean(MCD_SCALE * np.sqrt(2.0 * np.sum(diff**2, axis=1))))
    return out


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two 1-D embeddings [D], in [-1, 1]. A zero vector has no direction: ValueError."""
    x = np.asarray(a, dtype=np.float64).reshape(-1)
    y = np.asarray(b, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"embeddings differ in size: {x.size} and {y.size}")
    nx, ny = float(np.linalg.norm(x)), float(np.linalg.norm(y))
    if nx == 0.0 or ny == 0.0:
        raise ValueError("cosine similarity of a zero embedding is undefined")
    return float(np.clip(np.dot(x, y) / (nx * ny), -1.0, 1.0))


def nearer_target(output_emb: np.ndarray, target_emb: np.ndarray, source_emb: np.ndarray) -> bool:
    """True when a conversion's output is more similar (cosine) to the target speaker than to the source."""
    return cosine_similarity(output_emb, target_emb) > cosine_similarity(output_emb, source_emb)


def summarize(values: Sequence[float | None]) -> dict[str, Any]:
    """{"mean", "std", "median", "n"} over the finite values, None and NaN ignored.

    std is the population std (ddof=0; 0.0 for one value); all three statistics are None when n == 0.
    """
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return {"mean": None, "std": None, "median": None, "n": 0}
    x = np.asarray(finite)
    return {"mean": float(x.mean()), "std": float(x.std()), "median": float(np.median(x)), "n": len(finite)}
