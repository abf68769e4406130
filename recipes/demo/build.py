"""Build the bundled demo corpus: real LibriSpeech readers, optionally with synthetic espeak-ng/flite voices.

    python recipes/demo/build.py --librispeech DIR   # writes data/demo/<speaker>/<file>.flac (16 kHz mono)

The corpus is built around real read speech (DIR: a librispeech-mini folder, CC BY 4.0): its 225
train-clean-100 readers (one utterance each) are the training voices, and its 10 test-other readers (10
utterances each) are held out as the named unseen speakers (recipes/demo/unseen.txt; recipes/demo/run.sh passes them to
`prepare --unseen-speakers`), so the demo's zero-shot figures are on real voices it never trained on.
Zero-shot cloning improves with the number of distinct voices far more than with hours per voice
(docs/architecture.md section 6), so each training utterance is cut at a quiet point before CAP_S seconds: every reader
stays in and the corpus fits the size budget. Only this script reads DIR; the project reads data/demo. `--synthetic NAME,...` (or `all`) adds voices made with the Debian synthesizers espeak-ng and
flite reading recipes/demo/sentences.txt (needs `espeak-ng` and `flite` on PATH). Deterministic.
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
# the 10 test-other readers: the demo's named unseen speakers (recipes/demo/run.sh passes the same list)
UNSEEN = tuple((HERE / "unseen.txt").read_text().strip().split(","))  # run.sh and benchmarks read it too
CAP_S = 12.0  # training utterances are cut at a quiet point before this: all 225 readers fit in 60 MB
QUIET_WINDOW_S = 3.0  # the cut falls at the quietest 20 ms in the last seconds before CAP_S
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


def cut_quiet(y: np.ndarray, cap_s: float) -> np.ndarray:
    """`y` [T] cut at its quietest 20 ms stretch in the QUIET_WINDOW_S seconds before `cap_s`. -> [T' <= cap]"""
    cap = int(cap_s * SAMPLE_RATE)
    if len(y) <= cap:
        return y
    hop = SAMPLE_RATE // 50
    start = cap - int(QUIET_WINDOW_S * SAMPLE_RATE)
    frames = y[start : start + (cap - start) // hop * hop].reshape(-1, hop)
    return y[: start + int(np.argmin(np.square(frames).sum(axis=1))) * hop + hop // 2]


def librispeech(root: Path, out: Path, cap_s: float) -> tuple[list[tuple[str, str, str, str]], float]:
    """Copy the readers of `root` into `out`/<reader>/, trimmed (and cut at `cap_s` unless held out).

    Returns the transcript rows (path, speaker, source, text) and the seconds written. The mini corpus ships
    no transcripts, so the text column stays empty for these files.
    """
    rows, seconds = [], 0.0
    for subset in ("train-clean-100", "test-other"):
        for reader in sorted((root / subset).iterdir(), key=lambda d: d.name):
            if not reader.is_dir():
                continue
            shutil.rmtree(out / reader.name, ignore_errors=True)
            (out / reader.name).mkdir(parents=True)
            for f in sorted(reader.glob("*.flac")):
                y, sr = sf.read(f, dtype="float32", always_2d=True)
                y = y.mean(axis=1)
                if sr != SAMPLE_RATE:
                    y = soxr.resample(y, sr, SAMPLE_RATE, quality="HQ")
                a, b = trim_bounds(y, 40.0)
                margin = int(MARGIN_S * SAMPLE_RATE) * 4  # real speech fades out: keep a little more
                y = y[max(0, a - margin) : min(len(y), b + margin)]
                if reader.name not in UNSEEN:
                    y = cut_quiet(y, cap_s)
                rel = f"{reader.name}/{f.name}"
                sf.write(out / rel, y, SAMPLE_RATE, format="FLAC", subtype="PCM_16", compression_level=1.0)
                rows.append((rel, reader.name, f"librispeech {subset}", ""))
                seconds += len(y) / SAMPLE_RATE
            print(f"{reader.name:10s} librispeech {subset}", file=sys.stderr)
    return rows, seconds


def synthetic(names: list[str], out: Path, n_sentences: int) -> tuple[list[tuple[str, str, str, str]], float]:
    """Generate the named espeak-ng/flite voices into `out`/<voice>/, `n_sentences` each."""
    for tool in ("espeak-ng", "flite"):
        if shutil.which(tool) is None:
            raise SystemExit(f"error: {tool} not found (apt-get install espeak-ng flite)")
    sentences = [s.strip() for s in (HERE / "sentences.txt").read_text().splitlines() if s.strip()]
    voices = [(name, "espeak", spec) for name, *spec in ESPEAK] + [(name, "flite", spec) for name, *spec in FLITE]
    known = {name for name, _, _ in voices}
    unknown = sorted(set(names) - known)
    if unknown:
        raise SystemExit(f"error: unknown synthetic voice(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    rows, seconds = [], 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for v, (name, engine, spec) in enumerate(voices):  # v numbers all voices: a voice's draw never changes
            if name not in names:
                continue
            shutil.rmtree(out / name, ignore_errors=True)
            (out / name).mkdir(parents=True)
            # each voice reads its own draw, so the sentences are spread over different voices
            picks = np.random.default_rng(1000 + v).choice(len(sentences), n_sentences, replace=False)
            for k, idx in enumerate(picks):
                text = sentences[idx]
                y, sr = espeak(text, *spec) if engine == "espeak" else flite(text, *spec, Path(tmp))
                y = finish(y, sr)
                rel = f"{name}/{name}_{k:02d}.flac"
                sf.write(out / rel, y, SAMPLE_RATE, format="FLAC", subtype="PCM_16", compression_level=1.0)
                rows.append((rel, name, engine, text))
                seconds += len(y) / SAMPLE_RATE
            print(f"{name:10s} {engine}", file=sys.stderr)
    return rows, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE.parent.parent / "data" / "demo")
    parser.add_argument("--librispeech", type=Path, required=True,
                        help="the librispeech-mini folder (train-clean-100/ and test-other/ reader folders)")
    parser.add_argument("--cap", type=float, default=CAP_S, help="seconds kept of each training utterance")
    parser.add_argument("--synthetic", default="", help="synthetic voices to add: NAME,... or all (default none)")
    parser.add_argument("--sentences", type=int, default=10, help="sentences per synthetic voice")
    parser.add_argument("--max-mb", type=float, default=60.0, help="fail if the corpus is larger")
    args = parser.parse_args(argv)
    if not (args.librispeech / "train-clean-100").is_dir():
        print(f"error: {args.librispeech}: no train-clean-100 folder (the librispeech-mini corpus)", file=sys.stderr)
        return 2
    all_synthetic = [name for name, *_ in ESPEAK] + [name for name, *_ in FLITE]
    names = all_synthetic if args.synthetic == "all" else [n for n in args.synthetic.split(",") if n]
    # a rebuild replaces every voice folder, including synthetic voices no longer asked for: README stays
    args.out.mkdir(parents=True, exist_ok=True)
    for d in args.out.iterdir():
        if d.is_dir():
            shutil.rmtree(d)
    rows, seconds = librispeech(args.librispeech, args.out, args.cap)
    if names:
        more, more_s = synthetic(names, args.out, args.sentences)
        rows, seconds = rows + more, seconds + more_s
    with open(args.out / "transcripts.tsv", "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(["path", "speaker", "source", "text"])
        w.writerows(rows)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    speakers = len({r[1] for r in rows})
    print(f"{speakers} voices, {len(rows)} utterances, {seconds / 60:.1f} min, {size / 1e6:.1f} MB in {args.out}")
    if size > args.max_mb * 1e6:
        print(f"error: {size / 1e6:.1f} MB exceeds --max-mb {args.max_mb}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
