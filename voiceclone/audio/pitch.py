"""F0: Praat's autocorrelation method (Boersma 1993) on the mel frame grid.

`f0_ac` is that method re-implemented for speed: every frame at once with numpy FFTs, candidates from the
windowed autocorrelation divided by the window's own, Praat's candidate strengths and costs, and Praat's
path finder (max-plus products in numpy, see _pitch_path). Praat itself (`f0_praat`, kept as the reference) refines each
candidate with a sinc-70 Brent search and costs about 8 ms per second of speech per core, which alone
held `prepare` under 130x real time. `f0_ac` is about 5x faster, agrees with Praat to about 2 cents
(median) on speech and is nearer the true contour on synthetic voices (tests/test_audio.py checks both).
"""

from __future__ import annotations

import functools

import numpy as np
import soxr
import torch

from voiceclone.config import AudioConfig

PERIODS_PER_WINDOW = 3.0  # Praat's defaults for To Pitch (ac) from here ...
SILENCE_THRESHOLD = 0.03
VOICING_THRESHOLD = 0.45
OCTAVE_COST = 0.01
OCTAVE_JUMP_COST = 0.35
VOICED_UNVOICED_COST = 0.14  # ... to here
MAX_CANDIDATES = 6  # Praat keeps 15; speech has rarely more than a few strong peaks in the lag range
ANALYSIS_RATE = 8000  # Hz, roughly: decimated by an integer factor towards this rate (periodicity needs no more)
LAG_OVERSAMPLING = 2  # autocorrelation at half-sample lags: short periods (high F0) need the resolution


def _fft_size(n: int) -> int:
    """The smallest 2^k, 3 * 2^k or 5 * 2^k >= n: FFTs are fastest on these, also at twice the size."""
    return min(m << max(0, (n - 1) // m).bit_length() for m in (1, 3, 5))


@functools.lru_cache(maxsize=16)
def _ac_window(width: int, nfft: int, n_lags: int) -> tuple[np.ndarray, np.ndarray]:
    """Praat's Hanning window [width] and the reciprocal of its normalized autocorrelation [n_lags] at the
    oversampled lags (every lag used stays below the window length, where that is positive)."""
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(1, width + 1) / (width + 1))
    ac = np.fft.irfft(np.abs(np.fft.rfft(window, nfft)) ** 2, nfft * LAG_OVERSAMPLING)[:n_lags]
    return window.astype(np.float32), (ac[0] / ac).astype(np.float32)


def _pitch_path(delta: np.ndarray, logf: np.ndarray, vuv_cost: float, jump_cost: float) -> np.ndarray:
    """Praat's path finder. delta [n, k]: local strength of candidate j in frame t (-inf: none; column 0 is
    the unvoiced candidate), logf [n, k]: log2 of its frequency. Returns [n] the chosen column per frame,
    maximizing total strength minus octave-jump and voiced/unvoiced transition costs.

    The Viterbi recursion best_t[j] = delta[t, j] + max_i (best_{t-1}[i] - cost_t(i, j)) is a chain of
    max-plus matrix products, which associate: the frames are cut into about sqrt(n) lanes of about sqrt(n)
    frames, every lane's running product is built in the same numpy step (lanes innermost), the lanes are
    then chained one after another, and every frame's best scores and back-pointers follow in whole-array
    operations. So about 2 sqrt(n) small numpy calls instead of an n-step loop, with no compiler: the numba
    version this replaces cost every process 0.5 s or more to import and load its cache. It picks the same
    path (ties go to the first column, as a sequential scan's strict comparison does; tests/test_audio.py
    checks it against the plain recursion).
    """
    n, k = delta.shape
    m = n - 1  # transitions
    if m <= 0:
        return np.zeros(n, dtype=np.int64) if n == 0 else np.array([int(np.argmax(delta[0]))], dtype=np.int64)
    lanes = max(1, int(np.sqrt(m)))
    width = -(-m // lanes)
    pad = lanes * width - m  # < lanes <= width: the padding frames all sit at the end of the last lane

    def lay(x: np.ndarray) -> np.ndarray:  # [m, k] in frame order -> [width, k, lanes]
        x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)]) if pad else x
        return np.ascontiguousarray(x.reshape(lanes, width, k).transpose(1, 2, 0))

    # cost[s, i, j, l]: from column i of frame l * width + s to column j of the next frame
    cost = np.abs(lay(logf[:-1])[:, :, None, :] - lay(logf[1:])[:, None, :, :])
    cost *= jump_cost
    cost[:, 0] = vuv_cost
    cost[:, :, 0] = vuv_cost
    cost[:, 0, 0] = 0.0
    gain = lay(delta[1:])[:, None, :, :] - cost
    if pad:  # the max-plus identity: the padding changes nothing
        gain[width - pad :, :, :, -1] = -np.inf
        gain[width - pad :, np.arange(k), np.arange(k), -1] = 0.0
    # prods[s, i, j, l]: the best gain from column i where lane l starts to column j after its step s
    prods = np.empty_like(gain)
    prods[0] = gain[0]
    buf = np.empty((k, k, k, lanes))
    for s in range(1, width):
        np.add(prods[s - 1].transpose(1, 0, 2)[:, :, None, :], gain[s][:, None, :, :], out=buf)
        np.maximum.reduce(buf, axis=0, out=prods[s])
    entry = np.empty((lanes, k))  # the best scores where each lane starts
    last = np.ascontiguousarray(prods[-1].transpose(2, 0, 1))
    v = delta[0]
    for lane in range(lanes):
        entry[lane] = v
        v = np.maximum.reduce(v[:, None] + last[lane], axis=0)
    entry = entry.T
    best = np.maximum.reduce(prods.transpose(1, 0, 2, 3) + entry[:, None, None, :], axis=0)  # [width, j, lanes]
    prev = np.empty_like(best)
    prev[0], prev[1:] = entry, best[:-1]
    scores = prev[:, :, None, :] - cost  # [width, i, j, lanes]
    top = np.maximum.reduce(scores, axis=1)
    back = np.zeros(top.shape, dtype=np.int64)
    for i in range(k - 1, -1, -1):  # the first column reaching the maximum wins
        back[scores[:, i] == top] = i
    links = back.transpose(2, 0, 1).reshape(-1, k)[:m].tolist()
    j = int(np.argmax(best[width - 1 - pad, :, -1]))
    path = [j]
    for t in range(m - 1, -1, -1):
        j = links[t][j]
        path.append(j)
    return np.array(path[::-1], dtype=np.int64)


