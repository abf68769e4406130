"""Zero-shot cloning quality on held-out real voices, judged by an independent speaker verifier.

Every ordered pair (A, B) of the split's speakers (A != B): one utterance of A is converted into B's voice
through `synthesize.convert` (the same pipeline as `voiceclone synthesize`), with 4-10 s of B's clips as the
reference. The output is embedded by Resemblyzer (GE2E; never used in training) and compared with
- the target profile: the mean embedding of B's clips *not* used as the reference;
- the source profile: the mean embedding of A's clips other than the converted one.
Also the median F0 of the output against the target's (cents), and two baselines on the same pairs:
- `pitch shift`: the source pitch-shifted (librosa, phase vocoder + resampling) to B's median F0;
- `target speech`: B's reference clips themselves (the ceiling a perfect converter reaches);
- `copy synthesis`: B's reference mel through the model's vocoder (the ceiling this vocoder allows).

    python benchmarks/zero_shot_quality.py --model runs/demo/run --data runs/demo/dataset --variant demo \\
        --out benchmarks/results/zero_shot_quality.md

Rows are appended to the markdown table in --out (and the per-pair values to a .jsonl beside it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from voiceclone import audio as A
from voiceclone.bundle import load_model
from voiceclone.data.store import Dataset
from voiceclone.synthesize import Reference, convert

REF_MIN_SECONDS, REF_MAX_SECONDS = 4.0, 10.0
COLUMNS = ("variant", "split", "pairs", "SECS to target", "SECS to source", "nearer-target share",
           "F0 offset cents (median |.|)", "F0 offset cents (mean)", "outputs alike / targets alike",
           "CPU minutes", "note")


def _verifier():
    try:
        from resemblyzer import VoiceEncoder, preprocess_wav
    except ImportError as e:  # an optional judge: say how to get it
        raise SystemExit(f"this benchmark needs Resemblyzer: pip install resemblyzer ({e})")
    encoder = VoiceEncoder("cpu", verbose=False)

    def embed(y: np.ndarray, sample_rate: int) -> np.ndarray:
        wav = preprocess_wav(np.asarray(y, dtype=np.float32), source_sr=sample_rate)
        return encoder.embed_utterance(wav)

    return embed


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-9))


def _median_f0(f0: np.ndarray) -> float | None:
    v = f0[f0 > 0]
    return float(np.median(v)) if v.size else None


def judge_f0(y: np.ndarray, sample_rate: int) -> np.ndarray:
    """F0 as the judge measures it: Praat's own pitch tracker with its default speech range (75-600 Hz),
    independent of the model's extractor and its settings. Hz per 10 ms, 0 = unvoiced."""
    import parselmouth

    pitch = parselmouth.Sound(np.asarray(y, dtype=np.float64), sampling_frequency=sample_rate).to_pitch()
    return np.nan_to_num(pitch.selected_array["frequency"], nan=0.0)


