"""Clone a voice with the ONNX graphs of `voiceclone export RUN --onnx DIR`: onnxruntime and numpy, no torch.

    pip install onnxruntime numpy soundfile soxr praat-parselmouth
    python examples/onnx_convert.py DIR --reference her_voice.wav --source my_speech.wav --out cloned.wav \
        [--keep-pitch] [--transpose N] [--timbre 1.0]

Everything voiceclone does around the networks is re-done here in numpy, from DIR/config.json: decoding and
resampling (soundfile, soxr), trimming and loudness (as voiceclone.audio.clean), the log-mel and energy (the
project's one mel function, with the filterbank from DIR/mel_basis.npy), the instance norms, the pitch shift,
the timbre matching (voiceclone/inference/timbre.py), the vocoder's harmonic source and its inverse STFT. tests/test_onnx.py checks each against the torch code.

F0 comes from Praat's autocorrelation method (parselmouth), resampled to the frame grid: the reference that the
project's own tracker (voiceclone.audio.f0_ac, which needs torch for its FFTs) reproduces to about 2 cents. So the
output is close to, not identical with, `voiceclone synthesize`; given the project's F0 (`f0=` in `convert`) it is
the same wav to float32 rounding. The source is converted in one piece (voiceclone cuts sources over 20 s into
chunks): fine for clips, not for hour-long files.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort
import soundfile as sf
import soxr


class OnnxVoice:
    """The exported model. folder: the output of `voiceclone export RUN --onnx DIR`."""

    def __init__(self, folder: Path | str) -> None:
        folder = Path(folder)
        if folder.is_dir() and not (folder / "config.json").exists():  # the export writes it last
            raise ValueError(f"{folder}: no config.json: not an export, or one that did not finish")
        self.config = json.loads((folder / "config.json").read_text())
        if self.config.get("format") != "voiceclone-onnx":
            raise ValueError(f"{folder}: not a voiceclone ONNX export")
        a = self.config["audio"]
        self.sr, self.n_fft, self.hop, self.win = a["sample_rate"], a["n_fft"], a["hop_length"], a["win_length"]
        self.f0_min, self.f0_max, self.floor = a["f0_min"], a["f0_max"], a["log_floor"]
        self.eps = self.config["normalization"]["eps"]
        self.basis = np.load(folder / "mel_basis.npy", allow_pickle=False)
        offset = (self.n_fft - self.win) // 2
        self.window = np.zeros(self.n_fft)
        self.window[offset : offset + self.win] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(self.win) / self.win)
        options = ort.SessionOptions()
        self.sessions = {name: ort.InferenceSession(str(folder / f"{name}.onnx"), options,
                                                    providers=["CPUExecutionProvider"])
                         for name in ("content_encoder", "speaker_encoder", "decoder", "vocoder")}

    def run(self, graph: str, **inputs: np.ndarray) -> list[np.ndarray]:
        return self.sessions[graph].run(None, {k: np.ascontiguousarray(v, dtype=np.float32)[None]
                                               for k, v in inputs.items()})

    # ---- the front end -------------------------------------------------------------------------------

    def load(self, path: Path | str) -> np.ndarray:
        """Decode, mix to mono, resample: [T] float32 at the model's rate."""
        y, rate = sf.read(str(path), dtype="float32", always_2d=True)
        y = y.mean(axis=1)
        # said here with the file's name: NaN read as silence, and a clip shorter than one analysis window
        # failed in the STFT with numpy's words alone
        if not np.isfinite(y).all():
            raise ValueError(f"{path}: samples that are not numbers (NaN or infinity)")
        if rate != self.sr:
            y = soxr.resample(y, rate, self.sr, quality="HQ")
        if len(y) < self.n_fft:
            raise ValueError(f"{path}: {len(y) / self.sr:.3f} s of audio; at least one analysis window "
                             f"({self.n_fft / self.sr:.3f} s) is needed")
        return np.ascontiguousarray(y, dtype=np.float32)

    def clean(self, y: np.ndarray) -> np.ndarray:
        """voiceclone.audio.clean: trim the quiet ends (librosa.effects.trim's rule), bring the active part's
        RMS to prepare.loudness_db dBFS without letting the peak pass 0.99."""
        prep = self.config["prepare"]
        frame, hop, half = 1024, 256, 512
        sq = np.zeros(len(y) + 2 * half + 1)
        np.cumsum(np.square(y, dtype=np.float64), out=sq[half + 1 : half + 1 + len(y)])
        sq[half + 1 + len(y) :] = sq[half + len(y)]
        starts = np.arange(1 + (len(y) + 2 * half - frame) // hop) * hop
        power = (sq[starts + frame] - sq[starts]) / frame
        db = 10 * np.log10(np.maximum(power, 1e-10)) - 10 * np.log10(max(float(power.max()), 1e-10))
        loud = np.flatnonzero(db > -prep["trim_top_db"])
        if loud.size == 0:
            raise ValueError("silent audio")
        y = y[int(loud[0] * hop) : int(min(len(y), (loud[-1] + 1) * hop))]
        n = max(1, len(y) // 512)
        rms = np.sqrt(np.mean((y[: n * 512].reshape(n, 512) if len(y) >= 512 else y[None]).astype(np.float64) ** 2, 1))
        active = rms[rms > rms.max() * 10 ** (-prep["trim_top_db"] / 20)]
        gain = 10 ** (prep["loudness_db"] / 20) / max(float(np.sqrt(np.mean(active**2))) if active.size else 0.0, 1e-8)
        peak = float(np.abs(y).max())
        if peak * gain > 0.99:
            gain *= 0.99 / (peak * gain)
        return (y * gain).astype(np.float32)

    def log_mel(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The project's log-mel [n_mels, T] and energy [T], T = len(y) // hop."""
        power = np.abs(self.stft(y)) ** 2  # [bins, T]
        mel = np.log(np.maximum(self.basis @ np.sqrt(power + 1e-9), self.floor))
        energy = 0.5 * np.log(np.maximum(power.sum(0), self.floor**2))
        return mel.astype(np.float32), energy.astype(np.float32)

    def stft(self, y: np.ndarray) -> np.ndarray:
        """The STFT the mel measures: [bins, T] complex, T = len(y) // hop."""
        n = len(y) // self.hop
        pad = (self.n_fft - self.hop) // 2
        mode = "reflect" if len(y) > pad else "constant"
        x = np.pad(y.astype(np.float64), (pad, self.n_fft - self.hop - pad), mode=mode)
        frames = np.lib.stride_tricks.sliding_window_view(x, self.n_fft)[:: self.hop][:n]
        return np.fft.rfft(frames * self.window, axis=1).T

    def f0(self, y: np.ndarray) -> np.ndarray:
        """F0 [T] in Hz (0 = unvoiced) by Praat's To Pitch (ac), on the frame grid (voiceclone.audio.f0_praat)."""
        import parselmouth

        n = len(y) // self.hop
        out = np.zeros(n, dtype=np.float32)
        if n == 0:
            return out
        step = self.hop / self.sr
        try:
            pitch = parselmouth.Sound(y.astype(np.float64), sampling_frequency=self.sr).to_pitch_ac(
                time_step=step, pitch_floor=self.f0_min, pitch_ceiling=self.f0_max, very_accurate=False)
        except parselmouth.PraatError:
            return out
        values = np.nan_to_num(pitch.selected_array["frequency"].astype(np.float64), nan=0.0)
        if values.size < 2:
            out[:] = values[0] if values.size else 0.0
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

    # ---- the vocoder's harmonic source and inverse STFT ----------------------------------------------

    def source(self, f0_hz: np.ndarray) -> np.ndarray:
        """The vocoder's band-limited pulse train (voiceclone.models.vocoder.HarmonicSource.signal):
        [T] -> [(T - 1) * hop + n_fft]."""
        src = self.config["source"]
        hop, sr, t = self.hop, self.sr, len(f0_hz)
        left = (self.n_fft - hop) // 2
        margin = -(-max(left, self.n_fft - hop - left) // hop) + 1
        voiced = f0_hz > 0
        idx = np.arange(t)
        before = np.maximum.accumulate(np.where(voiced, idx, -1))
        after = np.minimum.accumulate(np.where(voiced, idx, t)[::-1])[::-1]
        filled = f0_hz[np.clip(np.where(before >= 0, before, after), 0, t - 1)]
        filled = np.where(filled > 0, filled, src["unvoiced_fill_hz"])
        f0 = np.clip(filled, src["min_hz"], src["max_hz"]).astype(np.float64)
        padded = np.pad(np.stack([f0, voiced.astype(np.float64)]), ((0, 0), (margin, margin)), mode="edge")
        ramp = (np.arange(hop) + hop // 2 - hop / 2 + 0.5) / hop
        lo, hi = padded[:, :-1, None], padded[:, 1:, None]
        f, gain = lo + (hi - lo) * ramp
        within = (lo[0] * np.arange(1, hop + 1) + (hi[0] - lo[0]) * np.cumsum(ramp)) / sr
        totals = within[:, -1]
        starts = np.cumsum(totals) - totals
        cycles = (starts - np.round(starts))[:, None] + within
        phase = 2 * np.pi * (cycles - np.round(cycles))
        begin = margin * hop - hop // 2 - left
        keep = slice(begin, begin + (t - 1) * hop + self.n_fft)
        f, gain, phase = f.ravel()[keep], gain.ravel()[keep], phase.ravel()[keep]
        harmonics = sr / 2 / f
        full, top = np.floor(harmonics) - 1, harmonics - np.floor(harmonics)
        half_sin = np.sin(0.5 * phase)
        small = np.abs(half_sin) < 1e-4
        dirichlet = np.where(small, full + 0.5,
                             np.sin((full + 0.5) * phase) / (2 * np.where(small, 1.0, half_sin))) - 0.5
        return src["harmonic_amplitude"] * gain * (dirichlet + top * np.cos((full + 1) * phase))

    def istft(self, spec: np.ndarray) -> np.ndarray:
        """spec [T, bins] complex -> [T * hop] on the mel's frame grid (the vocoder's ISTFT)."""
        t = spec.shape[0]
        frames = np.fft.irfft(spec, n=self.n_fft, axis=1) * self.window
        total = (t - 1) * self.hop + self.n_fft
        y, envelope = np.zeros(total), np.zeros(total)
        for i in range(t):  # a loop over frames: fine for an example, a C++ port would do the same
            y[i * self.hop : i * self.hop + self.n_fft] += frames[i]
            envelope[i * self.hop : i * self.hop + self.n_fft] += self.window**2
        keep = slice((self.n_fft - self.hop) // 2, (self.n_fft - self.hop) // 2 + t * self.hop)
        return y[keep] / np.maximum(envelope[keep], 1e-8)

    def vocode(self, mel: np.ndarray, f0_hz: np.ndarray) -> np.ndarray:
        """mel [n_mels, T], f0 [T] -> audio [T * hop] float32 in [-1, 1]."""
        if mel.shape[1] == 0:
            return np.zeros(0, np.float32)
        free_re, free_im, filt_re, filt_im = (x[0] for x in self.run("vocoder", mel=mel, f0_hz=f0_hz))
        frames = np.lib.stride_tricks.sliding_window_view(self.source(f0_hz), self.n_fft)[:: self.hop]
        source = np.fft.rfft(frames * self.window, axis=1)
        spec = (free_re + 1j * free_im) + (filt_re + 1j * filt_im) * source
        return np.clip(self.fit(np.clip(self.istft(spec), -1.0, 1.0), mel), -1.0, 1.0).astype(np.float32)

    def fit(self, y: np.ndarray, mel: np.ndarray) -> np.ndarray:
        """The vocoder's audio [T * hop] rescaled, band by band above fit.from_hz, until its mel is `mel`."""
        fit = self.config["fit"]
        high = np.asarray(fit["band_centres_hz"]) >= fit["from_hz"]
        weights = (self.basis / np.maximum(self.basis.sum(0, keepdims=True), 1e-12) * high[:, None]).T
        total = np.zeros_like(mel, dtype=np.float64)  # each band's gain so far, held within gain_limit
        for _ in range(fit["passes"]):
            spec = self.stft(y)
            own = np.log(np.maximum(self.basis @ np.sqrt(np.abs(spec) ** 2 + 1e-9), self.floor))
            step = np.clip(total + mel - own, -fit["gain_limit"], fit["gain_limit"]) - total
            total += step
            y = self.istft((spec * np.exp(weights @ step)).T)
        return y

    # ---- conversion ----------------------------------------------------------------------------------

    def _norm(self, x: np.ndarray) -> np.ndarray:
        return (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + self.eps)

    def embed(self, references: list[np.ndarray], f0: Callable[[np.ndarray], np.ndarray] | None = None
              ) -> tuple[np.ndarray, float | None, np.ndarray | None]:
        """Cleaned reference clips -> (speaker vector [S], median voiced F0 or None, spectral envelope or None)."""
        f0 = f0 or self.f0
        vectors, pitches, mels = [], [], []
        for y in references:
            y = y[: len(y) // self.hop * self.hop]
            mels.append(self.log_mel(y)[0])
            vectors.append(self.run("speaker_encoder", mel=mels[-1])[0][0])
            track = f0(y)
            pitches.append(np.pad(track, (0, max(0, mels[-1].shape[1] - len(track))))[: mels[-1].shape[1]])
        voiced = np.concatenate(pitches)
        env = envelope(np.concatenate(mels, 1), voiced)
        voiced = voiced[voiced > 0]
        return np.mean(vectors, axis=0), float(np.median(voiced)) if voiced.size else None, env

    def convert(self, y: np.ndarray, speaker: np.ndarray, reference_f0: float | None, keep_pitch: bool = False,
                transpose: float = 0.0, f0: Callable[[np.ndarray], np.ndarray] | None = None,
                reference_envelope: np.ndarray | None = None, timbre: float = 1.0) -> np.ndarray:
        """A cleaned source [T] -> the converted audio [T] float32; `timbre` moves the output's long-term
        spectrum that far onto `reference_envelope` (from `embed`)."""
        mel, energy = self.log_mel(y)
        f0_src = (f0 or self.f0)(y)
        voiced = f0_src[f0_src > 0]
        ratio = 2.0 ** (transpose / 12)
        if not keep_pitch and voiced.size and reference_f0:
            ratio *= reference_f0 / float(np.median(voiced))
        f0_out = (f0_src * ratio).astype(np.float32)
        code = self.run("content_encoder", mel_normalized=self._norm(mel))[0][0]
        out_mel = self.run("decoder", content=self._norm(code), f0_hz=f0_out, energy=energy - energy.mean(),
                           speaker=speaker)[0][0]
        own = envelope(out_mel, f0_src)
        if timbre and own is not None and reference_envelope is not None:
            out_mel = out_mel + (timbre * (reference_envelope - own))[:, None].astype(np.float32)
        wav = self.vocode(out_mel, f0_out)
        return np.pad(wav, (0, len(y) - len(wav)))


def envelope(mel: np.ndarray, f0: np.ndarray) -> np.ndarray | None:
    """As voiceclone.inference.timbre.envelope: the mean log-mel [n_mels] of the voiced frames, its mean over
    bins removed; None under 25 voiced frames."""
    n = min(mel.shape[1], len(f0))
    voiced = f0[:n] > 0
    if int(voiced.sum()) < 25:
        return None
    env = mel[:, :n][:, voiced].astype(np.float64).mean(1)
    return (env - env.mean()).astype(np.float32)


def check_options(args: argparse.Namespace) -> None:
    """What `voiceclone synthesize` refuses before any work, refused here too: --out a folder or named for
    another format (soundfile's traceback after the whole conversion), a --transpose or --timbre out of
    range or NaN (an OverflowError traceback, or a wrong wav with exit 0: a NaN F0 reads as unvoiced)."""
    if args.out.is_dir():
        raise ValueError(f"{args.out}: is a folder; name the wav file to write")
    if args.out.suffix and args.out.suffix.lower() != ".wav":
        raise ValueError(f"{args.out}: the file is written as WAV; name it .wav")
    if not (math.isfinite(args.transpose) and -48 <= args.transpose <= 48):
        raise ValueError(f"--transpose {args.transpose:g}: expected -48 to 48 semitones")
    if not (math.isfinite(args.timbre) and 0 <= args.timbre <= 2):
        raise ValueError(f"--timbre {args.timbre:g}: expected 0-2")


def write_wav(path: Path, wav: np.ndarray, rate: int) -> None:
    """Written beside its name and renamed over it: a failure never leaves half a wav under the name."""
    tmp = path.with_name(f".{path.name}.part")
    try:
        sf.write(str(tmp), wav, rate, subtype="PCM_16", format="WAV")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _read(voice: OnnxVoice, path: Path) -> np.ndarray:
    """A file decoded and cleaned; what makes it unusable is said with its name ("silent audio" alone did not)."""
    y = voice.load(path)
    try:
        return voice.clean(y)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="the output of `voiceclone export RUN --onnx DIR`")
    parser.add_argument("--reference", type=Path, action="append", default=[], help="target voice (repeatable)")
    parser.add_argument("--source", type=Path, required=True, help="speech or singing to convert (one file)")
    parser.add_argument("--out", type=Path, required=True, help="the wav to write")
    parser.add_argument("--keep-pitch", action="store_true",
                        help="keep the source's F0 instead of moving it to the reference's register")
    parser.add_argument("--transpose", type=float, default=0.0, help="shift the pitch by this many semitones")
    parser.add_argument("--timbre", type=float, default=1.0, help="0 = the model's own timbre, 1 = the reference's")
    args = parser.parse_args(argv)
    try:
        check_options(args)
        voice = OnnxVoice(args.folder)
        if args.reference:
            speaker, ref_f0, env = voice.embed([_read(voice, p) for p in args.reference])
        elif voice.config.get("voice") is not None:  # a fine-tuned model's own voice
            stored = voice.config.get("voice_envelope")
            speaker, ref_f0 = np.asarray(voice.config["voice"], np.float32), None
            env = np.asarray(stored, np.float32) if stored is not None else None
        else:
            raise ValueError("at least one --reference is needed")
        wav = voice.convert(_read(voice, args.source), speaker, ref_f0, args.keep_pitch, args.transpose,
                            reference_envelope=env, timbre=args.timbre)
        write_wav(args.out, wav, voice.sr)
    except (OSError, ValueError, RuntimeError) as e:  # a missing or unreadable file, a wrong folder
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({len(wav) / voice.sr:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
