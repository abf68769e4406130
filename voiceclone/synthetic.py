"""Synthetic voices with known F0, for tests and benchmarks (no downloads, fully deterministic).

A voice is a harmonic source (F0 contour known exactly, sample by sample) whose harmonics are weighted by a
speaker-specific spectral envelope: formant resonances scaled by a vocal-tract factor, a spectral tilt and
some breath noise. An utterance is a sequence of vowel targets (the "content") with smooth transitions and
short unvoiced noise bursts between them. Speakers differ in register, formant scale and tilt, so speaker
identity is learnable and separable from content, which is what the tests need.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

# (F1, F2, F3) in Hz for an adult male vocal tract: the "phonemes" of the synthetic language
VOWELS = np.array([[730, 1090, 2440], [270, 2290, 3010], [300, 870, 2240], [530, 1840, 2480],
                   [570, 840, 2410], [660, 1720, 2410], [440, 1020, 2240], [490, 1350, 1690]], dtype=np.float64)
CONTROL_HZ = 200  # envelope control rate


@dataclass(frozen=True)
class Speaker:
    name: str
    f0_hz: float  # median register
    formant_scale: float  # 1 / relative vocal-tract length
    tilt_db: float  # spectral slope per octave above 500 Hz
    breath: float  # noise level relative to the harmonic part
    bandwidth: float  # formant bandwidth factor


def make_speakers(n: int, seed: int = 0) -> list[Speaker]:
    """n distinct voices spread over registers and vocal-tract sizes."""
    rng = np.random.default_rng(seed)
    speakers = []
    for i in range(n):
        u = (i + rng.uniform(0.2, 0.8)) / n  # stratified, so any n covers the range
        f0 = float(np.exp(np.log(85) + u * (np.log(290) - np.log(85))))
        scale = float(0.85 + 0.4 * u + rng.uniform(-0.08, 0.08))
        speakers.append(Speaker(name=f"spk{i:03d}", f0_hz=round(f0, 1), formant_scale=round(scale, 3),
                                tilt_db=float(rng.uniform(-12, -4)), breath=float(rng.uniform(0.005, 0.03)),
                                bandwidth=float(rng.uniform(0.8, 1.4))))
    return speakers


def f0_contour(speaker: Speaker, n_samples: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth, natural-looking contour around the speaker's register: declination, accents, vibrato."""
    t = np.arange(n_samples) / sample_rate
    dur = max(t[-1], 1e-3) if n_samples else 1.0
    semis = -2.0 * t / dur  # declination over the phrase
    for _ in range(max(1, int(dur * 1.5))):  # pitch accents
        c, w, h = rng.uniform(0, dur), rng.uniform(0.1, 0.3), rng.uniform(-2, 4)
        semis += h * np.exp(-0.5 * ((t - c) / w) ** 2)
    semis += 0.3 * np.sin(2 * np.pi * rng.uniform(4.5, 6.0) * t)
    return (speaker.f0_hz * 2 ** (semis / 12)).astype(np.float64)


def _envelope(freqs: np.ndarray, formants: np.ndarray, speaker: Speaker) -> np.ndarray:
    """Linear amplitude of the vocal-tract response. freqs [..., K], formants [..., 3] -> [..., K]."""
    amp = np.zeros_like(freqs)
    for j in range(formants.shape[-1]):
        fc = formants[..., j : j + 1]
        bw = (60 + 0.06 * fc) * speaker.bandwidth
        amp += (1.0 / (1 + j)) / (1 + ((freqs - fc) / bw) ** 2)
    tilt = 10 ** (speaker.tilt_db * np.log2(np.maximum(freqs, 500) / 500) / 20)
    return amp * tilt


