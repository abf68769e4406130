"""The WER judge's floor: how many words it reports lost for changes nobody would hear.

    python benchmarks/wer_floor.py --data runs/demo/dataset

zero_shot_quality.py scores a conversion's words against the recogniser's own transcript of the source (the
demo corpus ships no text). This script scores inaudible changes of the same recordings the same way, so the
table shows how much of a "WER out" is the recogniser changing its mind rather than words lost. Each
unseen speaker's recording is transcribed as recorded, then after each change, and the pooled WER of the
changed clips against the recorded clips' transcripts is printed as a markdown table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from voiceclone.evaluation import judges as J

sys.path.insert(0, str(Path(__file__).resolve().parent))
from zero_shot_quality import unseen_voices  # noqa: E402


def _noise(y: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    scale = np.sqrt(np.mean(y ** 2) / 10 ** (snr_db / 10))
    return (y + scale * rng.standard_normal(len(y))).astype(np.float32)


def changes(rng: np.random.Generator) -> dict:
    """name -> f(y, sr): changes of a recording that a listener would not notice (or barely, at 30 dB)."""
    return {
        "none (transcribed again)": lambda y, sr: y,
        "gain -6 dB": lambda y, sr: (0.5 * y).astype(np.float32),
        "white noise at 40 dB SNR": lambda y, sr: _noise(y, 40, rng),
        "resampled to 22.05 kHz and back (soxr)":
            lambda y, sr: soxr.resample(soxr.resample(y, sr, 22050), 22050, sr).astype(np.float32),
        "white noise at 30 dB SNR": lambda y, sr: _noise(y, 30, rng),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="a prepared dataset (its unseen speakers are used)")
    ap.add_argument("--asr-model", default=None, help="Whisper name or CTranslate2 folder (default: bundled tiny.en)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    asr = J.AsrJudge(args.asr_model, threads=args.threads)
    todo = changes(np.random.default_rng(0))
    errors = {name: J.ErrorCount() for name in todo}
    files = [f for paths in unseen_voices(args.data).values() for f in paths]
    for i, path in enumerate(files):
        y, sr = sf.read(path, dtype="float32", always_2d=True)
        y = y.mean(axis=1)
        heard = asr.transcribe(y, sr)
        for name, change in todo.items():
            errors[name] = errors[name] + J.word_errors(heard, asr.transcribe(change(y, sr), sr))
        print(f"{i + 1}/{len(files)} {path.name}", file=sys.stderr)
    print(f"{len(files)} recordings of {args.data}; judge {asr.name}\n")
    print("| change to the recording | WER against its own transcript |\n|---|---|")
    for name, e in errors.items():
        print(f"| {name} | {100 * e.rate:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
