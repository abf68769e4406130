"""Where copy synthesis loses the voice: the mel, the phase, or the vocoder (voiceclone[eval]).

    python benchmarks/voice_loss.py --run runs/demo/run --data runs/demo/dataset

Each unseen speaker's recordings (the first --per-speaker of them) are rebuilt five ways and judged as
zero_shot_quality.py judges conversions: SECS (Resemblyzer GE2E) to the speaker's profile of their other
recordings, pooled WER against the recording's own transcript (Whisper), DNSMOS OVRL. The rows:

- the recording itself (the ceiling of every other row);
- its magnitude spectrogram squeezed through the project's mel filter bank and spread back (pseudo-inverse),
  with the recording's own phase: what the mel the models work on keeps of the voice;
- its own magnitude with Griffin-Lim phase: what phase carries;
- copy synthesis through the run's vocoder (its mel and F0 in, audio out);
- that copy synthesis with its STFT rescaled band by band until its mel is the input mel again, in every
  band (`inference/melfit.py`, which synthesis applies from 2 kHz up): how much of the vocoder's loss is its
  output missing the mel it was given.

Markdown table on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import librosa
import numpy as np
import torch

from voiceclone import audio as A
from voiceclone.audio.mel import mel_filterbank
from voiceclone.evaluation import judges as J
from voiceclone.evaluation.metrics import cosine_similarity
from voiceclone.inference import melfit
from voiceclone.inference.bundle import load_model
from voiceclone.models.vocoder import ISTFT

sys.path.insert(0, str(Path(__file__).resolve().parent))
from zero_shot_quality import read, unseen_voices  # noqa: E402

def mel_magnitude(y: np.ndarray, cfg) -> np.ndarray:
    """y with each frame's magnitude replaced by its mel spread back to the bins (pseudo-inverse), phase kept."""
    spec = A.spectrogram(torch.from_numpy(y), cfg)
    basis = torch.from_numpy(mel_filterbank(cfg))
    magnitude = (torch.linalg.pinv(basis) @ (basis @ spec.abs())).clamp(min=0)
    return ISTFT(cfg.n_fft, cfg.hop_length, cfg.win_length)((magnitude * torch.exp(1j * spec.angle())).T[None])[0].numpy()


def griffin_lim(y: np.ndarray, cfg) -> np.ndarray:
    magnitude = np.abs(librosa.stft(y, n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length))
    return librosa.griffinlim(magnitude, n_iter=60, hop_length=cfg.hop_length, win_length=cfg.win_length,
                              n_fft=cfg.n_fft, length=len(y), random_state=0).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="a run folder or bundle with a vocoder")
    ap.add_argument("--data", type=Path, required=True, help="the prepared dataset (its unseen speakers' files)")
    ap.add_argument("--per-speaker", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.run, need_vocoder=True)
    cfg, prep = model.recipe.audio, model.recipe.prepare
    rate = cfg.sample_rate
    spk, asr, mos = J.SpeakerJudge(), J.AsrJudge(threads=args.threads), J.MosJudge(args.threads)
    rows: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for speaker, files in unseen_voices(args.data).items():
        embeddings = [spk.embed(read(f, rate), rate) for f in files]
        for k, f in enumerate(files[: args.per_speaker]):
            profile = np.mean([e for j, e in enumerate(embeddings) if j != k], axis=0)
            y = A.clean(A.load_audio(f, rate), prep, f)
            with torch.inference_mode():
                mel = A.log_mel(torch.from_numpy(y), cfg)
                f0 = torch.from_numpy(A.f0(y, cfg))
                copy = model.vocoder(mel[None], f0[None])[0].float().numpy()
            text = asr.transcribe(y, rate)
            versions = {"the recording": y,
                        "its mel spread back to the bins, with its own phase": mel_magnitude(y, cfg),
                        "its magnitude with Griffin-Lim phase": griffin_lim(y, cfg),
                        "copy synthesis (the run's vocoder)": copy,
                        "copy synthesis fitted back to its mel in every band (3 passes)":
                            melfit.fit_to_mel(torch.from_numpy(copy)[None], mel[None], cfg, from_hz=0.0,
                                              passes=3)[0].numpy()}
            for name, out in versions.items():
                out = np.clip(out, -1, 1).astype(np.float32)
                r = rows[name]
                r["secs"].append(cosine_similarity(spk.embed(out, rate), profile))
                errors = J.word_errors(text, asr.transcribe(out, rate))
                r["edits"].append(errors.edits)
                r["words"].append(errors.length)
                r["mos"].append(mos.score(out, rate)["ovrl"])
        print(f"{speaker}: {len(rows['the recording']['secs'])} recordings", file=sys.stderr, flush=True)
    print("| rebuilt from | SECS to own profile | WER | DNSMOS OVRL | recordings |\n|---|---|---|---|---|")
    for name, r in rows.items():
        wer = 100 * sum(r["edits"]) / max(1, sum(r["words"]))
        print(f"| {name} | {np.mean(r['secs']):.3f} | {wer:.1f} | {np.mean(r['mos']):.2f} | {len(r['secs'])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