def synth_utterance(speaker: Speaker, seconds: float, sample_rate: int, seed: int = 0,
                    f0: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One utterance. Returns (audio [T] float32 in [-1, 1], f0 [T] float64 Hz per sample, 0 = unvoiced).

    Pass `f0` (Hz per sample) to impose a contour; otherwise a natural one is drawn.
    """
    rng = np.random.default_rng(seed)
    n = int(seconds * sample_rate)
    f0_s = f0_contour(speaker, n, sample_rate, rng) if f0 is None else np.asarray(f0, dtype=np.float64)[:n]

    # content: vowel targets every 120-250 ms, with 60-120 ms unvoiced bursts between some of them
    n_ctl = n * CONTROL_HZ // sample_rate + 2
    formants = np.zeros((n_ctl, 3))
    voiced_ctl = np.ones(n_ctl, dtype=bool)
    i = 0
    while i < n_ctl:
        length = int(rng.uniform(0.12, 0.25) * CONTROL_HZ)
        formants[i : i + length] = VOWELS[rng.integers(len(VOWELS))]
        i += length
        if rng.random() < 0.3 and 0.3 * n_ctl < i < n_ctl - 10:
            gap = int(rng.uniform(0.06, 0.12) * CONTROL_HZ)
            voiced_ctl[i : i + gap] = False
            i += gap
    kernel = np.hanning(9) / np.hanning(9).sum()  # smooth transitions (coarticulation)
    formants = np.stack([np.convolve(formants[:, j], kernel, mode="same") for j in range(3)], axis=1)
    formants[:4], formants[-4:] = formants[4], formants[-5]
    formants *= speaker.formant_scale

    ctl_t = np.arange(n_ctl) / CONTROL_HZ
    t = np.arange(n) / sample_rate
    voiced = np.interp(t, ctl_t, voiced_ctl.astype(float)) > 0.5
    if f0 is not None:
        voiced &= f0_s > 0
    f0_s = np.where(voiced, f0_s, 0.0)

    # additive synthesis: harmonic k at k * f0(t), weighted by the envelope at its frequency
    phase = 2 * np.pi * np.cumsum(np.where(voiced, f0_s, speaker.f0_hz)) / sample_rate
    k_max = int(sample_rate / 2 / max(f0_s[voiced].min() if voiced.any() else speaker.f0_hz, 40))
    audio = np.zeros(n)
    block = sample_rate // CONTROL_HZ
    gain = np.convolve(voiced.astype(float), np.ones(block) / block, mode="same")  # no clicks at edges
    for k in range(1, k_max + 1):
        fk = k * np.maximum(f0_s, 1.0)
        ctl_amp = _envelope(np.interp(ctl_t, t, fk)[:, None], formants, speaker)[:, 0]
        amp = np.interp(t, ctl_t, ctl_amp) * (fk < sample_rate / 2 - 200)
        audio += amp * np.sin(k * phase)
    audio *= gain

    # breath and unvoiced bursts: white noise shaped by a crude high-pass
    noise = rng.standard_normal(n)
    noise = noise - np.convolve(noise, np.ones(4) / 4, mode="same")
    audio += (speaker.breath + 0.15 * (1 - gain)) * noise * np.abs(audio).max(initial=1e-3)
    audio *= 0.5 / max(np.abs(audio).max(), 1e-9)
    return audio.astype(np.float32), f0_s


def frame_f0(f0_samples: np.ndarray, hop: int) -> np.ndarray:
    """Known per-sample F0 sampled at the project's frame centres ((i + 0.5) * hop)."""
    n = len(f0_samples) // hop
    return f0_samples[(np.arange(n) * hop + hop // 2)].astype(np.float32)


def write_corpus(root: Path | str, n_speakers: int = 6, utterances: int = 6, seconds: float = 2.0,
                 sample_rate: int = 16000, seed: int = 0, ext: str = "wav") -> dict[str, Speaker]:
    """Write ROOT/<speaker>/<utt>.<ext> (the folder layout `prepare` reads). Returns speakers by name."""
    root = Path(root)
    speakers = make_speakers(n_speakers, seed)
    rng = np.random.default_rng(seed + 1)
    for s in speakers:
        (root / s.name).mkdir(parents=True, exist_ok=True)
        for u in range(utterances):
            dur = seconds * rng.uniform(0.8, 1.2)
            audio, _ = synth_utterance(s, dur, sample_rate, seed=int(rng.integers(1 << 31)))
            sf.write(root / s.name / f"{s.name}_{u:03d}.{ext}", audio, sample_rate)
    return {s.name: s for s in speakers}
