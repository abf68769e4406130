"""Metrics against hand-computed values on constructed signals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from voiceclone.evaluation.metrics import cosine_similarity, f0_metrics, mcd, mel_cepstrum, nearer_target, summarize

SEMITONE = 2.0 ** (1.0 / 12.0)  # 100 cents


def test_constant_offset_of_one_semitone_is_100_cents():
    ref = np.full(50, 100.0)
    m = f0_metrics(ref, ref * SEMITONE)  # 105.946 Hz
    assert m["rmse_cents"] == pytest.approx(100.0, abs=1e-9)
    assert m["rmse_hz"] == pytest.approx(100.0 * SEMITONE - 100.0)
    assert m["gpe"] == 0.0
    assert m["vuv_error"] == 0.0
    assert m["voiced_frames"] == 50 and m["frames"] == 50
    assert m["corr"] is None  # a constant contour has no correlation
    assert f0_metrics([100.0] * 3, [105.946] * 3)["rmse_cents"] == pytest.approx(100.0, abs=0.01)


def test_identical_contours_are_perfect():
    ref = np.linspace(100, 200, 40)
    m = f0_metrics(ref, ref.copy())
    assert m["rmse_cents"] == 0.0 and m["rmse_hz"] == 0.0 and m["gpe"] == 0.0
    assert m["corr"] == pytest.approx(1.0)


def test_gross_pitch_error_threshold():
    ref = np.full(10, 200.0)
    est = ref.copy()
    est[:3] = 250.0  # ratio 1.25: gross
    est[3:5] = 220.0  # ratio 1.1: not gross
    est[5] = 100.0  # an octave down: gross
    m = f0_metrics(ref, est)
    assert m["gpe"] == pytest.approx(4 / 10)
    cents = np.r_[[1200 * math.log2(1.25)] * 3, [1200 * math.log2(1.1)] * 2, [-1200.0], [0.0] * 4]
    assert m["rmse_cents"] == pytest.approx(math.sqrt(np.mean(cents**2)))


def test_voicing_errors_and_voiced_in_both():
    ref = np.array([0, 0, 100, 100, 100, 100, 0, 0], dtype=float)
    est = np.array([0, 110, 100, 0, 100, 200, 120, 0], dtype=float)
    m = f0_metrics(ref, est)
    # decisions differ at frames 1, 3, 6
    assert m["vuv_error"] == pytest.approx(3 / 8)
    # voiced in both: frames 2, 4, 5 -> ratios 1, 1, 2
    assert m["voiced_frames"] == 3
    assert m["gpe"] == pytest.approx(1 / 3)
    assert m["rmse_cents"] == pytest.approx(math.sqrt(1200.0**2 / 3))
    assert m["rmse_hz"] == pytest.approx(math.sqrt(100.0**2 / 3))


def test_nan_is_unvoiced_and_lengths_use_the_common_prefix():
    ref = np.array([100.0, np.nan, 100.0, 100.0, 100.0])
    est = np.array([100.0, 100.0, 100.0])
    m = f0_metrics(ref, est)
    assert m["frames"] == 3 and m["voiced_frames"] == 2
    assert m["vuv_error"] == pytest.approx(1 / 3)


def test_nothing_voiced_in_both_gives_none():
    m = f0_metrics(np.zeros(5), np.full(5, 100.0))
    assert m["rmse_cents"] is None and m["gpe"] is None and m["corr"] is None
    assert m["voiced_frames"] == 0 and m["vuv_error"] == 1.0
    empty = f0_metrics(np.zeros(0), np.zeros(4))
    assert empty["frames"] == 0 and empty["vuv_error"] is None


def test_correlation_in_hz():
    ref = np.array([100.0, 120.0, 140.0, 160.0])
    assert f0_metrics(ref, 2 * ref + 5)["corr"] == pytest.approx(1.0)
    assert f0_metrics(ref, ref[::-1].copy())["corr"] == pytest.approx(-1.0)
    assert f0_metrics(ref[:1], ref[:1])["corr"] is None


def cosine(d: int, n_bands: int = 80) -> np.ndarray:
    n = np.arange(n_bands)
    return np.cos(math.pi * d * (n + 0.5) / n_bands)


def test_mel_cepstrum_is_the_cosine_series_of_the_log_mel():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 80))
    c = mel_cepstrum(x, order=13)
    assert c.shape == (7, 14)
    assert c[:, 3] == pytest.approx(x @ cosine(3) / 80)
    assert c[:, 0] == pytest.approx(x.mean(axis=1))
    # log S = c0 + 2 sum c_d cos(...): a single component of amplitude 2c has coefficient c
    assert mel_cepstrum((1.5 + 2 * 0.25 * cosine(4))[None, :], order=13)[0, [0, 4]] == pytest.approx([1.5, 0.25])
    with pytest.raises(ValueError):
        mel_cepstrum(x, order=80)
    with pytest.raises(ValueError):
        mel_cepstrum(x[0], order=13)


def test_identical_mels_have_zero_mcd():
    x = np.random.default_rng(1).standard_normal((20, 80))
    m = mcd(x, x.copy())
    assert m == {"mcd_db": 0.0, "order": 13, "c0": "excluded",
                 "alignment": "frame-aligned by construction (no DTW)", "frames": 20}


def test_a_level_change_only_moves_c0_which_is_excluded():
    x = np.random.default_rng(2).standard_normal((20, 80))
    assert mcd(x, x + 3.0)["mcd_db"] == pytest.approx(0.0, abs=1e-9)


def test_known_cepstral_offset_gives_the_hand_computed_mcd():
    x = np.random.default_rng(3).standard_normal((10, 80))
    y = x + 2 * (0.3 * cosine(2) - 0.4 * cosine(5))  # c2 and c5 differ by 0.3 and -0.4; |delta| = 0.5
    expected = 10 / math.log(10) * math.sqrt(2 * 0.5**2)  # = 3.0709 dB
    assert mcd(x, y)["mcd_db"] == pytest.approx(expected)
    assert expected == pytest.approx(3.0709, abs=1e-4)
    # Beyond the order: not counted.
    assert mcd(x, x + cosine(20))["mcd_db"] == pytest.approx(0.0, abs=1e-9)


def test_mcd_compares_the_common_prefix_and_checks_bands():
    x = np.random.default_rng(4).standard_normal((12, 80))
    assert mcd(x, x[:9])["frames"] == 9
    with pytest.raises(ValueError):
        mcd(x, x[:, :40])


def test_cosine_similarity():
    assert cosine_similarity(np.array([1.0, 0.0]), np.array([0.0, 2.0])) == pytest.approx(0.0)
    v = np.array([0.3, -1.2, 4.0])
    assert cosine_similarity(v, 5 * v) == pytest.approx(1.0)
    assert cosine_similarity(v, -v) == pytest.approx(-1.0)
    assert cosine_similarity(np.array([1.0, 1.0]), np.array([1.0, 0.0])) == pytest.approx(math.sqrt(0.5))
    with pytest.raises(ValueError):
        cosine_similarity(np.zeros(3), v)
    with pytest.raises(ValueError):
        cosine_similarity(v, v[:2])


def test_nearer_target():
    target, source = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    assert nearer_target(np.array([0.9, 0.2]), target, source)
    assert not nearer_target(np.array([0.2, 0.9]), target, source)
    assert not nearer_target(np.array([1.0, 1.0]), target, source)  # a tie is not nearer


def test_summarize_ignores_missing_values():
    s = summarize([1.0, None, 3.0, float("nan"), 2.0])
    assert s == {"mean": 2.0, "std": pytest.approx(math.sqrt(2 / 3)), "median": 2.0, "n": 3}
    assert summarize([None, float("nan")]) == {"mean": None, "std": None, "median": None, "n": 0}
    assert summarize([4.0]) == {"mean": 4.0, "std": 0.0, "median": 4.0, "n": 1}
