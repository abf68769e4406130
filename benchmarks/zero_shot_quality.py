"""Zero-shot cloning quality on held-out real voices, judged by independent models (voiceclone[eval]).

    python benchmarks/zero_shot_quality.py --run runs/demo/run --data runs/demo/dataset --variant main-job

Pairs: a source utterance of one `unseen` speaker of the prepared dataset is converted into another unseen
speaker's voice, given 4-10 s of that target's other utterances as the reference. Each pair is judged by
- SECS (Resemblyzer GE2E cosine) of the output to the target's and to the source speaker's profile: the
  mean embedding of their utterances that are neither the reference, the converted source nor the ceiling
  clip; "nearer-target share" is the share of pairs whose output is nearer the target than the source;
- WER of the output's transcript (faster-whisper) against the source's text, and WER of the source itself.
  Where the corpus has no transcript of a source (librispeech-mini ships none), its own transcript by the
  same recogniser is the reference: "WER source" is then 0 by construction and "WER out" is the
  intelligibility lost by the conversion;
- DNSMOS OVRL of the output.
"CPU minutes" is the process CPU time of the conversions alone (the judges not counted).

Reference rows, on the same pairs: the source unchanged (floor), a plain pitch shift of the source to the
target's median F0 (the baseline a converter must beat), the target's own other utterance (ceiling), and
copy synthesis of the sources through the run's vocoder (the DNSMOS the vocoder allows).

Rows are merged into benchmarks/results/zero_shot_quality-<cpu>.md: a row of the same name is replaced, the
others kept, so several trained variants (`--variant NAME --run RUN`) end up in one table.

Two variants on the same pairs are compared pair by pair: `--per-pair base.json` on the first run, then
`--against base.json` on the second prints its differences with their own intervals. Those intervals are far
narrower than each row's ±, which includes how much the pairs differ from one another.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

# The one import of the synthesis API (voiceclone/inference/* after the package refactor).
from voiceclone import audio as A
from voiceclone.inference import timbre
from voiceclone.inference.bundle import load_model
from voiceclone.inference.synthesize import convert, embed_references

from voiceclone.evaluation import judges as J
from voiceclone.evaluation.metrics import cosine_similarity

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures import cpu_name  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
COLUMNS = ["variant", "SECS to target", "SECS to source", "nearer-target share", "WER out", "WER source",
           "DNSMOS OVRL", "CPU minutes"]
REF_MIN_S, REF_MAX_S = 4.0, 10.0


def cpu_slug() -> str:
    name = re.sub(r"\(r\)|\(tm\)|processor|cpu|@", " ", cpu_name().lower())
    words = [w for w in re.split(r"[^a-z0-9.]+", name) if w and w not in {"intel", "core"}]
    return "-".join(words[:3] + [f"{os.cpu_count()}core"])


def load_texts(sources: list[Path], extra: Path | None) -> dict[str, str]:
    """Known transcripts by absolute source path: `extra` and any transcripts.tsv above the sources."""
    files = {extra} if extra else set()
    for s in sources:
        for parent in list(s.parents)[:3]:
            if (parent / "transcripts.tsv").is_file():
                files.add(parent / "transcripts.tsv")
    texts = {}
    for f in files:
        with open(f, newline="") as fh:
            for row in csv.DictReader(fh, delimiter="\t"):
                if row.get("text"):
                    texts[str((f.parent / row["path"]).resolve())] = row["text"]
    return texts


def unseen_voices(data: Path) -> dict[str, list[Path]]:
    """The unseen speakers' source files (whole recordings, not prepared pieces), sorted."""
    voices: dict[str, set[Path]] = defaultdict(set)
    for line in (data / "manifest.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["split"] == "unseen":
            voices[row["speaker"]].add(Path(row["source"]))
    return {spk: sorted(paths) for spk, paths in sorted(voices.items())}


def plan(voices: dict[str, list[Path]], pairs: int, seed: int, rate: int) -> tuple[list[dict], dict[str, dict]]:
    """Per target: reference clips (4-10 s), a ceiling clip and profile clips; then (source, target) pairs."""
    rng = np.random.default_rng(seed)
    roles = {}
    for spk, files in voices.items():
        order = [files[i] for i in rng.permutation(len(files))]
        dur = {f: sf.info(f).duration for f in order}
        single = [f for f in order if REF_MIN_S <= dur[f] <= REF_MAX_S]
        if single:
            ref = [single[0]]
        else:  # several shorter clips, together at least REF_MIN_S (the longest is cut at REF_MAX_S)
            ref, total = [], 0.0
            for f in sorted(order, key=lambda f: dur[f]):
                ref.append(f)
                total += dur[f]
                if total >= REF_MIN_S:
                    break
        rest = [f for f in order if f not in ref]
        if len(rest) < 3:
            continue
        roles[spk] = {"reference": ref, "ceiling": rest[0], "others": rest[1:]}
    speakers = sorted(roles)
    if len(speakers) < 2:
        raise SystemExit(f"error: {len(speakers)} unseen speakers with at least 4 recordings; need 2")
    out = []
    k = 0
    while len(out) < pairs and k < pairs * 10:
        tgt = speakers[k % len(speakers)]
        src = speakers[(k + 1 + (k // len(speakers)) % (len(speakers) - 1)) % len(speakers)]
        k += 1
        if src == tgt:
            continue
        used = {p["source"] for p in out}
        cands = [f for f in roles[src]["others"] if f not in used] or roles[src]["others"]
        out.append({"source_speaker": src, "target_speaker": tgt, "source": cands[int(rng.integers(len(cands)))]})
    return out, roles


def train_minutes(run: Path) -> str:
    """What the run's histories say of its training: epochs and wall minutes per stage (a bundle has none)."""
    parts = []
    for stage in ("acoustic", "vocoder"):
        hist = run / stage / "history.jsonl" if run.is_dir() else None
        if hist is None or not hist.is_file():
            continue
        rows = [json.loads(line) for line in hist.read_text().splitlines() if line.strip()]
        if rows:
            parts.append(f"{stage} {rows[-1]['epoch']} epochs, {sum(r.get('seconds', 0.0) for r in rows) / 60:.1f} "
                         "min of training steps (validation not counted)")
    return "; ".join(parts) or "no training history"


def read(path: Path, rate: int, max_s: float | None = None) -> np.ndarray:
    y = A.load_audio(path, rate)
    return y[: int(max_s * rate)] if max_s else y


def pitch_shift(y: np.ndarray, rate: int, ratio: float) -> np.ndarray:
    """`sox pitch` (WSOLA, as the issue's baseline) when sox is on PATH, else librosa's phase vocoder."""
    cents = float(1200 * np.log2(ratio))
    if shutil.which("sox"):
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = Path(tmp) / "in.wav", Path(tmp) / "out.wav"
            sf.write(src, y, rate, subtype="FLOAT")
            subprocess.run(["sox", str(src), str(dst), "pitch", f"{cents:.1f}"], check=True, capture_output=True)
            out, _ = sf.read(dst, dtype="float32")
            return out
    import librosa

    return librosa.effects.pitch_shift(y, sr=rate, n_steps=cents / 100).astype(np.float32)


def pitch_shift_name() -> str:
    return "sox pitch" if shutil.which("sox") else "librosa pitch_shift"


def fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def bootstrap(values: np.ndarray, statistic, seed: int = 0, draws: int = 2000) -> tuple[float, float]:
    """The 95% bootstrap interval of statistic(values[idx]) over resampled pairs (rows of `values`)."""
    rng = np.random.default_rng(seed)
    stats = [statistic(values[rng.integers(0, len(values), len(values))]) for _ in range(draws)]
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return float(lo), float(hi)


def interval(values: np.ndarray, statistic, seed: int = 0, draws: int = 2000) -> float:
    """Half-width of the 95% bootstrap interval of statistic(values[idx]) over resampled pairs: what another
    draw of pairs from the same voices could move the figure by."""
    if len(values) < 2:
        return float("nan")
    lo, hi = bootstrap(values, statistic, seed, draws)
    return (hi - lo) / 2


def pooled_rate(counts: np.ndarray) -> float:
    """counts [N, 2] (edits, reference words) per pair -> the pooled error rate."""
    return float(counts[:, 0].sum() / max(1, counts[:, 1].sum()))


def merge_results(path: Path, rows: list[list[str]], notes: list[str], header: str) -> None:
    """Replace rows (and notes) of the same variant names; keep the others in their order."""
    old_rows, old_notes = [], []
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.startswith("| ") and not line.startswith("| variant") and not line.startswith("|---"):
                old_rows.append([c.strip() for c in line.strip().strip("|").split("|")])
            elif line.startswith("- **"):
                old_notes.append(line)
    names = {r[0] for r in rows}
    keep = [r for r in old_rows if r[0] not in names]
    keep_notes = [n for n in old_notes if not any(n.startswith(f"- **{name}**") for name in names)]
    table = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    table += ["| " + " | ".join(r) + " |" for r in keep + rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n\n" + "\n".join(table) + "\n\n## Rows\n\n" + "\n".join(keep_notes + notes) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="a run folder or a model bundle")
    ap.add_argument("--data", type=Path, required=True, help="the prepared dataset (its unseen speakers are used)")
    ap.add_argument("--variant", default="main job", help="the row's name")
    ap.add_argument("--pairs", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--asr-model", default=None, help="Whisper name or CTranslate2 folder (default: bundled tiny.en)")
    ap.add_argument("--transcripts", type=Path, default=None, help="a tsv with path and text columns")
    ap.add_argument("--no-references", action="store_true", help="skip the reference rows")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="results file (default benchmarks/results/...)")
    ap.add_argument("--timbre", type=float, default=timbre.DEFAULT_STRENGTH, help="timbre matching strength (synthesize --timbre)")
    ap.add_argument("--save-audio", type=Path, default=None, help="write each output here")
    ap.add_argument("--per-pair", type=Path, default=None,
                    help="write the variant's per-pair figures here (JSON), for --against")
    ap.add_argument("--against", type=Path, default=None,
                    help="a --per-pair file of another variant on the same pairs: print the paired differences")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out_file = args.out or RESULTS / f"zero_shot_quality-{cpu_slug()}.md"

    model = load_model(args.run)
    cfg, prep = model.recipe.audio, model.recipe.prepare
    rate = cfg.sample_rate
    voices = unseen_voices(args.data)
    pairs, roles = plan(voices, args.pairs, args.seed, rate)
    all_sources = sorted({p["source"] for p in pairs})
    texts = load_texts(all_sources, args.transcripts)

    t0 = time.time()
    spk_judge, asr, mos = J.SpeakerJudge(), J.AsrJudge(args.asr_model, threads=args.threads), J.MosJudge(args.threads)
    print(f"judges: {spk_judge.name}; {asr.name}; {mos.name}", file=sys.stderr)

    # profiles and the per-voice clips, judged once
    profile = {s: spk_judge.profile([(read(f, rate), rate) for f in r["others"]]) for s, r in roles.items()}
    src_profile = {}  # a source speaker's profile without the converted utterance
    def profile_without(spk: str, f: Path) -> np.ndarray:
        key = (spk, str(f))
        if key not in src_profile:
            clips = [c for c in roles[spk]["others"] + [roles[spk]["ceiling"]] if c != f]
            src_profile[key] = spk_judge.profile([(read(c, rate), rate) for c in clips])
        return src_profile[key]

    refs, ref_f0 = {}, {}
    for s, r in roles.items():
        refs[s] = embed_references(model, r["reference"])
        ref_f0[s] = refs[s].f0_median
    sources = {}
    for f in all_sources:
        y = A.clean(A.load_audio(f, rate), prep, f)
        text = asr.transcribe(y, rate)
        ref_text = texts.get(str(f.resolve()), text)
        sources[f] = {"y": y, "asr": text, "ref_text": ref_text, "f0": A.voiced_median(A.f0(y, cfg)),
                      "mos": mos.score(y, rate)["ovrl"]}
    pseudo = sum(1 for f in all_sources if str(f.resolve()) not in texts)

    rows = defaultdict(lambda: {"tgt": [], "src": [], "wer_src": J.ErrorCount(), "wer_pairs": [], "mos": [],
                                "cpu": 0.0})

    def judge(name: str, y: np.ndarray, pair: dict, cpu: float, text: str | None = None,
              ovrl: float | None = None) -> None:
        """One output of a row: SECS both ways, its transcript against the source's text, DNSMOS."""
        r = rows[name]
        e = spk_judge.embed(y, rate)
        r["tgt"].append(cosine_similarity(e, profile[pair["target_speaker"]]))
        r["src"].append(cosine_similarity(e, profile_without(pair["source_speaker"], pair["source"])))
        s = sources[pair["source"]]
        errors = J.word_errors(s["ref_text"], asr.transcribe(y, rate) if text is None else text)
        r["wer_pairs"].append((errors.edits, errors.length))  # pooled over the pairs, and resampled by pair
        r["wer_src"] = r["wer_src"] + J.word_errors(s["ref_text"], s["asr"])
        r["mos"].append(mos.score(y, rate)["ovrl"] if ovrl is None else ovrl)
        r["cpu"] += cpu

    for i, pair in enumerate(pairs):
        s, tgt = sources[pair["source"]], pair["target_speaker"]
        c = time.process_time()
        blocks, info = convert(model, s["y"], refs[tgt], strength=args.timbre)
        y = np.concatenate(list(blocks))
        judge(args.variant, y, pair, time.process_time() - c)
        if args.save_audio:
            args.save_audio.mkdir(parents=True, exist_ok=True)
            sf.write(args.save_audio / f"{i:03d}_{pair['source_speaker']}_to_{tgt}.wav", y, rate)
        if not args.no_references:
            judge("source unchanged (floor)", s["y"], pair, 0.0, text=s["asr"], ovrl=s["mos"])
            ratio = (ref_f0[tgt] / s["f0"]) if (ref_f0[tgt] and s["f0"]) else 1.0
            c = time.process_time()
            shifted = pitch_shift(s["y"], rate, ratio)
            judge(f"{pitch_shift_name()} to target F0 (baseline)", shifted, pair, time.process_time() - c)
            ceil = A.clean(A.load_audio(roles[tgt]["ceiling"], rate), prep)
            r = rows["target's other utterance (ceiling)"]
            e = spk_judge.embed(ceil, rate)
            r["tgt"].append(cosine_similarity(e, profile[tgt]))
            r["src"].append(cosine_similarity(e, profile_without(pair["source_speaker"], pair["source"])))
            r["mos"].append(mos.score(ceil, rate)["ovrl"])
            if model.vocoder is not None and not any(p["source"] == pair["source"] for p in pairs[:i]):
                c = time.process_time()
                with torch.inference_mode():
                    x = torch.from_numpy(s["y"])
                    mel = A.log_mel(x, cfg)
                    f0 = torch.from_numpy(A.f0(s["y"], cfg))
                    cs = model.render(mel.unsqueeze(0), f0.unsqueeze(0))[0].float().numpy()
                judge(f"copy synthesis ({args.variant} vocoder)", np.clip(cs, -1, 1), pair, time.process_time() - c)
        print(f"pair {i + 1}/{len(pairs)} {pair['source_speaker']} -> {tgt}: "
              f"SECS tgt {rows[args.variant]['tgt'][-1]:.3f} src {rows[args.variant]['src'][-1]:.3f}", file=sys.stderr)

    table = []
    for name, r in rows.items():
        tgt, src = np.array(r["tgt"]), np.array(r["src"])
        counts = np.array(r["wer_pairs"], dtype=float).reshape(-1, 2)
        has_text = counts[:, 1].sum() > 0
        secs = f"{fmt(tgt.mean())} ± {fmt(interval(tgt, np.mean))}" if len(tgt) > 1 else fmt(tgt.mean())
        wer_out = "-"
        if has_text:
            wer_out = f"{fmt(100 * pooled_rate(counts), 1)} ± {fmt(100 * interval(counts, pooled_rate), 1)}"
        table.append([name, secs, fmt(src.mean()), fmt(float((tgt > src).mean()), 2), wer_out,
                      fmt(100 * r["wer_src"].rate, 1) if has_text else "-",
                      fmt(float(np.mean(r["mos"])), 2), fmt(r["cpu"] / 60, 3)])
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cpu = cpu_slug()
    header = (f"# Zero-shot quality on held-out real voices ({cpu})\n\n"
              f"`python benchmarks/zero_shot_quality.py` (see its docstring). Judges: {spk_judge.name}; "
              f"{asr.name}; {mos.name}. SECS = cosine of GE2E embeddings to the target's (source's) profile of "
              f"other utterances; WER in %, pooled over the pairs; ± = half-width of the 95% bootstrap interval "
              f"over pairs (variants judged on the same pairs differ more reliably than the intervals "
              f"suggest); DNSMOS OVRL 1-5; CPU minutes of the conversions alone (torch/judge threads: "
              f"{args.threads}).")
    trained = train_minutes(args.run)
    notes = [f"- **{args.variant}**: run `{args.run}` ({trained}), data `{args.data}`, {len(pairs)} pairs over "
             f"{len(roles)} unseen speakers (seed {args.seed}), references {REF_MIN_S:.0f}-{REF_MAX_S:.0f} s; "
             f"{pseudo} of {len(all_sources)} sources without a transcript, judged against their own "
             f"transcript (their WER source is 0 by construction); {when}."]
    merge_results(out_file, table, notes, header)
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for r in table:
        print("| " + " | ".join(r) + " |")
    print(f"written to {out_file} ({time.time() - t0:.0f} s)", file=sys.stderr)
    mine = {"variant": args.variant, "pairs": [[str(p["source"]), p["target_speaker"]] for p in pairs],
            **{k: rows[args.variant][k] for k in ("tgt", "src", "wer_pairs", "mos")}}
    if args.per_pair:
        args.per_pair.write_text(json.dumps(mine, default=float))
    if args.against:
        print("\n".join(paired_differences(mine, json.loads(args.against.read_text()))))
    return 0


def paired_differences(a: dict, b: dict) -> list[str]:
    """Variant a minus variant b on the same pairs, with 95% bootstrap intervals over pairs: two variants'
    SECS move together from pair to pair, so their difference is measured far more tightly than either
    figure's own interval says."""
    if a["pairs"] != b["pairs"]:
        raise SystemExit("error: --against was judged on other pairs (another --seed, --pairs or dataset)")
    out = [f"{a['variant']} minus {b['variant']}, {len(a['pairs'])} pairs (95% bootstrap interval over pairs):"]
    for key, label in (("tgt", "SECS to target"), ("src", "SECS to source"), ("mos", "DNSMOS OVRL")):
        d = np.asarray(a[key], dtype=float) - np.asarray(b[key], dtype=float)
        lo, hi = bootstrap(d, np.mean)
        out.append(f"  {label}: {d.mean():+.4f} ({lo:+.4f} to {hi:+.4f})")
    counts = np.hstack([np.asarray(a["wer_pairs"], dtype=float), np.asarray(b["wer_pairs"], dtype=float)])
    if counts[:, 1].sum() > 0:
        def points(c: np.ndarray) -> float:  # pooled WER of a minus that of b, in points
            return 100 * (pooled_rate(c[:, :2]) - pooled_rate(c[:, 2:]))

        lo, hi = bootstrap(counts, points)
        out.append(f"  WER out (points): {points(counts):+.1f} ({lo:+.1f} to {hi:+.1f})")
    return out

if __name__ == "__main__":
    sys.exit(main())