def make_pairs(split, frame_rate: float, seed: int = 0) -> list[dict]:
    """Every ordered pair of speakers; the source utterance rotates over A's clips."""
    by_speaker: dict[str, list[int]] = defaultdict(list)
    for i in range(len(split)):
        by_speaker[split.speaker(i)].append(i)
    speakers = sorted(by_speaker)
    rng = np.random.default_rng(seed)
    plan = {}
    for s in speakers:  # reference clips (4-10 s) and profile clips (the rest), fixed per target speaker
        clips = list(rng.permutation(by_speaker[s]))
        ref, secs = [], 0.0
        while clips and (secs < REF_MIN_SECONDS or not ref) and len(clips) > 1:
            j = clips.pop(0)
            if secs + split.n_frames(j) / frame_rate > REF_MAX_SECONDS and ref:
                clips.append(j)
                break
            ref.append(j)
            secs += split.n_frames(j) / frame_rate
        plan[s] = {"reference": ref, "profile": clips}
    pairs, turn = [], defaultdict(int)
    for a in speakers:
        for b in speakers:
            if a == b or not plan[b]["profile"] or not plan[b]["reference"]:
                continue
            own = by_speaker[a]
            i = own[turn[a] % len(own)]
            turn[a] += 1
            pairs.append({"source": i, "source_speaker": a, "target_speaker": b, "reference": plan[b]["reference"],
                          "target_profile": plan[b]["profile"],
                          "source_profile": [j for j in own if j != i] or [i]})
    return pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="run folder or bundle")
    ap.add_argument("--data", required=True, help="dataset folder holding the held-out speakers")
    ap.add_argument("--split", default="unseen")
    ap.add_argument("--variant", default="model")
    ap.add_argument("--cpu-minutes", type=float, default=None, help="training cost to print in the table")
    ap.add_argument("--note", default="")
    ap.add_argument("--baselines", action="store_true", help="also the pitch-shift and ceiling rows")
    ap.add_argument("--max-pairs", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--push", type=float, default=0.0, help="speaker vector + push * (reference - source)")
    ap.add_argument("--f0-range", default="", help="MIN,MAX Hz: the extractor range used at synthesis")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    embed = _verifier()
    model = load_model(args.model, need_vocoder=True)
    if args.f0_range:  # the model's F0 extractor range at synthesis only (the register mapping lever)
        lo, hi = (float(x) for x in args.f0_range.split(","))
        model.recipe = dataclasses.replace(model.recipe, audio=dataclasses.replace(model.recipe.audio, f0_min=lo,
                                                                                   f0_max=hi))
    cfg = model.recipe.audio
    split = Dataset.open(Path(args.data)).split(args.split)
    pairs = make_pairs(split, cfg.frame_rate)
    if args.max_pairs:
        pairs = pairs[: args.max_pairs]

    cache: dict[int, np.ndarray] = {}

    def audio(i: int) -> np.ndarray:
        return np.asarray(split.audio(i), dtype=np.float32) / 32768.0

    def emb(i: int) -> np.ndarray:
        if i not in cache:
            cache[i] = embed(audio(i), cfg.sample_rate)
        return cache[i]

    def profile(ids: list[int]) -> np.ndarray:
        return np.mean([emb(j) for j in ids], axis=0)

    def f0_median_of(ids: list[int]) -> float | None:  # as synthesize.embed_references measures it
        return _median_f0(np.concatenate([A.f0(audio(j), cfg) for j in ids]))

    def judge_median_of(ids: list[int]) -> float | None:
        return _median_f0(np.concatenate([judge_f0(audio(j), cfg.sample_rate) for j in ids]))

    rows = defaultdict(list)
    embeddings = defaultdict(list)  # per output: (source speaker, target speaker, embedding, target profile)
    started = time.process_time()
    for p in pairs:
        tgt, src = profile(p["target_profile"]), profile(p["source_profile"])
        ref_mels = [torch.from_numpy(np.asarray(split.mel(j), dtype=np.float32).T.copy()) for j in p["reference"]]
        ref_f0 = f0_median_of(p["reference"])
        target_f0 = judge_median_of(p["target_profile"] + p["reference"])
        ref = Reference(model.acoustic.embed(ref_mels), sum(m.shape[1] for m in ref_mels) / cfg.frame_rate,
                        ref_f0, [])
        y = audio(p["source"])
        if args.push:  # move the voice further from the source's, as judged by the model's own encoder
            src_vec = model.acoustic.embed([torch.from_numpy(np.asarray(split.mel(p["source"]), np.float32).T.copy())])
            ref = Reference(ref.vector + args.push * (ref.vector - src_vec), ref.seconds, ref.f0_median, [])
        outs = {}
        blocks, info = convert(model, y, ref)
        outs["model"] = np.concatenate(list(blocks))
        if args.baselines:
            import librosa

            outs["pitch shift"] = librosa.effects.pitch_shift(y, sr=cfg.sample_rate,
                                                              n_steps=info["pitch_shift_semitones"])
            outs["target speech"] = np.concatenate([audio(j) for j in p["reference"]])
            with torch.inference_mode():
                outs["copy synthesis"] = np.concatenate([
                    model.vocoder(m.unsqueeze(0), torch.from_numpy(np.asarray(split.f0(j), dtype=np.float32))
                                  .unsqueeze(0))[0].float().numpy() for m, j in zip(ref_mels, p["reference"])])
        for name, out in outs.items():
            e = embed(out, cfg.sample_rate)
            st, ss = _cos(e, tgt), _cos(e, src)
            fo = _median_f0(judge_f0(out, cfg.sample_rate))
            cents = 1200 * np.log2(fo / target_f0) if fo and target_f0 else None
            embeddings[name].append((p["source_speaker"], p["target_speaker"], e, tgt))
            rows[name].append({"source_speaker": p["source_speaker"], "target_speaker": p["target_speaker"],
                               "secs_target": st, "secs_source": ss, "nearer": st > ss, "f0_cents": cents,
                               "pitch_shift": info["pitch_shift_semitones"]})
    eval_minutes = (time.process_time() - started) / 60
    # does the speaker vector steer the output? outputs of one source speaker into different targets should
    # differ as much as those targets do (a decoder that ignores the reference gives outputs alike)
    spread = {}
    for name, es in embeddings.items():
        out_sims, tgt_sims = [], []
        for k, (sa, ta, ea, pa) in enumerate(es):
            for sb, tb, eb, pb in es[k + 1:]:
                if sa == sb and ta != tb:
                    out_sims.append(_cos(ea, eb))
                    tgt_sims.append(_cos(pa, pb))
        if out_sims:
            spread[name] = (float(np.mean(out_sims)), float(np.mean(tgt_sims)))

    table = []
    for name, items in rows.items():
        o, t = spread.get(name, (None, None))
        cents = np.array([r["f0_cents"] for r in items if r["f0_cents"] is not None])
        variant = args.variant if name == "model" else name
        table.append({"variant": variant, "split": f"{Path(args.data).name}/{args.split}", "pairs": len(items),
                      "secs_target": float(np.mean([r["secs_target"] for r in items])),
                      "secs_source": float(np.mean([r["secs_source"] for r in items])),
                      "nearer": float(np.mean([r["nearer"] for r in items])),
                      "f0_abs_cents": float(np.median(np.abs(cents))) if cents.size else None,
                      "f0_mean_cents": float(np.mean(cents)) if cents.size else None,
                      "outputs_alike": o, "targets_alike": t,
                      "cpu_minutes": args.cpu_minutes if name == "model" else None,
                      "note": args.note if name == "model" else ""})
    lines = []
    for t in table:
        fmt = lambda x, d=3: "-" if x is None else f"{x:.{d}f}"
        lines.append(f"| {t['variant']} | {t['split']} | {t['pairs']} | {fmt(t['secs_target'])} | "
                     f"{fmt(t['secs_source'])} | {fmt(100 * t['nearer'], 0)}% | {fmt(t['f0_abs_cents'], 0)} | "
                     f"{fmt(t['f0_mean_cents'], 0)} | {fmt(t['outputs_alike'], 2)} / {fmt(t['targets_alike'], 2)} | "
                     f"{fmt(t['cpu_minutes'], 1)} | {t['note']} |")
    header = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"
    print(header + "\n".join(lines))
    for name, (o, t) in spread.items():
        print(f"{name}: outputs of one source into different targets are {o:.3f} alike; the targets {t:.3f}")
    print(f"(evaluation {eval_minutes:.1f} CPU minutes)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        new = not args.out.exists()
        with args.out.open("a") as f:
            if new:
                f.write(header)
            f.write("\n".join(lines) + "\n")
        with args.out.with_suffix(".jsonl").open("a") as f:
            for name, items in rows.items():
                f.write(json.dumps({"variant": args.variant if name == "model" else name, "model": str(args.model),
                                    "data": str(args.data), "items": items}) + "\n")


if __name__ == "__main__":
    main()