def f0_ac(y: np.ndarray, cfg: AudioConfig) -> np.ndarray:
    """F0 in Hz per frame, 0 where unvoiced, by Praat's autocorrelation method. y: [T] -> [T // hop] float32.

    Frame i is analysed centred at (i + 0.5) * hop samples, the centre of mel frame i, with a Hanning
    window of PERIODS_PER_WINDOW periods of cfg.f0_min; candidates lie in [cfg.f0_min, cfg.f0_max].
    """
    hop, sr = cfg.hop_length, cfg.sample_rate
    n = len(y) // hop
    out = np.zeros(n, dtype=np.float32)
    if n == 0 or not np.any(y):
        return out
    peak = float(np.abs(y).max())
    if peak > 1.0:
        # samples far beyond +-1 (a float file's, read before its loudness is set: synthesize's streamed first
        # pass) overflow the float32 power spectrum from about 1e17, and the frames came out unvoiced; the
        # method is blind to scale, so the samples are brought to full scale first
        y = np.asarray(y, dtype=np.float32) / np.float32(peak)
    factor = max(1, round(sr / max(ANALYSIS_RATE, 7 * cfg.f0_max)))  # an integer ratio resamples fastest
    fs = sr / factor
    # soxr's low quality: its gentler anti-alias filter cannot move a periodicity, and it is twice as fast
    x = soxr.resample(y, sr, fs, quality="LQ") if factor > 1 else np.asarray(y, dtype=np.float32)
    width = int(PERIODS_PER_WINDOW / cfg.f0_min * fs) // 2 * 2
    half, period = width // 2, int(fs / cfg.f0_min)
    max_lag, min_lag = min(period + 2, width - 1), max(2, int(fs / cfg.f0_max))
    nfft = _fft_size(width + max_lag + 2)  # no circular wrap up to max_lag
    n_lags = max_lag * LAG_OVERSAMPLING + 2
    window, window_ac_inverse = _ac_window(width, nfft, n_lags)

    padded = np.zeros(len(x) + width + 1, dtype=np.float32)
    padded[half : half + len(x)] = x
    centres = np.round((np.arange(n) + 0.5) * (hop / factor)).astype(np.int64)
    frames = np.lib.stride_tricks.sliding_window_view(padded, width)[centres]  # [n, width], centred on centres[i]
    frames -= frames[:, max(half - period, 0) : half + period].mean(axis=1, keepdims=True)  # Praat: +-1 period
    frames *= window
    global_peak = float(np.abs(x - x.mean()).max())
    local_peak = np.abs(frames[:, half - period // 2 : half + period // 2]).max(axis=1)
    # torch's FFTs (MKL) take a third of the time of numpy's or scipy's at these sizes
    spec = torch.fft.rfft(torch.from_numpy(frames), nfft, dim=1)
    # zero-padding the power spectrum = sinc interpolation of the autocorrelation at the oversampled lags
    ac = torch.fft.irfft(spec.real**2 + spec.imag**2, nfft * LAG_OVERSAMPLING, dim=1)[:, :n_lags].numpy()
    energy0 = ac[:, 0]
    scale = np.divide(1.0, energy0, out=np.zeros_like(energy0), where=energy0 > 0)  # silent frames: r = 0
    r = (ac * scale[:, None]) * window_ac_inverse

    # candidates: local maxima of r above half the voicing threshold, refined by a parabola
    a, b = min_lag * LAG_OVERSAMPLING, max_lag * LAG_OVERSAMPLING
    mid, left, right = r[:, a : b + 1], r[:, a - 1 : b], r[:, a + 1 : b + 2]
    fi, li = np.nonzero((mid > left) & (mid >= right) & (mid > 0.5 * VOICING_THRESHOLD))
    rm, rl, rr = mid[fi, li], left[fi, li], right[fi, li]
    slope, curve = 0.5 * (rr - rl), 2 * rm - rl - rr
    with np.errstate(divide="ignore", invalid="ignore"):  # a flat top rounds the curvature to 0 in float32
        shift = np.clip(np.nan_to_num(slope / curve), -0.5, 0.5)  # the vertex is within half a lag of the peak
    freq = fs * LAG_OVERSAMPLING / (li + a + shift)
    strength = rm + 0.5 * slope * shift
    strength = np.where(strength > 1, 1 / strength, strength)  # Praat: peaks above 1 (short windows) reflect
    ok = (freq >= cfg.f0_min) & (freq <= cfg.f0_max)
    fi, freq, strength = fi[ok], freq[ok], strength[ok]
    # each frame keeps its MAX_CANDIDATES best, ranked as Praat ranks them (a slight bonus for high F0);
    # np.nonzero listed them frame by frame, so sorting is only needed when some frame has too many
    rank = np.arange(len(fi)) - np.searchsorted(fi, fi)
    if len(rank) and rank.max() >= MAX_CANDIDATES:
        order = np.lexsort((-(strength - OCTAVE_COST * np.log2(cfg.f0_min / freq)), fi))
        fi, freq, strength = fi[order], freq[order], strength[order]
    keep = rank < MAX_CANDIDATES
    fi, freq, strength, col = fi[keep], freq[keep], strength[keep], rank[keep] + 1

    delta = np.full((n, MAX_CANDIDATES + 1), -np.inf)
    logf = np.zeros((n, MAX_CANDIDATES + 1))
    hz = np.zeros((n, MAX_CANDIDATES + 1))
    delta[fi, col] = strength - OCTAVE_COST * np.log2(cfg.f0_max / freq)
    logf[fi, col], hz[fi, col] = np.log2(freq), freq
    intensity = np.minimum(local_peak / max(global_peak, 1e-12), 1.0)
    delta[:, 0] = VOICING_THRESHOLD + np.maximum(2.0 - intensity / (SILENCE_THRESHOLD / (1 + VOICING_THRESHOLD)), 0.0)
    per_step = 0.01 / (hop / sr)  # Praat scales its transition costs to a 10 ms time step
    path = _pitch_path(delta, logf, VOICED_UNVOICED_COST * per_step, OCTAVE_JUMP_COST * per_step)
    out[:] = hz[np.arange(n), path]
    return out


def f0_praat(y: np.ndarray, cfg: AudioConfig) -> np.ndarray:
    """F0 in Hz per frame, 0 where unvoiced, from Praat itself (parselmouth). y: [T] -> [T // hop] float32.

    The reference `f0_ac` is checked against. Praat centres its own frame grid in the sound, up to half a
    frame away from ours, so its values are interpolated (in log frequency between voiced neighbours, else
    the nearest) to our frame centres (i + 0.5) * hop.
    """
    n = len(y) // cfg.hop_length
    out = np.zeros(n, dtype=np.float32)
    if n == 0:
        return out
    import parselmouth  # the reference only: Praat loads in every process that imports it

    snd = parselmouth.Sound(y.astype(np.float64), sampling_frequency=cfg.sample_rate)
    step = cfg.hop_length / cfg.sample_rate
    try:
        pitch = snd.to_pitch_ac(time_step=step, pitch_floor=cfg.f0_min, pitch_ceiling=cfg.f0_max,
                                very_accurate=False)
    except parselmouth.PraatError:  # too short for one analysis window: all unvoiced
        return out
    values = np.nan_to_num(pitch.selected_array["frequency"].astype(np.float64), nan=0.0)
    if values.size == 0:
        return out
    if values.size == 1:
        out[:] = values[0]
        return out
    u = np.clip(((np.arange(n) + 0.5) * step - pitch.x1) / pitch.dx, 0, values.size - 1)
    k = np.minimum(np.floor(u).astype(int), values.size - 2)
    w = u - k
    lo, hi = values[k], values[k + 1]
    res = np.where(w < 0.5, lo, hi)
    both = (lo > 0) & (hi > 0)
    res[both] = np.exp((1 - w[both]) * np.log(lo[both]) + w[both] * np.log(hi[both]))
    out[:] = res
    return out


def f0(y: np.ndarray, cfg: AudioConfig) -> np.ndarray:
    """The project's F0 extractor: [T] -> [T // hop] float32 Hz, 0 = unvoiced. One entry point, so another
    (a GPU one) can be chosen here."""
    return f0_ac(y, cfg)


def voiced_median(f0: np.ndarray) -> float | None:
    """Median F0 in Hz over the voiced frames (f0 > 0) of a contour [T] (or several concatenated); None when
    no frame is voiced. A voice's register: synthesis moves sources to it, the dataset stores it per utterance."""
    f0 = np.asarray(f0)
    voiced = f0[f0 > 0]
    return float(np.median(voiced)) if voiced.size else None


def semitones_to_ratio(semitones: float) -> float:
    return 2.0 ** (semitones / 12.0)
