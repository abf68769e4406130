"""Build the bundled demo corpus: many English voices from the Debian synthesizers espeak-ng and flite.

    python recipes/demo/build.py            # writes data/demo/<voice>/<voice>_<nn>.flac (16 kHz mono)

Zero-shot cloning improves with the number of distinct voices far more than with hours per voice
(docs/architecture.md, section 6), so the corpus spends its size on voices: espeak-ng variants (formant sets, pitch
and speed) across its English accents, and flite's recorded-voice models, each reading a different draw of
short sentences from recipes/demo/sentences.txt. Deterministic: the same tools give the same files.
Needs `espeak-ng` and `flite` on PATH (Debian/Ubuntu: apt-get install espeak-ng flite).
"""

from __future__ import annotations

import argparse
import csv
import io
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from voiceclone.audio import trim_bounds

HERE = Path(__file__).resolve().parent
SAMPLE_RATE = 16000
MARGIN_S = 0.03  # silence kept at each end after trimming, so words are not clipped
PEAK = 0.2  # -14 dBFS: 16-bit FLAC of quieter audio is smaller, and `prepare` normalizes loudness anyway
SPEED = 1.08  # a little faster than espeak-ng's default rate: more sentences fit in the size budget

ACCENTS = {"us": "en-us", "gb": "en-gb", "sc": "en-gb-scotland", "rp": "en-gb-x-rp", "lan": "en-gb-x-gbclan",
           "wm": "en-gb-x-gbcwmd", "car": "en-029", "nyc": "en-us-nyc"}

# (voice name, espeak-ng variant, accent, pitch 0-99, words per minute). Whispering and creaky variants
# (whisper, whisperf, croak, grandpa) are left out: they carry almost no F0, which the model conditions on.
ESPEAK = [
    ("m1", "m1", "us", 45, 165), ("m2", "m2", "gb", 50, 170), ("m3", "m3", "sc", 40, 160),
    ("m4", "m4", "rp", 55, 175), ("m5", "m5", "lan", 35, 170), ("m6", "m6", "wm", 50, 160),
    ("m7", "m7", "car", 45, 175), ("m8", "m8", "nyc", 55, 170), ("f1", "f1", "us", 60, 165),
    ("f2", "f2", "gb", 50, 170), ("f3", "f3", "sc", 55, 160), ("f4", "f4", "rp", 65, 175),
    ("f5", "f5", "lan", 45, 165), ("klatt", "klatt", "us", 40, 170), ("klatt2", "klatt2", "gb", 50, 165),
    ("klatt3", "klatt3", "sc", 60, 170), ("alex", "Alex", "wm", 50, 170),
    ("alicia", "Alicia", "car", 55, 165), ("andrea", "Andrea", "nyc", 50, 170), ("annie", "Annie", "us", 45, 175),
    ("andy", "Andy", "gb", 60, 160), ("aunty", "aunty", "sc", 50, 165), ("belinda", "belinda", "rp", 40, 170),
    ("steph", "steph", "lan", 55, 170), ("anika", "anika", "wm", 45, 165), ("shelby", "shelby", "car", 50, 170),
    ("grandma", "grandma", "nyc", 50, 160), ("zac", "zac", "us", 30, 170), ("nguyen", "Nguyen", "gb", 50, 165),
    ("ed", "ed", "sc", 50, 175), ("pablo", "pablo", "rp", 45, 165), ("iven", "iven2", "lan", 55, 170),
    ("marco", "marco", "wm", 50, 160), ("quincy", "quincy", "car", 60, 170), ("storm", "Storm", "nyc", 55, 165),
    ("gene", "Gene2", "gb", 40, 175), ("victor", "victor", "rp", 60, 165),
]
# (voice name, flite voice, --setf options): the clustergen voices slt, rms, awb and the diphone voice kal16
FLITE = [
    ("slt", "slt", ["duration_stretch=0.92"]), ("rms", "rms", ["duration_stretch=0.92"]),
    ("awb", "awb", ["duration_stretch=0.92"]), ("kal", "kal16", ["duration_stretch=0.92"]),
]


def espeak(text: str, variant: str, accent: str, pitch: int, speed: int) -> tuple[np.ndarray, int]:
    wav = subprocess.run(["espeak-ng", "-v", f"{ACCENTS[accent]}+{variant}", "-p", str(pitch), "-s", str(round(speed * SPEED)),
                          "--stdout", text], capture_output=True, check=True).stdout
    y, sr = sf.read(io.BytesIO(wav), dtype="float32")
    return y, sr


def flite(text: str, voice: str, options: list[str], tmp: Path) -> tuple[np.ndarray, int]:
    out = tmp / "flite.wav"
    cmd = ["flite", "-voice", voice]
    for opt in options:
        cmd += ["--setf", opt]
    subprocess.run(cmd + ["-t", text, "-o", str(out)], capture_output=True, check=True)
    y, sr = sf.read(out, dtype="float32")
    return y, sr


def finish(y: np.ndarray, sr: int) -> np.ndarray:
    """Mono, 16 kHz, trimmed to the speech plus a short margin, peak at PEAK. [T] -> [T'] float32."""
    if y.ndim > 1:
        y = y.mean(axis=1)
    if sr != SAMPLE_RATE:
        y = soxr.resample(y, sr, SAMPLE_RATE, quality="HQ")
    a, b = trim_bounds(y, 40.0)
    margin = int(MARGIN_S * SAMPLE_RATE)
    y = y[max(0, a - margin) : min(len(y), b + margin)]
    return (y * (PEAK / max(float(np.abs(y).max()), 1e-9))).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE.parent.parent / "data" / "demo")
    parser.add_argument("--sentences", type=int, default=10, help="sentences per voice")
    parser.add_argument("--max-mb", type=float, default=15.0, help="fail if the corpus is larger")
    args = parser.parse_args(argv)
    for tool in ("espeak-ng", "flite"):
        if shutil.which(tool) is None:
            print(f"error: {tool} not found (apt-get install espeak-ng flite)", file=sys.stderr)
            return 2
    sentences = [s.strip() for s in (HERE / "sentences.txt").read_text().splitlines() if s.strip()]
    voices = [(name, "espeak", spec) for name, *spec in ESPEAK] + [(name, "flite", spec) for name, *spec in FLITE]
    for name, _, _ in voices:  # rebuild the voices' folders only: README and anything else stays
        shutil.rmtree(args.out / name, ignore_errors=True)
    rows, seconds = [], 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for v, (name, engine, spec) in enumerate(voices):
            (args.out / name).mkdir(parents=True, exist_ok=True)
            # each voice reads its own draw, so the sentences are spread over different voices
            picks = np.random.default_rng(1000 + v).choice(len(sentences), args.sentences, replace=False)
            for k, idx in enumerate(picks):
                text = sentences[idx]
                y, sr = espeak(text, *spec) if engine == "espeak" else flite(text, *spec, Path(tmp))
                y = finish(y, sr)
                rel = f"{name}/{name}_{k:02d}.flac"
                sf.write(args.out / rel, y, SAMPLE_RATE, format="FLAC", subtype="PCM_16", compression_level=1.0)
                rows.append((rel, name, engine, text))
                seconds += len(y) / SAMPLE_RATE
            print(f"{name:10s} {engine}", file=sys.stderr)
    with open(args.out / "transcripts.tsv", "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(["path", "speaker", "engine", "text"])
        w.writerows(rows)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"{len(voices)} voices, {len(rows)} utterances, {seconds / 60:.1f} min, {size / 1e6:.1f} MB in {args.out}")
    if size > args.max_mb * 1e6:
        print(f"error: {size / 1e6:.1f} MB exceeds --max-mb {args.max_mb}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
